//! The terms egg rewrites, the dtypes it knows of them, and the rules, grouped by topic.
//!
//! A term stands for an op's output when the op has one, and for the op itself when it has
//! several, each output then named `(output k op)`. Tensors that no modelled op produces are
//! leaves named after their ID (`t12`); a cast's target dtype is a leaf named after the dtype
//! (`bf16`), an output index a leaf named after the number. Every rule is an equality of the
//! CPU references that holds on every input, bit for bit once results are stored, and a fused
//! op gets one rule per output, so the pass can ask egg for every output of a fusion.

use egg::{
    Analysis, DidMerge, EGraph, Id, Pattern, Rewrite, Subst, Symbol, Var, define_language, rewrite,
};
use indexmap::IndexMap;
use llmq_compiler::kernels::DType;

define_language! {
    /// The fusible and cast-related ops, the fused ops, their outputs, and leaves.
    pub enum Term {
        "add" = Add([Id; 2]),
        "rms_norm" = RmsNorm([Id; 2]),
        "swiglu" = SwiGlu([Id; 2]),
        "swiglu_backward" = SwiGluBackward([Id; 3]),
        "rms_norm_backward" = RmsNormBackward([Id; 4]),
        "abs_max" = AbsMax(Id),
        // (cast to x)
        "cast" = Cast([Id; 2]),
        // (quantize to x amax)
        "quantize" = Quantize([Id; 3]),
        "add_rms_norm" = AddRmsNorm([Id; 3]),
        "rms_norm_abs_max" = RmsNormAbsMax([Id; 2]),
        "add_rms_norm_abs_max" = AddRmsNormAbsMax([Id; 3]),
        "swiglu_abs_max" = SwiGluAbsMax([Id; 2]),
        "swiglu_backward_abs_max" = SwiGluBackwardAbsMax([Id; 3]),
        "rms_norm_backward_add" = RmsNormBackwardAdd([Id; 5]),
        "rms_norm_backward_add_abs_max" = RmsNormBackwardAddAbsMax([Id; 5]),
        // Gate and up packed in one operand (`swiglu{packed=true}` and its variants).
        "swiglu_packed" = SwiGluPacked(Id),
        "swiglu_backward_packed" = SwiGluBackwardPacked([Id; 2]),
        "swiglu_packed_abs_max" = SwiGluPackedAbsMax(Id),
        "swiglu_backward_packed_abs_max" = SwiGluBackwardPackedAbsMax([Id; 2]),
        "split_rope_backward" = SplitRopeBackward([Id; 3]),
        "split_rope_backward_abs_max" = SplitRopeBackwardAbsMax([Id; 3]),
        // (output k op): output k of an op with several outputs.
        "output" = Output([Id; 2]),
        Leaf(Symbol),
    }
}

/// The leaf naming output index `k`.
pub fn index_leaf(k: usize) -> Symbol {
    k.to_string().into()
}

/// The storage dtype of the e-classes where the cast rules need it: a tensor leaf's, the
/// dtype a dtype leaf names, a cast's target.
#[derive(Debug)]
pub struct Dtypes {
    of_leaf: IndexMap<Symbol, DType>,
}

impl Default for Dtypes {
    fn default() -> Self {
        let all = [
            DType::F32,
            DType::BF16,
            DType::F8E4M3,
            DType::F8E5M2,
            DType::I32,
        ];
        Dtypes {
            of_leaf: all.into_iter().map(|d| (dtype_leaf(d), d)).collect(),
        }
    }
}

impl Dtypes {
    /// Records the dtype of the tensor leaf `leaf`.
    pub fn set(&mut self, leaf: Symbol, dtype: DType) {
        self.of_leaf.insert(leaf, dtype);
    }
}

/// The leaf naming a dtype (`bf16`).
pub fn dtype_leaf(dtype: DType) -> Symbol {
    dtype.name().into()
}

impl Analysis<Term> for Dtypes {
    type Data = Option<DType>;

    fn make(egraph: &mut EGraph<Term, Self>, enode: &Term) -> Option<DType> {
        match enode {
            Term::Leaf(name) => egraph.analysis.of_leaf.get(name).copied(),
            Term::Cast([to, _]) => egraph[*to].data,
            _ => None,
        }
    }

    fn merge(&mut self, a: &mut Option<DType>, b: Option<DType>) -> DidMerge {
        // Rules only merge classes of one dtype (a cast to its operand's own dtype with the
        // operand), so a known dtype never changes.
        egg::merge_option(a, b, |a, b| {
            debug_assert_eq!(*a, b, "a rule merged tensors of two dtypes");
            DidMerge(false, false)
        })
    }
}

/// Every rule.
pub fn rules() -> Vec<Rewrite<Term, Dtypes>> {
    let mut rules = fusion_rules();
    rules.extend(cast_rules());
    rules
}

/// Fewer passes over memory: a residual add into the norm after it, the norm backward's input
/// gradient into the residual gradient's add after it, and an abs-max into the op whose output
/// it reads (the norms feeding FP8 matmuls, swiglu feeding the down matmul, its backward
/// feeding the gate and up matmuls' backward, the residual gradient feeding the projections'
/// backward, the packed q/k/v gradient feeding the q/k/v matmuls' backward). Each rule defines
/// an output of a fused
/// op by the unfused ops, in that direction: the pass proposes a fused node, and egg proves
/// each of its outputs equal to the tensor it takes over, or not.
fn fusion_rules() -> Vec<Rewrite<Term, Dtypes>> {
    let mut rules = vec![
        rewrite!(
            "residual-add-rms-norm-sum";
            "(output 0 (add_rms_norm ?a ?b ?w))" => "(add ?a ?b)"
        ),
        rewrite!(
            "residual-add-rms-norm";
            "(output 1 (add_rms_norm ?a ?b ?w))" => "(output 0 (rms_norm (add ?a ?b) ?w))"
        ),
        rewrite!(
            "residual-add-rms-norm-rstd";
            "(output 2 (add_rms_norm ?a ?b ?w))" => "(output 1 (rms_norm (add ?a ?b) ?w))"
        ),
        // IEEE addition commutes bit for bit: `dx` may be either operand of the add.
        rewrite!(
            "norm-backward-add";
            "(output 0 (rms_norm_backward_add ?dy ?x ?w ?rstd ?r))"
                => "(add ?r (output 0 (rms_norm_backward ?dy ?x ?w ?rstd)))"
        ),
        rewrite!(
            "norm-backward-add-swapped";
            "(output 0 (rms_norm_backward_add ?dy ?x ?w ?rstd ?r))"
                => "(add (output 0 (rms_norm_backward ?dy ?x ?w ?rstd)) ?r)"
        ),
        rewrite!(
            "norm-backward-add-dw";
            "(output 1 (rms_norm_backward_add ?dy ?x ?w ?rstd ?r))"
                => "(output 1 (rms_norm_backward ?dy ?x ?w ?rstd))"
        ),
    ];
    rules.extend(abs_max_rules("swiglu", "?g ?u", 1, &[0]));
    rules.extend(abs_max_rules("rms_norm", "?x ?w", 2, &[0]));
    rules.extend(abs_max_rules("add_rms_norm", "?a ?b ?w", 3, &[1]));
    rules.extend(abs_max_rules("swiglu_backward", "?g ?u ?d", 2, &[0, 1]));
    rules.extend(abs_max_rules(
        "rms_norm_backward_add",
        "?dy ?x ?w ?rstd ?r",
        2,
        &[0],
    ));
    // Packed, the backward's one gradient `dgu` has one abs-max.
    rules.extend(abs_max_rules("swiglu_packed", "?gu", 1, &[0]));
    rules.extend(abs_max_rules("swiglu_backward_packed", "?gu ?d", 1, &[0]));
    rules.extend(abs_max_rules("split_rope_backward", "?dq ?dk ?dv", 1, &[0]));
    rules
}

/// The rules of `{op}_abs_max`, the variant of `op` (`outputs` outputs, operands `args`) that
/// also emits the abs-max of its outputs `sources`, after its own: its first outputs are
/// `op`'s, and its output `outputs + j` is `abs_max` of `op`'s output `sources[j]`.
fn abs_max_rules(
    op: &str,
    args: &str,
    outputs: usize,
    sources: &[usize],
) -> Vec<Rewrite<Term, Dtypes>> {
    let base = |k: usize| match outputs {
        1 => format!("({op} {args})"),
        _ => format!("(output {k} ({op} {args}))"),
    };
    let variant = |k: usize| format!("(output {k} ({op}_abs_max {args}))");
    let rule = |name: String, from: String, to: String| {
        let from: Pattern<Term> = from.parse().unwrap();
        let to: Pattern<Term> = to.parse().unwrap();
        Rewrite::new(name, from, to).unwrap()
    };
    let own = (0..outputs).map(|k| rule(format!("{op}-abs-max-output-{k}"), variant(k), base(k)));
    let amax = sources.iter().enumerate().map(|(j, &k)| {
        let name = format!("{op}-abs-max-of-output-{k}");
        rule(name, variant(outputs + j), format!("(abs_max {})", base(k)))
    });
    own.chain(amax).collect()
}

/// Casts that change no value. A cast `(cast ?a ?x)` is exact when every value of `?x`'s dtype
/// is one of `?a`'s (bf16 → f32, an FP8 format → bf16 or f32): whatever reads its result reads
/// `?x`'s values. The catalogue has no scaled dequantisation (a cast from FP8 has scale 1 and
/// `quantize` always rescales by `fmax / amax`), so "quantise of a dequantise" is the
/// exact-cast case of `quantize` here, and an FP8 → wider → same FP8 round trip is a double
/// cast to the operand's own dtype.
fn cast_rules() -> Vec<Rewrite<Term, Dtypes>> {
    vec![
        rewrite!("cast-to-own-dtype"; "(cast ?to ?x)" => "?x" if has_dtype("?x", "?to")),
        rewrite!(
            "double-cast";
            "(cast ?b (cast ?a ?x))" => "(cast ?b ?x)"
                if exact_cast("?x", "?a") if cast_kernel_exists("?x", "?b")
        ),
        rewrite!(
            "abs-max-of-exact-cast";
            "(abs_max (cast ?a ?x))" => "(abs_max ?x)" if exact_cast("?x", "?a")
        ),
        rewrite!(
            "quantize-of-exact-cast";
            "(quantize ?to (cast ?a ?x) ?amax)" => "(quantize ?to ?x ?amax)"
                if exact_cast("?x", "?a")
        ),
    ]
}

/// True when every value of `from` is a value of `to`, so a cast from `from` to `to` is exact.
pub fn holds_every_value(from: DType, to: DType) -> bool {
    use DType::*;
    from == to
        || matches!(
            (from, to),
            (BF16, F32) | (F8E4M3, BF16 | F32) | (F8E5M2, BF16 | F32)
        )
}

/// The dtypes of two pattern variables' e-classes, when both are known.
fn dtypes(egraph: &EGraph<Term, Dtypes>, subst: &Subst, vars: [Var; 2]) -> Option<(DType, DType)> {
    Some((egraph[subst[vars[0]]].data?, egraph[subst[vars[1]]].data?))
}

/// A rule condition on the dtypes of two pattern variables.
fn on_dtypes(
    a: &str,
    b: &str,
    holds: fn(DType, DType) -> bool,
) -> impl Fn(&mut EGraph<Term, Dtypes>, Id, &Subst) -> bool {
    let vars: [Var; 2] = [a.parse().unwrap(), b.parse().unwrap()];
    move |egraph, _, subst| dtypes(egraph, subst, vars).is_some_and(|(a, b)| holds(a, b))
}

/// `?x` is stored in the dtype `?to` names.
fn has_dtype(x: &str, to: &str) -> impl Fn(&mut EGraph<Term, Dtypes>, Id, &Subst) -> bool {
    on_dtypes(x, to, |x, to| x == to)
}

/// A cast of `?x` to `?a` changes no value.
fn exact_cast(x: &str, a: &str) -> impl Fn(&mut EGraph<Term, Dtypes>, Id, &Subst) -> bool {
    on_dtypes(x, a, holds_every_value)
}

/// A cast from `?x`'s dtype to `?b` has a CUDA kernel (cast.cu has none between the two FP8
/// formats), so the rewritten cast can run on the GPU.
fn cast_kernel_exists(x: &str, b: &str) -> impl Fn(&mut EGraph<Term, Dtypes>, Id, &Subst) -> bool {
    on_dtypes(x, b, |x, b| !(x.is_fp8() && b.is_fp8() && x != b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use egg::{RecExpr, Runner};

    /// True when egg, from `from` with the given leaf dtypes, proves it equal to `to`.
    fn proves(leaves: &[(&str, DType)], from: &str, to: &str) -> bool {
        let mut analysis = Dtypes::default();
        for &(leaf, dtype) in leaves {
            analysis.set(leaf.into(), dtype);
        }
        let mut egraph = EGraph::new(analysis);
        let from = egraph.add_expr(&from.parse::<RecExpr<Term>>().unwrap());
        let to = egraph.add_expr(&to.parse::<RecExpr<Term>>().unwrap());
        let runner = Runner::default().with_egraph(egraph).run(&rules());
        runner.egraph.find(from) == runner.egraph.find(to)
    }

    #[test]
    fn fusion_rules_fold_the_residual_add_and_the_abs_maxes() {
        let none = &[];
        let fused = [
            ("(add a b)", "(output 0 (add_rms_norm a b w))"),
            (
                "(output 0 (rms_norm (add a b) w))",
                "(output 1 (add_rms_norm a b w))",
            ),
            (
                "(output 1 (rms_norm (add a b) w))",
                "(output 2 (add_rms_norm a b w))",
            ),
            ("(swiglu g u)", "(output 0 (swiglu_abs_max g u))"),
            ("(abs_max (swiglu g u))", "(output 1 (swiglu_abs_max g u))"),
            (
                "(output 1 (rms_norm x w))",
                "(output 1 (rms_norm_abs_max x w))",
            ),
            (
                "(abs_max (output 0 (rms_norm x w)))",
                "(output 2 (rms_norm_abs_max x w))",
            ),
            (
                "(abs_max (output 0 (rms_norm (add a b) w)))",
                "(output 3 (add_rms_norm_abs_max a b w))",
            ),
            ("(add a b)", "(output 0 (add_rms_norm_abs_max a b w))"),
            (
                "(output 1 (swiglu_backward g u d))",
                "(output 1 (swiglu_backward_abs_max g u d))",
            ),
            (
                "(abs_max (output 0 (swiglu_backward g u d)))",
                "(output 2 (swiglu_backward_abs_max g u d))",
            ),
            (
                "(abs_max (output 1 (swiglu_backward g u d)))",
                "(output 3 (swiglu_backward_abs_max g u d))",
            ),
            (
                "(swiglu_packed gu)",
                "(output 0 (swiglu_packed_abs_max gu))",
            ),
            (
                "(abs_max (swiglu_packed gu))",
                "(output 1 (swiglu_packed_abs_max gu))",
            ),
            (
                "(swiglu_backward_packed gu d)",
                "(output 0 (swiglu_backward_packed_abs_max gu d))",
            ),
            (
                "(abs_max (swiglu_backward_packed gu d))",
                "(output 1 (swiglu_backward_packed_abs_max gu d))",
            ),
            (
                "(split_rope_backward dq dk dv)",
                "(output 0 (split_rope_backward_abs_max dq dk dv))",
            ),
            (
                "(abs_max (split_rope_backward dq dk dv))",
                "(output 1 (split_rope_backward_abs_max dq dk dv))",
            ),
            (
                "(add r (output 0 (rms_norm_backward dy x w s)))",
                "(output 0 (rms_norm_backward_add dy x w s r))",
            ),
            (
                "(add (output 0 (rms_norm_backward dy x w s)) r)",
                "(output 0 (rms_norm_backward_add dy x w s r))",
            ),
            (
                "(output 1 (rms_norm_backward dy x w s))",
                "(output 1 (rms_norm_backward_add dy x w s r))",
            ),
            (
                "(abs_max (add r (output 0 (rms_norm_backward dy x w s))))",
                "(output 2 (rms_norm_backward_add_abs_max dy x w s r))",
            ),
            (
                "(output 1 (rms_norm_backward dy x w s))",
                "(output 1 (rms_norm_backward_add_abs_max dy x w s r))",
            ),
        ];
        for (from, to) in fused {
            assert!(proves(none, from, to), "{from} = {to}");
        }
        let not = [
            // The abs-max of the norm's input is not the abs-max of its output.
            (
                "(abs_max (add a b))",
                "(output 3 (add_rms_norm_abs_max a b w))",
            ),
            ("(abs_max g)", "(output 1 (swiglu_abs_max g u))"),
            ("(abs_max gu)", "(output 1 (swiglu_packed_abs_max gu))"),
            // Nor is one output another, or one gradient's abs-max the other's.
            (
                "(output 1 (rms_norm x w))",
                "(output 0 (rms_norm_abs_max x w))",
            ),
            (
                "(abs_max (output 0 (swiglu_backward g u d)))",
                "(output 3 (swiglu_backward_abs_max g u d))",
            ),
            // The sum is not the norm's own input gradient, nor a sum with another gradient.
            (
                "(output 0 (rms_norm_backward dy x w s))",
                "(output 0 (rms_norm_backward_add dy x w s r))",
            ),
            (
                "(add q (output 0 (rms_norm_backward dy x w s)))",
                "(output 0 (rms_norm_backward_add dy x w s r))",
            ),
            (
                "(abs_max (output 0 (rms_norm_backward dy x w s)))",
                "(output 2 (rms_norm_backward_add_abs_max dy x w s r))",
            ),
        ];
        for (from, to) in not {
            assert!(!proves(none, from, to), "{from} = {to}");
        }
    }

    #[test]
    fn cast_rules_drop_only_casts_that_change_no_value() {
        use DType::*;
        let x16 = &[("x", BF16)];
        assert!(proves(x16, "(cast bf16 (cast f32 x))", "x"));
        assert!(proves(x16, "(abs_max (cast f32 x))", "(abs_max x)"));
        assert!(proves(
            x16,
            "(quantize e4m3 (cast f32 x) m)",
            "(quantize e4m3 x m)"
        ));
        assert!(proves(
            x16,
            "(quantize e5m2 (cast f32 x) m)",
            "(quantize e5m2 x m)"
        ));
        let q = &[("q", F8E4M3)];
        assert!(proves(q, "(cast e4m3 (cast bf16 q))", "q"));
        assert!(proves(q, "(cast f32 (cast bf16 q))", "(cast f32 q)"));
        // A narrowing middle cast rounds: it stays.
        assert!(!proves(x16, "(cast bf16 (cast e4m3 x))", "x"));
        assert!(!proves(
            &[("x", F32)],
            "(quantize e4m3 (cast bf16 x) m)",
            "(quantize e4m3 x m)"
        ));
        assert!(!proves(
            &[("x", F32)],
            "(abs_max (cast bf16 x))",
            "(abs_max x)"
        ));
        // Exact, but the GPU has no cast between the two FP8 formats.
        assert!(!proves(q, "(cast e5m2 (cast bf16 q))", "(cast e5m2 q)"));
        // An unknown dtype proves nothing.
        assert!(!proves(&[], "(cast bf16 (cast f32 x))", "x"));
    }

    /// `holds_every_value` against the formats themselves: every FP8 code read back through
    /// a wider dtype is unchanged; a value each narrowing changes exists.
    #[test]
    fn exactness_follows_the_formats() {
        use DType::*;
        use llmq_compiler::kernels::numerics::{decode_fp8, round_to};
        let same = |a: f32, b: f32| a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan());
        for fp8 in [F8E4M3, F8E5M2] {
            for wide in [BF16, F32] {
                assert!(holds_every_value(fp8, wide));
                assert!((0..=255u8).all(|code| {
                    let v = decode_fp8(fp8, code);
                    same(round_to(wide, v), v)
                }));
            }
        }
        assert!(holds_every_value(BF16, F32));
        let fine = 1.0 + f32::EPSILON;
        for (from, to) in [
            (F32, BF16),
            (BF16, F8E4M3),
            (F8E4M3, F8E5M2),
            (F8E5M2, F8E4M3),
        ] {
            assert!(!holds_every_value(from, to), "{from} -> {to}");
            // A value of `from` that `to` rounds: the largest or a fine one.
            let probes = [
                round_to(from, fine),
                round_to(from, 1.125),
                round_to(from, 40000.0),
            ];
            assert!(
                probes.iter().any(|&v| !same(round_to(to, v), v)),
                "{from} -> {to}"
            );
        }
        assert!(!holds_every_value(I32, F32));
    }
}
