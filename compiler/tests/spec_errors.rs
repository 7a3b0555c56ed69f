//! Errors of the spec front-end, rendered as the user sees them: file, line, column, the
//! offending line and a label. Each test breaks one thing in a small in-memory model.

use llmq_compiler::kernels::DType;
use llmq_compiler::spec::{self, ErrorKind, SpecError, SpecOptions};
use miette::{GraphicalReportHandler, GraphicalTheme};
use proptest::prelude::*;
use std::path::PathBuf;

const MODEL: &str = r#"// A small model.
Model(
  name: "mini",
  arch: "arch/mini.ron",
  dims: {"vocab": 32, "hidden": 16, "layers": 2, "ffn": 24},
  scalars: {"rms_eps": 1e-5},
  flags: {"tied": true},
)
"#;

const ARCH: &str = r#"// A small graph: embedding, a repeated MLP block, a head.
Arch(
  name: "mini",
  dims: ["vocab", "hidden", "layers", "ffn"],
  scalars: ["rms_eps"],
  flags: ["tied"],
  inputs: [
    Input(name: "tokens", shape: ["batch", "seq"]),
    Input(name: "targets", shape: ["batch", "seq"]),
  ],
  body: [
    Weight(name: "embed", shape: ["vocab", "hidden"], init: Normal(std: 0.02), hf: "embed"),
    Op(out: "x", op: Embedding, args: ["tokens", "embed"]),
    Repeat(name: "layers", count: "layers", index: "i", body: [
      Weight(name: "ln", shape: ["hidden"], init: Ones, hf: "layers.{i}.ln"),
      Op(out: ["h", "h_rstd"], op: RmsNorm(eps: "rms_eps"), args: ["x", "ln"]),
      Weight(name: "up", shape: ["ffn", "hidden"], init: Normal(std: 0.02), hf: "layers.{i}.up"),
      Weight(name: "down", shape: ["hidden", "ffn"], init: Normal(std: 0.02), hf: "layers.{i}.down"),
      Op(out: "u", op: Linear, args: ["h", "up"]),
      Op(out: "d", op: Linear, args: ["u", "down"]),
      Op(out: "x", op: Add, args: ["x", "d"]),
    ]),
    Op(out: "logits", op: Linear, args: ["x", "embed"], when: "tied"),
    Loss(op: CrossEntropy, args: ["logits", "targets"]),
  ],
)
"#;

fn opts() -> SpecOptions {
    SpecOptions {
        batch: 2,
        seq: 4,
        weight_dtype: DType::BF16,
    }
}

fn load(model: &str, arch: &str) -> Result<spec::ForwardModel, SpecError> {
    spec::load_str("models/mini.ron", model, &opts(), |path| {
        if path == "arch/mini.ron" {
            Ok((PathBuf::from("models/arch/mini.ron"), arch.to_owned()))
        } else {
            Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "No such file or directory",
            ))
        }
    })
}

fn render(e: &SpecError) -> String {
    let mut out = String::new();
    GraphicalReportHandler::new_themed(GraphicalTheme::unicode_nocolor())
        .with_width(100)
        .render_report(&mut out, e)
        .unwrap();
    out
}

/// Loads with one replacement in the arch file (or the model file), expects `kind`, and
/// returns the rendered error.
fn arch_error(from: &str, to: &str, kind: ErrorKind) -> String {
    assert!(ARCH.contains(from), "{from}");
    let e = load(MODEL, &ARCH.replacen(from, to, 1)).unwrap_err();
    assert_eq!(e.kind, kind, "{}", render(&e));
    assert!(e.line_col().is_some());
    render(&e)
}

fn model_error(from: &str, to: &str, kind: ErrorKind) -> String {
    assert!(MODEL.contains(from), "{from}");
    let e = load(&MODEL.replacen(from, to, 1), ARCH).unwrap_err();
    assert_eq!(e.kind, kind, "{}", render(&e));
    render(&e)
}

#[test]
fn the_base_model_loads() {
    let m = load(MODEL, ARCH).unwrap();
    m.graph.verify().unwrap();
    assert_eq!(m.param_count(), 32 * 16 + 2 * (16 + 2 * 24 * 16));
}

#[test]
fn ron_syntax_error() {
    insta::assert_snapshot!(arch_error(
        r#"init: Ones, hf"#,
        r#"init: Ones hf"#,
        ErrorKind::Syntax
    ));
}

#[test]
fn unknown_op() {
    insta::assert_snapshot!(arch_error(
        "op: Add,",
        "op: Mul,",
        ErrorKind::UnknownVariant
    ));
}

#[test]
fn unknown_field() {
    insta::assert_snapshot!(arch_error(
        r#"Weight(name: "up", shape"#,
        r#"Weight(name: "up", shap"#,
        ErrorKind::UnknownField
    ));
}

#[test]
fn unbound_symbol_in_expression() {
    insta::assert_snapshot!(arch_error(
        r#"shape: ["ffn", "hidden"]"#,
        r#"shape: ["ffn", "2*hiden"]"#,
        ErrorKind::UnboundSymbol
    ));
}

#[test]
fn inexact_division() {
    insta::assert_snapshot!(arch_error(
        r#"shape: ["ffn", "hidden"]"#,
        r#"shape: ["ffn / 5", "hidden"]"#,
        ErrorKind::BadExpression
    ));
}

#[test]
fn name_used_before_definition() {
    insta::assert_snapshot!(arch_error(
        r#"args: ["u", "down"]"#,
        r#"args: ["g", "down"]"#,
        ErrorKind::UndefinedName
    ));
}

#[test]
fn loop_local_name_is_not_visible_after_the_loop() {
    insta::assert_snapshot!(arch_error(
        r#"args: ["x", "embed"], when"#,
        r#"args: ["u", "embed"], when"#,
        ErrorKind::UndefinedName
    ));
}

#[test]
fn shape_mismatch() {
    insta::assert_snapshot!(arch_error(
        r#"args: ["u", "down"]"#,
        r#"args: ["u", "up"]"#,
        ErrorKind::ShapeMismatch
    ));
}

#[test]
fn dtype_mismatch() {
    insta::assert_snapshot!(arch_error(
        r#"args: ["tokens", "embed"]"#,
        r#"args: ["embed", "embed"]"#,
        ErrorKind::DTypeMismatch
    ));
}

#[test]
fn missing_arch_file() {
    insta::assert_snapshot!(model_error(
        "arch/mini.ron",
        "arch/mni.ron",
        ErrorKind::MissingArch
    ));
}

#[test]
fn dim_not_bound_by_the_model() {
    insta::assert_snapshot!(model_error(r#", "ffn": 24"#, "", ErrorKind::MissingBinding));
}

#[test]
fn dim_bound_but_not_declared() {
    insta::assert_snapshot!(model_error(
        r#""ffn": 24"#,
        r#""ffn": 24, "fnn": 24"#,
        ErrorKind::UnexpectedBinding
    ));
}

#[test]
fn when_on_an_unknown_flag() {
    insta::assert_snapshot!(arch_error(
        r#"when: "tied""#,
        r#"when: "!tie""#,
        ErrorKind::UnknownFlag
    ));
}

#[test]
fn unknown_scalar() {
    insta::assert_snapshot!(arch_error(
        r#"eps: "rms_eps""#,
        r#"eps: "eps""#,
        ErrorKind::UnknownScalar
    ));
}

#[test]
fn no_loss() {
    insta::assert_snapshot!(arch_error(
        r#"Loss(op: CrossEntropy, args: ["logits", "targets"]),"#,
        "",
        ErrorKind::Invalid
    ));
}

#[test]
fn missing_model_file() {
    let e = spec::load(std::path::Path::new("no/such/model.ron"), &opts()).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Io);
    insta::assert_snapshot!(render(&e));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// No input makes the front-end panic: cut a piece out of either file, or put a
    /// character in.
    #[test]
    fn never_panics(at in 0usize..ARCH.len(), len in 0usize..12, c in proptest::char::any(),
                    in_model in proptest::bool::ANY) {
        let text = if in_model { MODEL } else { ARCH };
        let at = at % text.len();
        let (mut a, mut b) = (at, (at + len).min(text.len()));
        while !text.is_char_boundary(a) { a -= 1; }
        while !text.is_char_boundary(b) { b += 1; }
        let mut broken = format!("{}{}", &text[..a], &text[b..]);
        if len % 2 == 0 {
            broken.insert(a, c);
        }
        let r = if in_model { load(&broken, ARCH) } else { load(MODEL, &broken) };
        if let Err(e) = r {
            let _ = render(&e);
        }
    }
}
