//! A direct interpreter of ops and backward rules on FP32 values, with no plan, arena or
//! storage rounding: the naive evaluation the tests compare the compiler's output against
//! (the finite-difference checks of each op, and the whole-model gradient check).

use crate::{BackwardStep, Op, Ref, TensorType, View, ViewMut};

/// A tensor's type and its values, widened to FP32.
#[derive(Clone, Debug, PartialEq)]
pub struct Value {
    /// Shape and (nominal) dtype.
    pub ty: TensorType,
    /// Row-major values.
    pub data: Vec<f32>,
}

impl Value {
    /// A value of type `ty` with every element `fill`.
    pub fn filled(ty: TensorType, fill: f32) -> Value {
        let data = vec![fill; ty.numel() as usize];
        Value { ty, data }
    }
}

/// Runs an op's CPU reference; outputs start as NaN so an element it forgets to write shows.
pub fn run_op(op: &Op, inputs: &[&Value]) -> Result<Vec<Value>, String> {
    let types: Vec<TensorType> = inputs.iter().map(|t| t.ty.clone()).collect();
    let out_types = op.infer(&types).map_err(|e| format!("{op}: infer: {e}"))?;
    let mut outs: Vec<Value> = out_types
        .into_iter()
        .map(|ty| Value::filled(ty, f32::NAN))
        .collect();
    let views: Vec<View> = inputs
        .iter()
        .map(|t| View {
            shape: &t.ty.shape,
            data: &t.data,
        })
        .collect();
    let mut muts: Vec<ViewMut> = outs
        .iter_mut()
        .map(|t| ViewMut {
            shape: &t.ty.shape,
            data: &mut t.data,
        })
        .collect();
    op.spec()
        .cpu(&views, &mut muts)
        .map_err(|e| format!("{op}: cpu: {e}"))?;
    Ok(outs)
}

/// The tensors a backward rule can name, filled in as its steps run.
struct Env<'a> {
    inputs: &'a [Value],
    outputs: &'a [Value],
    grad_outputs: &'a [Value],
    written: Vec<(Ref, Value)>,
}

impl Env<'_> {
    fn get(&self, r: Ref) -> Result<&Value, String> {
        let found = match r {
            Ref::Input(i) => self.inputs.get(i as usize),
            Ref::Output(i) => self.outputs.get(i as usize),
            Ref::GradOutput(i) => self.grad_outputs.get(i as usize),
            Ref::GradInput(_) | Ref::Temp(_) => {
                self.written.iter().find(|(w, _)| *w == r).map(|(_, t)| t)
            }
        };
        found.ok_or_else(|| format!("the rule reads {r:?} before anything defines it"))
    }

    fn set(&mut self, r: Ref, t: Value) -> Result<(), String> {
        if !matches!(r, Ref::GradInput(_) | Ref::Temp(_)) {
            return Err(format!(
                "the rule writes {r:?}, which is not a GradInput or Temp"
            ));
        }
        if self.written.iter().any(|(w, _)| *w == r) {
            return Err(format!("the rule writes {r:?} twice"));
        }
        self.written.push((r, t));
        Ok(())
    }
}

/// Executes a backward rule on the forward op's inputs, outputs and output gradients; returns
/// the gradient of each input (`None` where the rule makes none).
pub fn run_backward_rule(
    rule: &[BackwardStep],
    inputs: &[Value],
    outputs: &[Value],
    grad_outputs: &[Value],
) -> Result<Vec<Option<Value>>, String> {
    let mut env = Env {
        inputs,
        outputs,
        grad_outputs,
        written: Vec::new(),
    };
    for step in rule {
        match step {
            BackwardStep::Apply {
                op,
                inputs: refs,
                outputs: outs,
            } => {
                let args = refs
                    .iter()
                    .map(|&r| env.get(r))
                    .collect::<Result<Vec<_>, _>>()?;
                let results = run_op(op, &args)?;
                if results.len() != outs.len() {
                    return Err(format!(
                        "{op} makes {} outputs, the rule names {}",
                        results.len(),
                        outs.len()
                    ));
                }
                for (&r, t) in outs.iter().zip(results) {
                    env.set(r, t)?;
                }
            }
            BackwardStep::PassThrough { output, input } => {
                let g = env.get(Ref::GradOutput(*output))?.clone();
                env.set(Ref::GradInput(*input), g)?;
            }
        }
    }
    Ok((0..inputs.len())
        .map(|i| env.get(Ref::GradInput(i as u8)).ok().cloned())
        .collect())
}
