//! The training loop around a backend: initialisation, micro-batches, the optimizer step,
//! evaluation, logging and checkpoints.
//!
//! A step: for each of the plan's `grad_accum` micro-batches, write the tokens, targets and
//! `dloss = 1/grad_accum`, run the forward and backward sections; then write `[lr, step]` and
//! run the optimizer section. The learning rate and step counter are device tensors, so the
//! backend's captured graphs never change. A non-finite gradient norm makes the optimizer skip
//! the update on the device (see `ClipScale`); the trainer counts such steps and stops after
//! `max_bad_steps` of them, never checkpointing a broken state.

use crate::backend::{Backend, BackendError};
use crate::train::TrainError;
use crate::train::checkpoint::{
    CheckpointMeta, Tensor as CheckpointTensor, TensorDtype, TensorRef, load_checkpoint,
    save_checkpoint, write_tensors,
};
use crate::train::data::DataLoader;
use crate::train::import::WeightFile;
use crate::train::schedule::Schedule;
use llmq_compiler::ir::{Init, TensorId};
use llmq_compiler::plan::{EVAL_SECTION, Plan, QUANTIZE_WEIGHTS_SECTION};
use llmq_kernels::{DType, TensorType, rng};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Why training stopped early.
#[derive(Debug, thiserror::Error)]
pub enum TrainerError {
    /// The backend failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// Data, schedule or checkpoint trouble.
    #[error(transparent)]
    Train(#[from] TrainError),
    /// Too many steps with a non-finite loss or gradient norm.
    #[error(
        "stopping: {count} steps had a non-finite loss or gradient norm (last at step {step}); no checkpoint was written from them"
    )]
    NonFinite {
        /// How many.
        count: u32,
        /// The last one.
        step: u64,
    },
    /// A checkpoint does not fit the plan.
    #[error("checkpoint {path}: {message}")]
    Checkpoint {
        /// The checkpoint.
        path: PathBuf,
        /// What does not fit.
        message: String,
    },
    /// Writing the log failed.
    #[error("writing the log {path}: {source}")]
    Log {
        /// The log file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// How to train.
#[derive(Clone, Debug)]
pub struct TrainerOptions {
    /// Optimizer steps in the whole run (the schedule's length).
    pub total_steps: u64,
    /// Learning rate over steps.
    pub schedule: Schedule,
    /// Seed of initialisation and data order.
    pub seed: u64,
    /// Evaluate every this many steps (0: never).
    pub eval_every: u64,
    /// Micro-batches per evaluation.
    pub eval_batches: u64,
    /// Where checkpoints go (None: none are written).
    pub checkpoint_dir: Option<PathBuf>,
    /// Write a checkpoint every this many steps (and at the end).
    pub checkpoint_every: u64,
    /// Keep this many checkpoints (0: all).
    pub keep_last: usize,
    /// Stop after this many non-finite steps.
    pub max_bad_steps: u32,
    /// Peak FLOP/s of the device the run is on, for model FLOP utilisation (None on the CPU).
    pub peak_flops: Option<f64>,
}

/// What one optimizer step did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct StepRecord {
    /// The step number, from 1.
    pub step: u64,
    /// Mean loss over the step's micro-batches.
    pub loss: f32,
    /// Global gradient norm before clipping.
    pub grad_norm: f32,
    /// Learning rate used.
    pub lr: f32,
    /// Wall-clock seconds of the step.
    pub seconds: f64,
    /// Training tokens per second.
    pub tokens_per_second: f64,
    /// Model FLOP utilisation (6·N plus attention, over the device's peak), when known.
    pub mfu: Option<f64>,
    /// Evaluation loss, on the steps that evaluate.
    pub eval_loss: Option<f32>,
    /// False when the step was skipped for a non-finite loss or norm.
    pub applied: bool,
}

/// A backend, its data, and where training stands.
pub struct Trainer {
    backend: Box<dyn Backend>,
    train: DataLoader,
    eval: Option<DataLoader>,
    opts: TrainerOptions,
    /// Optimizer steps completed (the next step is `step + 1`).
    pub step: u64,
    /// Updates actually applied (AdamW's step counter).
    applied: u64,
    bad_steps: u32,
}

impl Trainer {
    /// A trainer at step 0; call [`Trainer::init_weights`] or [`Trainer::resume`] next.
    pub fn new(
        backend: Box<dyn Backend>,
        train: DataLoader,
        eval: Option<DataLoader>,
        opts: TrainerOptions,
    ) -> Self {
        Trainer {
            backend,
            train,
            eval,
            opts,
            step: 0,
            applied: 0,
            bad_steps: 0,
        }
    }

    /// The plan being trained.
    pub fn plan(&self) -> &Plan {
        self.backend.plan()
    }

    /// Makes the weights' FP8 copies, in a plan that keeps them across micro-batches (they are
    /// made after each optimizer step, and here after the weights are set or restored).
    fn quantize_weights(&mut self) -> Result<(), BackendError> {
        if self.plan().section(QUANTIZE_WEIGHTS_SECTION).is_some() {
            self.backend.run_section(QUANTIZE_WEIGHTS_SECTION)?;
        }
        Ok(())
    }

    /// The backend, to read tensors.
    pub fn backend(&mut self) -> &mut dyn Backend {
        self.backend.as_mut()
    }

    /// Initialises every parameter by its rule from the seed (and its master copy alike).
    /// Values depend only on the seed, the tensor's name and the element's index; a packed
    /// parameter's parts each by their own name, as if they were not packed.
    pub fn init_weights(&mut self) -> Result<(), TrainerError> {
        let params = self.plan().io.params.clone();
        for p in params {
            let t = self.plan().tensor(p.weight).clone();
            let row = (t.ty.numel() / rows(&t.ty)) as usize;
            let mut values = Vec::with_capacity(t.ty.numel() as usize);
            for piece in t.pieces() {
                let n = (piece.end - piece.start) as usize * row;
                values.extend(match t.init.clone().unwrap_or(Init::Zeros) {
                    Init::Zeros => vec![0.0; n],
                    Init::Ones => vec![1.0; n],
                    Init::Normal { std } => {
                        let (seed, stream) = (self.opts.seed, name_stream(&piece.name));
                        parallel_fill(n, |i| {
                            (std as f64 * rng::normal(seed, stream, i as u64)) as f32
                        })
                    }
                });
            }
            if let Some(master) = p.master {
                self.backend.write_f32(master, &values)?;
            }
            self.backend.write_f32(p.weight, &values)?;
        }
        Ok(self.quantize_weights()?)
    }

    /// Initialises every parameter from a pretrained model's weights (see
    /// [`crate::train::import`]): the weight rounded to its storage dtype, the master copy the
    /// imported value, the moments zero. The file is checked against the plan first (shapes,
    /// missing and extra tensors, a GGUF's dimensions), so nothing is written from a file that
    /// does not fit.
    pub fn init_from(&mut self, path: &Path) -> Result<(), TrainerError> {
        let file = WeightFile::open(path)?;
        file.check(self.plan())?;
        let params = self.plan().io.params.clone();
        for p in params {
            let t = self.plan().tensor(p.weight).clone();
            let mut values = vec![0.0f32; t.ty.numel() as usize];
            // A packed parameter (q|k|v, gate|up) is filled part by part, each from its own name.
            for piece in t.pieces() {
                let name = piece.hf_name.unwrap_or(piece.name);
                file.fill(&name, &t, piece.start..piece.end, &mut values)?;
            }
            if let Some(master) = p.master {
                self.backend.write_f32(master, &values)?;
            }
            self.backend.write_f32(p.weight, &values)?;
        }
        Ok(self.quantize_weights()?)
    }

    fn write_micro_batch(
        &mut self,
        tokens: &[i32],
        targets: &[i32],
        dloss: f32,
    ) -> Result<(), BackendError> {
        let io = self.plan().io.clone();
        let as_f32 = |v: &[i32]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
        self.backend.write_f32(io.tokens, &as_f32(tokens))?;
        self.backend.write_f32(io.targets, &as_f32(targets))?;
        self.backend.write_f32(io.dloss, &[dloss])
    }

    fn read_scalar(&mut self, t: TensorId) -> Result<f32, BackendError> {
        Ok(self.backend.read_f32(t)?[0])
    }

    /// One optimizer step over `grad_accum` micro-batches.
    pub fn train_step(&mut self) -> Result<StepRecord, TrainerError> {
        let start = Instant::now();
        let accum = self.plan().options.grad_accum;
        let io = self.plan().io.clone();
        let mut loss = 0.0f32;
        for _ in 0..accum {
            let batch = self.train.next_batch();
            self.write_micro_batch(&batch.inputs, &batch.targets, 1.0 / accum as f32)?;
            self.backend.run_section("forward")?;
            self.backend.run_section("backward")?;
            loss += self.read_scalar(io.loss)? / accum as f32;
        }
        let lr = self.opts.schedule.lr(self.step, self.opts.total_steps);
        self.backend
            .write_f32(io.hyper, &[lr, (self.applied + 1) as f32])?;
        self.backend.run_section("optimizer")?;
        self.quantize_weights()?;
        let grad_norm = self.read_scalar(io.grad_norm)?;
        self.step += 1;
        let applied = loss.is_finite() && grad_norm.is_finite();
        if applied {
            self.applied += 1;
        } else {
            self.bad_steps += 1;
            if self.bad_steps >= self.opts.max_bad_steps {
                return Err(TrainerError::NonFinite {
                    count: self.bad_steps,
                    step: self.step,
                });
            }
        }
        let seconds = start.elapsed().as_secs_f64();
        let tokens_per_second = self.plan().tokens_per_step() as f64 / seconds;
        let mfu = self
            .opts
            .peak_flops
            .map(|peak| self.plan().estimates.model_flops_per_token * tokens_per_second / peak);
        let eval_loss =
            if self.opts.eval_every > 0 && self.step.is_multiple_of(self.opts.eval_every) {
                self.evaluate()?
            } else {
                None
            };
        Ok(StepRecord {
            step: self.step,
            loss,
            grad_norm,
            lr,
            seconds,
            tokens_per_second,
            mfu,
            eval_loss,
            applied,
        })
    }

    /// Mean loss over `eval_batches` micro-batches of the eval data (forward and the eval
    /// section: no backward), if any.
    pub fn evaluate(&mut self) -> Result<Option<f32>, TrainerError> {
        let Some(mut eval) = self.eval.take() else {
            return Ok(None);
        };
        let loss_tensor = self.plan().io.loss;
        // Where training makes the loss in the backward, the eval section makes it alone.
        let has_eval_section = self.plan().section(EVAL_SECTION).is_some();
        let mut sum = 0.0f32;
        let n = self.opts.eval_batches.max(1);
        let result = (|| {
            for _ in 0..n {
                let batch = eval.next_batch();
                self.write_micro_batch(&batch.inputs, &batch.targets, 0.0)?;
                self.backend.run_section("forward")?;
                if has_eval_section {
                    self.backend.run_section(EVAL_SECTION)?;
                }
                sum += self.read_scalar(loss_tensor)?;
            }
            Ok::<_, BackendError>(())
        })();
        // Each evaluation reads the same batches: a fixed yardstick across the run.
        let start = crate::train::data::DataPosition {
            index: 0,
            epoch: 0,
            ..eval.position()
        };
        eval.seek(start)?;
        self.eval = Some(eval);
        result?;
        Ok(Some(sum / n as f32))
    }

    /// The fingerprint checkpoints are matched by: model, precision and shapes.
    fn fingerprint(&self) -> String {
        let p = self.plan();
        format!(
            "{}:{}:{}",
            p.model.name, p.model.fingerprint, p.options.precision
        )
    }

    /// Writes a checkpoint of the current state if a directory was given; returns its path.
    pub fn save(&mut self) -> Result<Option<PathBuf>, TrainerError> {
        let Some(root) = self.opts.checkpoint_dir.clone() else {
            return Ok(None);
        };
        let params = self.plan().io.params.clone();
        let mut model = Vec::new();
        let mut optimizer = Vec::new();
        for p in &params {
            let names = self.piece_names(p.weight, true);
            model.extend(self.snapshots(p.weight, &names)?);
            for &t in p.master.iter().chain([&p.m, &p.v]) {
                let names = self.piece_names(t, false);
                optimizer.extend(self.snapshots(t, &names)?);
            }
        }
        let meta = CheckpointMeta {
            step: self.step,
            data_position: self.train.position(),
            seed: self.opts.seed,
            fingerprint: self.fingerprint(),
            extra: serde_json::json!({
                "applied_updates": self.applied,
                "bad_steps": self.bad_steps,
                "batch": self.plan().options.batch,
                "seq": self.plan().options.seq,
                "grad_accum": self.plan().options.grad_accum,
            }),
        };
        let path = save_checkpoint(
            &root,
            &meta,
            &views(&model),
            &views(&optimizer),
            self.opts.keep_last,
        )?;
        Ok(Some(path))
    }

    /// Runs forward and backward of the next training micro-batch on the current weights and
    /// writes into `dir` what another implementation needs to check this step's numerics:
    /// `model.safetensors` (the weights, as in a checkpoint: Hugging Face names) and
    /// `step.safetensors` (`tokens`, `targets` as I32, `loss` as F32, and each parameter's
    /// gradient as `grad.<weight name>`). The loss gradient is 1 (one micro-batch's mean) and
    /// no optimizer step runs, so the weights are left as they were.
    pub fn dump_step(&mut self, dir: &Path) -> Result<f32, TrainerError> {
        std::fs::create_dir_all(dir).map_err(TrainError::io(dir, "create"))?;
        let params = self.plan().io.params.clone();
        let mut model = Vec::new();
        for p in &params {
            let names = self.piece_names(p.weight, true);
            model.extend(self.snapshots(p.weight, &names)?);
        }
        let batch = self.train.next_batch();
        self.write_micro_batch(&batch.inputs, &batch.targets, 1.0)?;
        self.backend.run_section("forward")?;
        self.backend.run_section("backward")?;
        let loss = self.read_scalar(self.plan().io.loss)?;
        let (b, s) = (
            self.plan().options.batch as usize,
            self.plan().options.seq as usize,
        );
        let ints = |name: &str, v: &[i32]| CheckpointTensor {
            name: name.into(),
            dtype: TensorDtype::I32,
            shape: vec![b, s],
            data: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        };
        let mut step = vec![
            ints("tokens", &batch.inputs),
            ints("targets", &batch.targets),
            CheckpointTensor {
                name: "loss".into(),
                dtype: TensorDtype::F32,
                shape: vec![1],
                data: loss.to_le_bytes().to_vec(),
            },
        ];
        for p in &params {
            let names = self.piece_names(p.weight, true);
            let names: Vec<String> = names.iter().map(|n| format!("grad.{n}")).collect();
            step.extend(self.snapshots(p.grad, &names)?);
        }
        write_tensors(&dir.join("model.safetensors"), &views(&model))?;
        write_tensors(&dir.join("step.safetensors"), &views(&step))?;
        Ok(loss)
    }

    /// The checkpoint names of a tensor's pieces (`PlanTensor::pieces`): a weight's by their
    /// Hugging Face names (`model`), other tensors' by their own.
    fn piece_names(&self, t: TensorId, model: bool) -> Vec<String> {
        let pieces = self.plan().tensor(t).pieces();
        pieces
            .iter()
            .map(|p| match model {
                true => p.checkpoint_name().to_string(),
                false => p.name.clone(),
            })
            .collect()
    }

    /// A tensor's bytes, one checkpoint tensor per piece (its rows), named `names`.
    fn snapshots(
        &mut self,
        t: TensorId,
        names: &[String],
    ) -> Result<Vec<CheckpointTensor>, TrainerError> {
        let pt = self.plan().tensor(t).clone();
        let bytes = self.backend.read_bytes(t)?;
        let row = bytes.len() / rows(&pt.ty) as usize;
        let pieces = pt.pieces();
        let snapshots = pieces.iter().zip(names).map(|(piece, name)| {
            let mut shape: Vec<usize> = pt.ty.shape.iter().map(|&d| d as usize).collect();
            if let Some(r) = shape.first_mut() {
                *r = (piece.end - piece.start) as usize;
            }
            let range = piece.start as usize * row..piece.end as usize * row;
            CheckpointTensor {
                name: name.clone(),
                dtype: checkpoint_dtype(pt.ty.dtype),
                shape,
                data: bytes[range].to_vec(),
            }
        });
        Ok(snapshots.collect())
    }

    /// Restores weights, optimizer state, step and data position from a checkpoint.
    pub fn resume(&mut self, path: &Path) -> Result<(), TrainerError> {
        let ckpt = load_checkpoint(path, &self.fingerprint())?;
        let params = self.plan().io.params.clone();
        for p in &params {
            let names = self.piece_names(p.weight, true);
            self.restore(path, p.weight, &names, |n| ckpt.model_tensor(n))?;
            for &t in p.master.iter().chain([&p.m, &p.v]) {
                let names = self.piece_names(t, false);
                self.restore(path, t, &names, |n| ckpt.optimizer_tensor(n))?;
            }
        }
        self.step = ckpt.meta.step;
        self.applied = ckpt.meta.extra["applied_updates"]
            .as_u64()
            .unwrap_or(ckpt.meta.step);
        self.bad_steps = ckpt.meta.extra["bad_steps"].as_u64().unwrap_or(0) as u32;
        self.train.seek(ckpt.meta.data_position)?;
        Ok(self.quantize_weights()?)
    }

    /// Writes tensor `t` from the checkpoint tensors of its pieces, named `names`, in order.
    fn restore<'c>(
        &mut self,
        path: &Path,
        t: TensorId,
        names: &[String],
        find: impl Fn(&str) -> Option<&'c CheckpointTensor>,
    ) -> Result<(), TrainerError> {
        let pt = self.plan().tensor(t).clone();
        let row = (pt.ty.bytes() / rows(&pt.ty)) as usize;
        let mut data = Vec::with_capacity(pt.ty.bytes() as usize);
        for (piece, name) in pt.pieces().iter().zip(names) {
            let tensor = find(name).ok_or_else(|| TrainerError::Checkpoint {
                path: path.to_path_buf(),
                message: format!("has no tensor `{name}`"),
            })?;
            let expected = (piece.end - piece.start) as usize * row;
            if tensor.data.len() != expected {
                return Err(TrainerError::Checkpoint {
                    path: path.to_path_buf(),
                    message: format!(
                        "tensor `{name}` has {} bytes, the plan needs {expected}",
                        tensor.data.len()
                    ),
                });
            }
            data.extend_from_slice(&tensor.data);
        }
        self.backend.write_bytes(t, &data)?;
        Ok(())
    }

    /// Trains until `total_steps`, calling `report` after every step, checkpointing as asked.
    pub fn run(
        &mut self,
        mut report: impl FnMut(&StepRecord),
    ) -> Result<Vec<StepRecord>, TrainerError> {
        let mut records = Vec::new();
        while self.step < self.opts.total_steps {
            let record = self.train_step()?;
            report(&record);
            let due = self.opts.checkpoint_every > 0
                && self.step.is_multiple_of(self.opts.checkpoint_every);
            if record.applied && (due || self.step == self.opts.total_steps) {
                self.save()?;
            }
            records.push(record);
        }
        Ok(records)
    }
}

/// `(0..n).map(value)` computed on every core: a 7B model's initial values take a minute on one
/// (each value depends only on its index, so the split changes nothing).
fn parallel_fill(n: usize, value: impl Fn(usize) -> f32 + Sync) -> Vec<f32> {
    let mut out = vec![0.0f32; n];
    let threads = std::thread::available_parallelism().map_or(1, |t| t.get());
    let chunk = n.div_ceil(threads).max(1 << 16);
    std::thread::scope(|scope| {
        for (c, part) in out.chunks_mut(chunk).enumerate() {
            let value = &value;
            scope.spawn(move || {
                for (j, v) in part.iter_mut().enumerate() {
                    *v = value(c * chunk + j);
                }
            });
        }
    });
    out
}

fn views(tensors: &[CheckpointTensor]) -> Vec<TensorRef<'_>> {
    tensors.iter().map(CheckpointTensor::view).collect()
}

/// The checkpoint dtype of a storage dtype.
fn checkpoint_dtype(dtype: DType) -> TensorDtype {
    match dtype {
        DType::F32 => TensorDtype::F32,
        DType::BF16 => TensorDtype::BF16,
        DType::F8E4M3 => TensorDtype::F8E4M3,
        DType::F8E5M2 => TensorDtype::F8E5M2,
        DType::I32 => TensorDtype::I32,
    }
}

/// The outer rows of a tensor type (1 for a scalar): what a packed tensor's parts divide.
fn rows(ty: &TensorType) -> u64 {
    ty.shape.first().copied().unwrap_or(1)
}

/// A stable random stream per tensor name (FNV-1a), so initial values do not depend on the
/// order of tensors in a plan.
fn name_stream(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Appends one JSON line per step to a log file.
pub struct JsonLog {
    path: PathBuf,
    file: std::fs::File,
}

impl JsonLog {
    /// Opens (appending) the log at `path`.
    pub fn open(path: &Path) -> Result<Self, TrainerError> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|source| TrainerError::Log {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(JsonLog {
            path: path.to_path_buf(),
            file,
        })
    }

    /// Writes one record as a line.
    pub fn write(&mut self, record: &StepRecord) -> Result<(), TrainerError> {
        let line = serde_json::to_string(record).expect("records serialise");
        writeln!(self.file, "{line}").map_err(|source| TrainerError::Log {
            path: self.path.clone(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::parallel_fill;

    #[test]
    fn parallel_fill_gives_every_index_its_own_value() {
        // Several chunks (at least 2^16 values each), the last one short.
        for n in [0, 1, 5, (3 << 16) + 7] {
            let value = |i: usize| (i as f32).sin() + i as f32;
            let expected: Vec<f32> = (0..n).map(value).collect();
            assert_eq!(parallel_fill(n, value), expected, "n = {n}");
        }
    }
}
