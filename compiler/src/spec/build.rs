//! Evaluation of a model file and its architecture into the forward graph.
//!
//! Checks the bindings (every declared symbol bound, nothing bound that is not declared), then
//! walks the body in program order: weights become `Role::Weight` tensors, ops are applied
//! through [`Graph::apply`] (so the catalogue's shape and dtype rules check every operand), and
//! repeats are unrolled, one scope per iteration. Every error points into the file it is about.

use super::error::{ErrorKind, SourceFile, SpecError};
use super::expr::{self, ExprErrorKind};
use super::locate::{ItemSpan, Source, locate_arch};
use super::syntax::{ArchFile, InitSpec, Item, ModelFile, Names, OpSpecSyntax, Value};
use super::{ForwardModel, SpecOptions};
use crate::ir::{Graph, Init, Phase, Role, Tensor, TensorId};
use indexmap::{IndexMap, IndexSet};
use llmq_kernels::{DType, Op, OpError, TensorType, ops};
use std::ops::Range;
use std::path::PathBuf;

/// Parses a RON file, mapping RON's error (which has a position) to a [`SpecError`].
fn parse_ron<T: serde::de::DeserializeOwned>(
    file: &SourceFile,
    src: &Source,
) -> Result<T, SpecError> {
    // `implicit_some`: optional fields (`hf`, `when`, `dtype`) are written without `Some(..)`.
    let options =
        ron::Options::default().with_default_extension(ron::extensions::Extensions::IMPLICIT_SOME);
    options.from_str(&file.text).map_err(|e| {
        let start = src.offset(e.span.start.line, e.span.start.col);
        let end = src.offset(e.span.end.line, e.span.end.col).max(start);
        let (kind, label) = match &e.code {
            ron::Error::NoSuchEnumVariant { expected, .. } => (
                ErrorKind::UnknownVariant,
                format!("expected one of {}", quote_list(expected)),
            ),
            ron::Error::NoSuchStructField { expected, .. } => (
                ErrorKind::UnknownField,
                format!("expected one of {}", quote_list(expected)),
            ),
            ron::Error::MissingStructField { field, .. } => (
                ErrorKind::MissingField,
                format!("`{field}` is required here"),
            ),
            _ => (ErrorKind::Syntax, "here".to_owned()),
        };
        SpecError::new(kind, file, Some(start..end), e.code.to_string(), label)
    })
}

fn quote_list(items: &[&str]) -> String {
    items
        .iter()
        .map(|s| format!("`{s}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// FNV-1a, 64 bits: stable across platforms and releases.
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            h ^= 0xff;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        for &b in *part {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// Maps an `arch` path to the architecture file's display path and text.
type Resolver<'a> = dyn Fn(&str) -> Result<(PathBuf, String), std::io::Error> + 'a;

/// Loads a model file's text and its architecture (found through `resolver`).
pub(crate) fn load(
    name: &str,
    text: &str,
    opts: &SpecOptions,
    resolver: &Resolver,
) -> Result<ForwardModel, SpecError> {
    let mfile = SourceFile {
        name: name.to_owned(),
        text: text.to_owned(),
    };
    let msrc = Source::new(text);
    let model: ModelFile = parse_ron(&mfile, &msrc)?;
    let mtop = msrc.top("Model");
    let (arch_path, arch_text) = resolver(&model.arch).map_err(|e| {
        SpecError::new(
            ErrorKind::MissingArch,
            &mfile,
            msrc.field(mtop, "arch"),
            format!("cannot read architecture file `{}`: {e}", model.arch),
            "this file, relative to the model file",
        )
    })?;
    let afile = SourceFile {
        name: arch_path.display().to_string(),
        text: arch_text,
    };
    let asrc = Source::new(&afile.text);
    let mut arch: ArchFile = parse_ron(&afile, &asrc)?;
    locate_arch(&mut arch, &asrc);
    if !matches!(opts.weight_dtype, DType::BF16 | DType::F32) {
        return Err(SpecError::without_source(
            ErrorKind::Invalid,
            name,
            format!(
                "weight dtype {} is not supported; use bf16 or f32",
                opts.weight_dtype
            ),
        ));
    }

    let b = Builder {
        opts,
        model: &model,
        arch: &arch,
        mfile: &mfile,
        msrc: &msrc,
        afile: &afile,
        asrc: &asrc,
        dims: IndexMap::new(),
        graph: Graph::new(),
        scopes: Vec::new(),
        indices: Vec::new(),
        prefix: Vec::new(),
        used: IndexSet::new(),
        loss: None,
    };
    let fingerprint = format!("{:016x}", fnv1a(&[text.as_bytes(), afile.text.as_bytes()]));
    b.run(fingerprint)
}

struct Builder<'a> {
    opts: &'a SpecOptions,
    model: &'a ModelFile,
    arch: &'a ArchFile,
    mfile: &'a SourceFile,
    msrc: &'a Source,
    afile: &'a SourceFile,
    asrc: &'a Source,
    dims: IndexMap<String, u64>,
    graph: Graph,
    /// Name → tensor, innermost scope last.
    scopes: Vec<IndexMap<String, TensorId>>,
    /// Repeat index variables in scope and their current values.
    indices: Vec<(String, u64)>,
    /// The tensor-name prefix: `layers.3`.
    prefix: Vec<String>,
    /// Tensor names given so far.
    used: IndexSet<String>,
    loss: Option<TensorId>,
}

type R<T> = Result<T, SpecError>;

impl Builder<'_> {
    fn arch_err(
        &self,
        kind: ErrorKind,
        span: Option<Range<usize>>,
        message: impl Into<String>,
        label: impl Into<String>,
    ) -> SpecError {
        SpecError::new(kind, self.afile, span, message, label)
    }

    fn model_err(
        &self,
        kind: ErrorKind,
        span: Option<Range<usize>>,
        message: impl Into<String>,
        label: impl Into<String>,
    ) -> SpecError {
        SpecError::new(kind, self.mfile, span, message, label)
    }

    fn arch_top_field(&self, field: &str) -> Option<Range<usize>> {
        let top = self.asrc.top("Arch");
        self.asrc.field(top, field).or_else(|| top.head(self.asrc))
    }

    fn run(mut self, fingerprint: String) -> R<ForwardModel> {
        self.check_bindings()?;
        for d in &self.arch.dims {
            self.dims.insert(d.clone(), self.model.dims[d]);
        }
        self.dims.insert("batch".into(), self.opts.batch);
        self.dims.insert("seq".into(), self.opts.seq);
        self.scopes.push(IndexMap::new());

        let mut tokens = None;
        let mut targets = None;
        for input in &self.arch.inputs {
            let mut shape = Vec::new();
            for (k, v) in input.shape.iter().enumerate() {
                let at = self.asrc.element(input.at, "shape", k);
                shape.push(self.dim(v, at)?);
            }
            let dtype = match &input.dtype {
                None => DType::I32,
                Some(n) => DType::from_name(n).ok_or_else(|| {
                    self.arch_err(
                        ErrorKind::Invalid,
                        self.asrc.field(input.at, "dtype"),
                        format!("unknown dtype `{n}`"),
                        "expected one of `i32`, `f32`, `bf16`, `e4m3`, `e5m2`",
                    )
                })?,
            };
            let id = self.new_tensor(
                &input.name,
                TensorType::new(shape, dtype),
                Role::Input,
                None,
                None,
                input.at,
            )?;
            self.bind(&input.name, id);
            match input.name.as_str() {
                "tokens" => tokens = Some(id),
                "targets" => targets = Some(id),
                _ => {}
            }
        }
        let (Some(tokens), Some(targets)) = (tokens, targets) else {
            return Err(self.arch_err(
                ErrorKind::Invalid,
                self.arch_top_field("inputs"),
                "the architecture must declare the inputs `tokens` and `targets`",
                "declare Input(name: \"tokens\", ...) and Input(name: \"targets\", ...) here",
            ));
        };

        self.items(&self.arch.body)?;

        let Some(loss) = self.loss else {
            return Err(self.arch_err(
                ErrorKind::Invalid,
                self.arch_top_field("body"),
                "the architecture computes no loss",
                "add a Loss(op: CrossEntropy, args: [logits, targets]) item to this body",
            ));
        };
        Ok(ForwardModel {
            name: self.model.name.clone(),
            graph: self.graph,
            dims: self.dims,
            tokens,
            targets,
            loss,
            fingerprint,
        })
    }

    /// Every symbol the architecture declares is bound by the model file, and nothing else is.
    fn check_bindings(&self) -> R<()> {
        let mtop = self.msrc.top("Model");
        let declared_field = |field: &str| self.arch_top_field(field);
        let checks: [(&str, &[String], Vec<&String>); 3] = [
            ("dims", &self.arch.dims, self.model.dims.keys().collect()),
            (
                "scalars",
                &self.arch.scalars,
                self.model.scalars.keys().collect(),
            ),
            ("flags", &self.arch.flags, self.model.flags.keys().collect()),
        ];
        for (field, declared, bound) in checks {
            for name in declared {
                if field == "dims" && (name == "batch" || name == "seq") {
                    let at = declared_field(field).and_then(|r| self.asrc.string_in(r, name));
                    return Err(self.arch_err(
                        ErrorKind::Invalid,
                        at,
                        format!("`{name}` is bound by the plan options and cannot be declared"),
                        "remove this name",
                    ));
                }
                if !bound.contains(&name) {
                    let at = self
                        .msrc
                        .field(mtop, field)
                        .or_else(|| mtop.head(self.msrc));
                    return Err(self
                        .model_err(
                            ErrorKind::MissingBinding,
                            at,
                            format!(
                                "the model file does not bind `{name}`, which architecture `{}` requires in `{field}`",
                                self.arch.name
                            ),
                            format!("add \"{name}\": ... here"),
                        )
                        .with_help(format!(
                            "architecture `{}` ({}) declares {field}: {}",
                            self.arch.name,
                            self.afile.name,
                            declared.join(", ")
                        )));
                }
            }
            for name in bound {
                if !declared.contains(name) {
                    let at = self
                        .msrc
                        .field(mtop, field)
                        .and_then(|r| self.msrc.string_in(r, name));
                    return Err(self
                        .model_err(
                            ErrorKind::UnexpectedBinding,
                            at,
                            format!(
                                "architecture `{}` declares no {} named `{name}`",
                                self.arch.name,
                                &field[..field.len() - 1]
                            ),
                            "not declared by the architecture",
                        )
                        .with_help(format!("it declares {field}: {}", declared.join(", "))));
                }
            }
        }
        Ok(())
    }

    fn items(&mut self, items: &[Item]) -> R<()> {
        for item in items {
            self.item(item)?;
        }
        Ok(())
    }

    fn item(&mut self, item: &Item) -> R<()> {
        match item {
            Item::Weight {
                name,
                shape,
                init,
                hf,
                when,
                at,
            } => {
                if !self.when(when, *at)? {
                    return Ok(());
                }
                let mut dims = Vec::new();
                for (k, v) in shape.iter().enumerate() {
                    dims.push(self.dim(v, self.asrc.element(*at, "shape", k))?);
                }
                let hf = match hf {
                    Some(h) => Some(self.substitute(h, *at)?),
                    None => None,
                };
                let init = match init {
                    InitSpec::Zeros => Init::Zeros,
                    InitSpec::Ones => Init::Ones,
                    InitSpec::Normal { std } => Init::Normal { std: *std as f32 },
                };
                let ty = TensorType::new(dims, self.opts.weight_dtype);
                let id = self.new_tensor(name, ty, Role::Weight, hf, Some(init), *at)?;
                self.bind(name, id);
            }
            Item::Op {
                out,
                op,
                args,
                when,
                at,
            } => {
                if !self.when(when, *at)? {
                    return Ok(());
                }
                let outs = self.apply(op, args, out, Role::Activation, *at)?;
                for (name, id) in out.0.iter().zip(outs) {
                    self.bind(name, id);
                }
            }
            Item::Repeat {
                count,
                index,
                name,
                body,
                when,
                at,
            } => {
                if !self.when(when, *at)? {
                    return Ok(());
                }
                let n = self.dim(count, self.asrc.field(*at, "count"))?;
                for i in 0..n {
                    self.scopes.push(IndexMap::new());
                    self.indices.push((index.clone(), i));
                    self.prefix.push(format!("{name}.{i}"));
                    let r = self.items(body);
                    self.prefix.pop();
                    self.indices.pop();
                    self.scopes.pop();
                    r?;
                }
            }
            Item::Loss { op, args, when, at } => {
                if !self.when(when, *at)? {
                    return Ok(());
                }
                if self.loss.is_some() {
                    return Err(self.arch_err(
                        ErrorKind::Invalid,
                        at.head(self.asrc),
                        "a second loss",
                        "a model has exactly one loss",
                    ));
                }
                let names = Names(vec!["loss".into()]);
                let outs = self.apply(op, args, &names, Role::Scalar, *at)?;
                let loss = outs[0];
                let ty = &self.graph.tensor(loss).ty;
                if outs.len() != 1 || *ty != TensorType::new([1], DType::F32) {
                    return Err(self.arch_err(
                        ErrorKind::Invalid,
                        self.asrc.field(*at, "op"),
                        format!("the loss must be one f32[1] value; this op gives {ty}"),
                        "use CrossEntropy",
                    ));
                }
                self.loss = Some(loss);
            }
        }
        Ok(())
    }

    /// Evaluates a `when` condition (`flag` or `!flag`); no condition is true.
    fn when(&self, when: &Option<String>, at: ItemSpan) -> R<bool> {
        let Some(cond) = when else { return Ok(true) };
        let c = cond.trim();
        let (negate, flag) = match c.strip_prefix('!') {
            Some(f) => (true, f.trim()),
            None => (false, c),
        };
        if !self.arch.flags.iter().any(|f| f == flag) {
            let lit = self.asrc.field(at, "when");
            let span = lit.map(|l| match c.find(flag) {
                Some(off) if !flag.is_empty() => {
                    let lead = cond.len() - cond.trim_start().len();
                    self.asrc
                        .inside_string(l, lead + off..lead + off + flag.len())
                }
                _ => l,
            });
            let declared = if self.arch.flags.is_empty() {
                "the architecture declares no flags".to_owned()
            } else {
                format!("declared flags: {}", self.arch.flags.join(", "))
            };
            return Err(self
                .arch_err(
                    ErrorKind::UnknownFlag,
                    span,
                    format!("`when` tests `{flag}`, which is not a declared flag"),
                    "expected a flag name or `!flag`",
                )
                .with_help(format!("{declared}; add it to `flags: [...]` to use it")));
        }
        Ok(self.model.flags[flag] != negate)
    }

    /// Evaluates a dimension value; `at` is the span of its literal in the arch file.
    fn dim(&self, v: &Value, at: Option<Range<usize>>) -> R<u64> {
        match v {
            Value::Int(n) => Ok(*n),
            Value::Float(x) => Err(self.arch_err(
                ErrorKind::BadExpression,
                at,
                format!("a dimension must be a non-negative integer, got {x}"),
                "expected an integer or a dimension expression",
            )),
            Value::Str(s) => {
                let dims = &self.dims;
                let lookup = |n: &str| dims.get(n).copied();
                expr::parse(s)
                    .and_then(|e| expr::eval(&e, &lookup))
                    .map_err(|e| {
                        let span = at.map(|l| self.asrc.inside_string(l, e.at.clone()));
                        let (kind, label, help) = match e.kind {
                            ExprErrorKind::Unbound => (
                                ErrorKind::UnboundSymbol,
                                "not a bound dimension".to_owned(),
                                Some(format!(
                                    "bound dimensions: {}; declare new ones in the architecture's `dims: [...]` and bind them in the model file",
                                    self.dims.keys().cloned().collect::<Vec<_>>().join(", ")
                                )),
                            ),
                            ExprErrorKind::Syntax => {
                                (ErrorKind::BadExpression, "here".to_owned(), Some(
                                    "a dimension expression is integers and symbols joined by + - * / with parentheses".to_owned(),
                                ))
                            }
                            ExprErrorKind::Arithmetic => {
                                (ErrorKind::BadExpression, "this operation".to_owned(), None)
                            }
                        };
                        let err = self.arch_err(
                            kind,
                            span,
                            format!("in `{s}`: {}", e.message),
                            label,
                        );
                        match help {
                            Some(h) => err.with_help(h),
                            None => err,
                        }
                    })
            }
        }
    }

    /// Evaluates a scalar attribute: a declared scalar's name or a number.
    fn scalar(&self, v: &Value, at: Option<Range<usize>>) -> R<f32> {
        match v {
            Value::Int(n) => Ok(*n as f32),
            Value::Float(x) => Ok(*x as f32),
            Value::Str(s) => match self.model.scalars.get(s) {
                Some(x) if self.arch.scalars.contains(s) => Ok(*x as f32),
                _ => Err(self
                    .arch_err(
                        ErrorKind::UnknownScalar,
                        at,
                        format!("`{s}` is not a declared scalar"),
                        "expected a scalar name or a number",
                    )
                    .with_help(format!(
                        "declared scalars: {}",
                        self.arch.scalars.join(", ")
                    ))),
            },
        }
    }

    /// The span of an attribute's value inside the item's `op:` field.
    fn attr_span(&self, at: ItemSpan, v: &Value) -> Option<Range<usize>> {
        let op = self.asrc.field(at, "op")?;
        match v {
            Value::Str(s) => self.asrc.string_in(op.clone(), s).or(Some(op)),
            _ => Some(op),
        }
    }

    fn make_op(&self, op: &OpSpecSyntax, at: ItemSpan) -> R<Op> {
        let d = |v: &Value| self.dim(v, self.attr_span(at, v));
        let s = |v: &Value| self.scalar(v, self.attr_span(at, v));
        Ok(match op {
            OpSpecSyntax::Embedding => ops::Embedding.into(),
            OpSpecSyntax::RmsNorm { eps } => ops::RmsNorm { eps: s(eps)? }.into(),
            OpSpecSyntax::Linear => ops::Linear.into(),
            OpSpecSyntax::BiasAdd => ops::BiasAdd.into(),
            OpSpecSyntax::Rope { head_dim, theta } => ops::Rope {
                head_dim: d(head_dim)?,
                theta: s(theta)?,
            }
            .into(),
            OpSpecSyntax::Attention {
                heads,
                kv_heads,
                head_dim,
            } => ops::Attention {
                heads: d(heads)?,
                kv_heads: d(kv_heads)?,
                head_dim: d(head_dim)?,
            }
            .into(),
            OpSpecSyntax::SwiGlu => ops::SwiGlu { packed: false }.into(),
            OpSpecSyntax::Add => ops::Add.into(),
            OpSpecSyntax::CrossEntropy => ops::CrossEntropy.into(),
        })
    }

    /// Applies an op item: resolves its operands, checks it through the op's rules, and
    /// creates its outputs.
    fn apply(
        &mut self,
        op: &OpSpecSyntax,
        args: &[String],
        out: &Names,
        role: Role,
        at: ItemSpan,
    ) -> R<Vec<TensorId>> {
        let op = self.make_op(op, at)?;
        let mut inputs = Vec::new();
        for (k, a) in args.iter().enumerate() {
            let id = self.lookup(a).ok_or_else(|| {
                self.arch_err(
                    ErrorKind::UndefinedName,
                    self.asrc.element(at, "args", k),
                    format!("`{a}` is used before it is defined"),
                    "no tensor of this name is in scope here",
                )
                .with_help(
                    "define it earlier with Weight(name: ...) or Op(out: ...), or in the architecture's `inputs`",
                )
            })?;
            inputs.push(id);
        }
        let spec = op.spec();
        let n_out = spec.output_names().len();
        if out.0.len() > n_out || out.0.is_empty() {
            return Err(self.arch_err(
                ErrorKind::Arity,
                self.asrc.field(at, "out"),
                format!(
                    "{} has {n_out} output(s) ({}), but {} name(s) are given",
                    spec.name(),
                    spec.output_names().join(", "),
                    out.0.len()
                ),
                format!("expected 1 to {n_out} names"),
            ));
        }
        let names: Vec<String> = (0..n_out)
            .map(|i| match out.0.get(i) {
                Some(n) => n.clone(),
                None => format!("{}.{}", out.0[0], spec.output_names()[i]),
            })
            .collect();
        let mut full = Vec::new();
        for n in &names {
            full.push(self.unique_name(n));
        }
        let layer = self.layer();
        let outs = self
            .graph
            .apply(op.clone(), &inputs, &full, role, Phase::Forward, layer)
            .map_err(|e| self.op_error(&op, e, args, &inputs, at))?;
        for n in full {
            self.used.insert(n);
        }
        Ok(outs)
    }

    fn op_error(
        &self,
        op: &Op,
        e: OpError,
        args: &[String],
        inputs: &[TensorId],
        at: ItemSpan,
    ) -> SpecError {
        let spec = op.spec();
        let operands: Vec<String> = args
            .iter()
            .zip(inputs)
            .zip(spec.input_names().iter().chain(std::iter::repeat(&"?")))
            .map(|((a, &t), slot)| format!("{slot} = `{a}`: {}", self.graph.tensor(t).ty))
            .collect();
        let help = format!("operands of {}: {}", spec.name(), operands.join(", "));
        let args_span = self.asrc.field(at, "args");
        match e {
            OpError::Shape { op, message } => self
                .arch_err(
                    ErrorKind::ShapeMismatch,
                    args_span,
                    format!("shape mismatch in {op}: {message}"),
                    "these operands do not fit",
                )
                .with_help(help),
            OpError::DType {
                op,
                input,
                expected,
                got,
            } => {
                let k = spec.input_names().iter().position(|&n| n == input);
                let span = k
                    .and_then(|k| self.asrc.element(at, "args", k))
                    .or(args_span);
                self.arch_err(
                    ErrorKind::DTypeMismatch,
                    span,
                    format!(
                        "dtype mismatch in {op}: operand `{input}` must be {expected}, got {got}"
                    ),
                    format!("this is {got}, expected {expected}"),
                )
                .with_help(help)
            }
            OpError::Arity { op, expected, got } => self.arch_err(
                ErrorKind::Arity,
                args_span,
                format!(
                    "{op} takes {expected} operand(s) ({}), got {got}",
                    spec.input_names().join(", ")
                ),
                format!("expected {expected} names"),
            ),
            OpError::Data { op, message } => self.arch_err(
                ErrorKind::Invalid,
                args_span,
                format!("{op}: {message}"),
                "here",
            ),
        }
    }

    /// Substitutes `{index}` in an `hf` string with the enclosing repeats' indices.
    fn substitute(&self, hf: &str, at: ItemSpan) -> R<String> {
        let mut out = String::new();
        let mut rest = hf;
        while let Some(open) = rest.find('{') {
            out.push_str(&rest[..open]);
            let after = &rest[open + 1..];
            let close = after.find('}');
            let var = close.map(|c| &after[..c]);
            match var.and_then(|v| self.indices.iter().rev().find(|(n, _)| n == v)) {
                Some((_, i)) => {
                    out.push_str(&i.to_string());
                    rest = &after[close.unwrap_or(0) + 1..];
                }
                None => {
                    let in_scope: Vec<&str> =
                        self.indices.iter().map(|(n, _)| n.as_str()).collect();
                    let span = self.asrc.field(at, "hf");
                    return Err(self
                        .arch_err(
                            ErrorKind::Invalid,
                            span,
                            format!(
                                "`{{{}}}` in an hf name is not a repeat index in scope",
                                var.unwrap_or(after)
                            ),
                            "in this name",
                        )
                        .with_help(if in_scope.is_empty() {
                            "no repeat encloses this weight".to_owned()
                        } else {
                            format!("indices in scope: {}", in_scope.join(", "))
                        }));
                }
            }
        }
        out.push_str(rest);
        Ok(out)
    }

    /// The block index: the outermost repeat's iteration.
    fn layer(&self) -> Option<u32> {
        self.indices.first().map(|&(_, i)| i as u32)
    }

    fn lookup(&self, name: &str) -> Option<TensorId> {
        self.scopes.iter().rev().find_map(|s| s.get(name).copied())
    }

    /// Binds a name: a name already bound in an enclosing scope is rebound there (it is
    /// loop-carried); a new name is bound in the current scope.
    fn bind(&mut self, name: &str, id: TensorId) {
        let n = self.scopes.len();
        let scope = self
            .scopes
            .iter()
            .rposition(|s| s.contains_key(name))
            .unwrap_or(n - 1);
        self.scopes[scope].insert(name.to_owned(), id);
    }

    /// The full tensor name for a spec name, made unique with `#2`, `#3`... on rebinding.
    fn unique_name(&self, name: &str) -> String {
        let base = if self.prefix.is_empty() {
            name.to_owned()
        } else {
            format!("{}.{name}", self.prefix.join("."))
        };
        if !self.used.contains(&base) {
            return base;
        }
        (2..)
            .map(|k| format!("{base}#{k}"))
            .find(|n| !self.used.contains(n))
            .unwrap_or(base)
    }

    fn new_tensor(
        &mut self,
        name: &str,
        ty: TensorType,
        role: Role,
        hf_name: Option<String>,
        init: Option<Init>,
        _at: ItemSpan,
    ) -> R<TensorId> {
        let full = self.unique_name(name);
        self.used.insert(full.clone());
        let layer = self.layer();
        Ok(self.graph.add_tensor(Tensor {
            name: full,
            ty,
            role,
            layer,
            hf_name,
            init,
            parts: Vec::new(),
        }))
    }
}
