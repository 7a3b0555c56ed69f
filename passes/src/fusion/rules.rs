//! The terms egg rewrites, the dtypes it knows of them, and the rules, grouped by topic.
//!
//! A term stands for an op's output (or, for the multi-output ops `quantize` and the fused
//! ops, for the op itself, its outputs then named by a projection: `normed_of`, `amax_of`).
//! Tensors that no modelled op produces are leaves named after their ID (`t12`); a cast's
//! target dtype is a leaf named after the dtype (`bf16`). Every rule is an equality of the CPU
//! references that holds on every input, bit for bit once results are stored; the fused ops'
//! other outputs are the unfused op's by their definition, so only the new output needs a rule.

use egg::{Analysis, DidMerge, EGraph, Id, Rewrite, Subst, Symbol, Var, define_language, rewrite};
use indexmap::IndexMap;
use llmq_compiler::kernels::DType;

define_language! {
    /// The fusible and cast-related ops, the fused ops, their outputs, and leaves.
    pub enum Term {
        "add" = Add([Id; 2]),
        "rms_norm" = RmsNorm([Id; 2]),
        "swiglu" = SwiGlu([Id; 2]),
        "abs_max" = AbsMax(Id),
        // (cast to x)
        "cast" = Cast([Id; 2]),
        // (quantize to x amax): the op, whose outputs no rule names.
        "quantize" = Quantize([Id; 3]),
        "quantize_transposed" = QuantizeTransposed([Id; 3]),
        "add_rms_norm" = AddRmsNorm([Id; 3]),
        "rms_norm_abs_max" = RmsNormAbsMax([Id; 2]),
        "add_rms_norm_abs_max" = AddRmsNormAbsMax([Id; 3]),
        "swiglu_abs_max" = SwiGluAbsMax([Id; 2]),
        // The normalised output `y` of a fused norm.
        "normed_of" = NormedOf(Id),
        // The abs-max output of a fused op.
        "amax_of" = AmaxOf(Id),
        Leaf(Symbol),
    }
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

/// Fewer passes over memory: a residual add into the norm after it, and an abs-max into the
/// op whose output it reads (the norms feeding FP8 matmuls, swiglu feeding the down matmul).
fn fusion_rules() -> Vec<Rewrite<Term, Dtypes>> {
    vec![
        rewrite!(
            "residual-add-rms-norm";
            "(rms_norm (add ?a ?b) ?w)" => "(normed_of (add_rms_norm ?a ?b ?w))"
        ),
        rewrite!(
            "swiglu-abs-max";
            "(abs_max (swiglu ?g ?u))" => "(amax_of (swiglu_abs_max ?g ?u))"
        ),
        rewrite!(
            "rms-norm-abs-max";
            "(abs_max (rms_norm ?x ?w))" => "(amax_of (rms_norm_abs_max ?x ?w))"
        ),
        rewrite!(
            "add-rms-norm-abs-max";
            "(abs_max (normed_of (add_rms_norm ?a ?b ?w)))"
                => "(amax_of (add_rms_norm_abs_max ?a ?b ?w))"
        ),
    ]
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
        rewrite!(
            "quantize-transposed-of-exact-cast";
            "(quantize_transposed ?to (cast ?a ?x) ?amax)" => "(quantize_transposed ?to ?x ?amax)"
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
        assert!(proves(
            none,
            "(rms_norm (add a b) w)",
            "(normed_of (add_rms_norm a b w))"
        ));
        assert!(proves(
            none,
            "(abs_max (swiglu g u))",
            "(amax_of (swiglu_abs_max g u))"
        ));
        assert!(proves(
            none,
            "(abs_max (rms_norm x w))",
            "(amax_of (rms_norm_abs_max x w))"
        ));
        assert!(proves(
            none,
            "(abs_max (rms_norm (add a b) w))",
            "(amax_of (add_rms_norm_abs_max a b w))"
        ));
        // The abs-max of the norm's input is not the abs-max of its output.
        assert!(!proves(
            none,
            "(abs_max (add a b))",
            "(amax_of (add_rms_norm_abs_max a b w))"
        ));
        assert!(!proves(
            none,
            "(abs_max g)",
            "(amax_of (swiglu_abs_max g u))"
        ));
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
            "(quantize_transposed e5m2 (cast f32 x) m)",
            "(quantize_transposed e5m2 x m)"
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
