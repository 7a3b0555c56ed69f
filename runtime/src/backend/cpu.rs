//! The CPU reference backend. It executes the same plan the GPU executes, over the same arena
//! layout: one byte buffer per arena, every tensor at its planned offset, every value stored in
//! its planned dtype. A fault in liveness, packing, recompute or offload therefore corrupts
//! numbers here, in CI, where no GPU exists. Arithmetic is the catalogue's FP32 reference.

use super::{Backend, BackendError};
use crate::storage::{decode, encode};
use llmq_compiler::ir::TensorId;
use llmq_compiler::plan::{Arena, Plan};
use llmq_kernels::{View, ViewMut};

/// Executes plans with the catalogue's CPU references.
pub struct CpuBackend {
    plan: Plan,
    device: Vec<u8>,
    host: Vec<u8>,
}

impl CpuBackend {
    /// Allocates the plan's arenas, zero-filled (gradients and moments start at zero).
    pub fn new(plan: Plan) -> Self {
        let device = vec![0u8; plan.device_arena_bytes as usize];
        let host = vec![0u8; plan.host_arena_bytes as usize];
        CpuBackend { plan, device, host }
    }

    fn range(&self, tensor: TensorId) -> (Arena, std::ops::Range<usize>) {
        let t = self.plan.tensor(tensor);
        let b = &self.plan.buffers[t.buffer.index()];
        let start = b.offset as usize;
        (b.arena, start..start + t.ty.bytes() as usize)
    }

    fn bytes(&self, tensor: TensorId) -> &[u8] {
        let (arena, range) = self.range(tensor);
        match arena {
            Arena::Device => &self.device[range],
            Arena::Host => &self.host[range],
        }
    }

    fn bytes_mut(&mut self, tensor: TensorId) -> &mut [u8] {
        let (arena, range) = self.range(tensor);
        match arena {
            Arena::Device => &mut self.device[range],
            Arena::Host => &mut self.host[range],
        }
    }

    fn load(&self, tensor: TensorId) -> Vec<f32> {
        let t = self.plan.tensor(tensor);
        let mut values = vec![0f32; t.ty.numel() as usize];
        decode(t.ty.dtype, self.bytes(tensor), &mut values);
        values
    }

    fn store(&mut self, tensor: TensorId, values: &[f32]) {
        let dtype = self.plan.tensor(tensor).ty.dtype;
        encode(dtype, values, self.bytes_mut(tensor));
    }

    fn run_step(&mut self, index: u32) -> Result<(), BackendError> {
        let step = &self.plan.steps[index as usize];
        let inputs: Vec<Vec<f32>> = step.node.inputs.iter().map(|&t| self.load(t)).collect();
        let mut outputs: Vec<Vec<f32>> = step
            .node
            .outputs
            .iter()
            .map(|&t| vec![0f32; self.plan.tensor(t).ty.numel() as usize])
            .collect();
        {
            let views: Vec<View> = step
                .node
                .inputs
                .iter()
                .zip(&inputs)
                .map(|(&t, data)| View {
                    shape: &self.plan.tensor(t).ty.shape,
                    data,
                })
                .collect();
            let mut outs: Vec<ViewMut> = step
                .node
                .outputs
                .iter()
                .zip(outputs.iter_mut())
                .map(|(&t, data)| ViewMut {
                    shape: &self.plan.tensor(t).ty.shape,
                    data,
                })
                .collect();
            step.node
                .op
                .spec()
                .cpu(&views, &mut outs)
                .map_err(|source| BackendError::Op {
                    step: index,
                    op: step.node.op.name(),
                    source,
                })?;
        }
        let step = self.plan.steps[index as usize].clone();
        for ((&t, mut values), &acc) in step
            .node
            .outputs
            .iter()
            .zip(outputs)
            .zip(&step.node.accumulate)
        {
            if acc {
                for (v, old) in values.iter_mut().zip(self.load(t)) {
                    *v += old;
                }
            }
            self.store(t, &values);
        }
        Ok(())
    }
}

impl Backend for CpuBackend {
    fn name(&self) -> &'static str {
        "cpu"
    }

    fn plan(&self) -> &Plan {
        &self.plan
    }

    fn run_steps(&mut self, start: u32, end: u32) -> Result<(), BackendError> {
        for i in start..end {
            self.run_step(i)?;
        }
        Ok(())
    }

    fn write_bytes(&mut self, tensor: TensorId, bytes: &[u8]) -> Result<(), BackendError> {
        let t = self.plan.tensor(tensor);
        if t.ty.bytes() as usize != bytes.len() {
            let size = t.ty.dtype.size_bytes() as usize;
            return Err(BackendError::Size {
                tensor,
                name: t.name.clone(),
                expected: t.ty.numel() as usize,
                got: bytes.len() / size,
            });
        }
        self.bytes_mut(tensor).copy_from_slice(bytes);
        Ok(())
    }

    fn read_bytes(&mut self, tensor: TensorId) -> Result<Vec<u8>, BackendError> {
        Ok(self.bytes(tensor).to_vec())
    }
}
