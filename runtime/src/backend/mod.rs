//! The `Backend` trait: executes plan steps over the plan's arenas. Ops are not methods here:
//! a backend looks each step's op up in the catalogue (CPU reference or CUDA kernel).

pub mod cpu;
pub mod cuda;

use llmq_compiler::ir::TensorId;
use llmq_compiler::plan::Plan;
use llmq_kernels::OpError;

/// Why a backend could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// An op failed on its data (a token id out of range, say).
    #[error("step {step} ({op}): {source}")]
    Op {
        /// The step index.
        step: u32,
        /// The op's name.
        op: &'static str,
        /// What the op said.
        source: OpError,
    },
    /// The backend cannot run here (no GPU, a missing library, not enough memory).
    #[error("{0}")]
    Unavailable(String),
    /// The backend runs here but not this plan (an op it has no kernel for yet).
    #[error("{0}")]
    Unsupported(String),
    /// A call to the GPU failed while running (a driver, kernel or cuBLASLt error).
    #[error("CUDA: {0}")]
    Device(String),
    /// A value of the wrong size was written to a tensor.
    #[error("tensor {tensor} `{name}` holds {expected} values, got {got}")]
    Size {
        /// The tensor.
        tensor: TensorId,
        /// Its name.
        name: String,
        /// Its element count.
        expected: usize,
        /// The count given.
        got: usize,
    },
}

/// Executes the steps of one plan.
pub trait Backend {
    /// `cpu` or `cuda`.
    fn name(&self) -> &'static str;
    /// The plan being executed.
    fn plan(&self) -> &Plan;
    /// Runs steps `start..end` of the plan, in order.
    fn run_steps(&mut self, start: u32, end: u32) -> Result<(), BackendError>;
    /// Writes a tensor's raw bytes (already in its dtype).
    fn write_bytes(&mut self, tensor: TensorId, bytes: &[u8]) -> Result<(), BackendError>;
    /// Reads a tensor's raw bytes.
    fn read_bytes(&mut self, tensor: TensorId) -> Result<Vec<u8>, BackendError>;

    /// Seconds each step of `start..end` takes, measured by running the steps once each, one
    /// at a time (this changes the state like `run_steps`); `None` where the backend cannot
    /// time its steps.
    fn step_times(&mut self, start: u32, end: u32) -> Result<Option<Vec<f64>>, BackendError> {
        let _ = (start, end);
        Ok(None)
    }

    /// Writes FP32 values, rounded to the tensor's dtype.
    fn write_f32(&mut self, tensor: TensorId, values: &[f32]) -> Result<(), BackendError> {
        let t = self.plan().tensor(tensor);
        let expected = t.ty.numel() as usize;
        if values.len() != expected {
            return Err(BackendError::Size {
                tensor,
                name: t.name.clone(),
                expected,
                got: values.len(),
            });
        }
        let mut bytes = vec![0u8; t.ty.bytes() as usize];
        crate::storage::encode(t.ty.dtype, values, &mut bytes);
        self.write_bytes(tensor, &bytes)
    }

    /// Reads a tensor as FP32 values.
    fn read_f32(&mut self, tensor: TensorId) -> Result<Vec<f32>, BackendError> {
        let dtype = self.plan().tensor(tensor).ty.dtype;
        let bytes = self.read_bytes(tensor)?;
        let mut out = vec![0f32; bytes.len() / dtype.size_bytes() as usize];
        crate::storage::decode(dtype, &bytes, &mut out);
        Ok(out)
    }

    /// Runs the named section (`forward`, `backward`, `optimizer`) once.
    fn run_section(&mut self, name: &str) -> Result<(), BackendError> {
        let section = self
            .plan()
            .section(name)
            .map(|s| (s.start, s.end))
            .ok_or_else(|| {
                BackendError::Unavailable(format!("the plan has no section `{name}`"))
            })?;
        self.run_steps(section.0, section.1)
    }
}
