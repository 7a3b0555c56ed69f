//! What a plan is made for: the device's profile (rates the cost model uses), the memory
//! budget, the GPU count and the numeric precision.
//!
//! Rates are dense datasheet figures (FP32 accumulation for matrix units), then scaled by the
//! efficiencies below, which the CUDA backend's measurements calibrate (docs/benchmarks.md).

use llmq_kernels::DType;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Rates of one kind of GPU.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeviceProfile {
    /// Short name (`h100`, `rtx4090`).
    pub name: String,
    /// Dense BF16 matrix throughput with FP32 accumulation, TFLOP/s.
    pub bf16_tflops: f64,
    /// Dense FP8 matrix throughput with FP32 accumulation, TFLOP/s (the BF16 rate where the
    /// card has no FP8 units).
    pub fp8_tflops: f64,
    /// Non-matrix FP32 throughput, TFLOP/s.
    pub fp32_tflops: f64,
    /// Device memory bandwidth, GB/s.
    pub memory_gbps: f64,
    /// Host↔device bandwidth per direction, GB/s (PCIe, as measured rather than nominal).
    pub host_gbps: f64,
    /// GPU↔GPU bandwidth per direction, GB/s (through the host where there is no P2P).
    pub peer_gbps: f64,
    /// Device memory, GiB, as the driver reports it (an "80 GB" H100: 81,559 MiB).
    pub memory_gib: f64,
    /// Streaming multiprocessors: how many thread blocks' worth of work runs side by side.
    pub sms: u32,
}

/// Fraction of peak matrix throughput that large GEMMs reach.
pub const MATRIX_EFFICIENCY: f64 = 0.7;
/// Fraction of peak memory bandwidth that streaming kernels reach.
pub const MEMORY_EFFICIENCY: f64 = 0.8;
/// Fixed cost of one kernel inside a CUDA graph, seconds.
pub const LAUNCH_SECONDS: f64 = 2e-6;
/// Fixed cost of one cuBLASLt matmul beyond its FLOPs at the efficiency above (the pipeline
/// filling and draining), seconds. Measured: the 336 FP8 matmuls of one Qwen2.5-7B micro-batch
/// took 68.5 ms at 2 × 1024 tokens and 241.9 ms at 8 × 1024 (H200, 2026-12-03, steps timed
/// alone): the difference prices the FLOPs at the efficiency above, the rest is 32 µs a call.
/// The cost model charges a call at most its own FLOP time (a tiny matmul fills in no time).
pub const MATMUL_CALL_SECONDS: f64 = 30e-6;
/// Device memory a plan leaves free for the CUDA context, cuBLASLt/cuDNN workspaces and the
/// allocator's own use.
pub const RESERVE_BYTES: u64 = 768 << 20;

macro_rules! profile {
    ($name:literal, $bf16:expr, $fp8:expr, $fp32:expr, $mem:expr, $host:expr, $peer:expr, $gib:expr, $sms:expr) => {
        DeviceProfile {
            name: String::from($name),
            bf16_tflops: $bf16,
            fp8_tflops: $fp8,
            fp32_tflops: $fp32,
            memory_gbps: $mem,
            host_gbps: $host,
            peer_gbps: $peer,
            memory_gib: $gib,
            sms: $sms,
        }
    };
}

/// The cards `--device` knows.
#[rustfmt::skip]
pub fn known_devices() -> Vec<DeviceProfile> {
    vec![
        //        name            bf16    fp8     fp32  mem GB/s host peer  GiB    SMs
        profile!("h100",          989.0, 1979.0,  67.0, 3350.0, 50.0, 450.0,  79.6, 132),
        profile!("h200",          989.0, 1979.0,  67.0, 4800.0, 50.0, 450.0, 141.0, 132),
        profile!("a100",          312.0,  312.0,  19.5, 2039.0, 25.0, 300.0,  80.0, 108),
        profile!("l40s",          362.0,  733.0,  91.6,  864.0, 25.0,  25.0,  48.0, 142),
        profile!("rtx4090",       165.0,  330.0,  82.6, 1008.0, 25.0,  25.0,  24.0, 128),
        profile!("rtx4060ti-16g",  44.0,   88.0,  22.1,  288.0, 12.0,  12.0,  16.0,  34),
        profile!("rtx5060ti-16g",  47.0,   95.0,  23.7,  448.0, 25.0,  25.0,  16.0,  36),
        profile!("rtx5090",       209.0,  419.0, 104.8, 1792.0, 50.0,  50.0,  32.0, 170),
    ]
}

/// Looks a card up by name.
pub fn device(name: &str) -> Option<DeviceProfile> {
    known_devices().into_iter().find(|d| d.name == name)
}

/// The numeric recipe of a plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Precision {
    /// LLMQ's recipe: block matmuls in e4m3 with per-tensor abs-max scales, BF16 elsewhere.
    Fp8,
    /// BF16 weights and activations, FP32 master weights and moments.
    Bf16,
    /// Everything in FP32: the reference for numerical tests.
    Fp32,
}

impl Precision {
    /// The flag value (`fp8`, `bf16`, `fp32`).
    pub fn name(self) -> &'static str {
        match self {
            Precision::Fp8 => "fp8",
            Precision::Bf16 => "bf16",
            Precision::Fp32 => "fp32",
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Precision {
    type Err = String;

    /// The flag value: `fp8`, `bf16` or `fp32`.
    fn from_str(s: &str) -> Result<Self, String> {
        [Precision::Fp8, Precision::Bf16, Precision::Fp32]
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| format!("unknown precision `{s}`: use fp8, bf16 or fp32"))
    }
}

/// Parses the FP8 format of gradients (`--grad-fp8`): `e4m3` or `e5m2`.
pub fn parse_grad_fp8(s: &str) -> Result<DType, String> {
    DType::from_name(s)
        .filter(|d| d.is_fp8())
        .ok_or_else(|| format!("unknown gradient format `{s}`: use e4m3 or e5m2"))
}

/// Parses a byte size: `16G`, `16GiB`, `24000M`, `512MiB`, `1.5T`, or plain bytes. `G`, `GB`
/// and `GiB` all mean 2³⁰ bytes, as cards are sold in binary gigabytes.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a size (try 16G, 24GiB or 24000M)"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        other => {
            return Err(format!(
                "unknown size unit `{other}` in `{text}` (use K, M, G or T)"
            ));
        }
    };
    Ok((value * (1u64 << shift) as f64).round() as u64)
}

/// Formats bytes in GiB/MiB for tables.
pub fn format_bytes(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= (1u64 << 30) as f64 {
        format!("{:.2} GiB", b / (1u64 << 30) as f64)
    } else if b >= (1u64 << 20) as f64 {
        format!("{:.1} MiB", b / (1u64 << 20) as f64)
    } else if b >= 1024.0 {
        format!("{:.1} KiB", b / 1024.0)
    } else {
        format!("{bytes} B")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precisions_and_gradient_formats_parse_from_their_flag_values() {
        for p in [Precision::Fp8, Precision::Bf16, Precision::Fp32] {
            assert_eq!(p.name().parse::<Precision>(), Ok(p));
        }
        assert!(
            "fp16"
                .parse::<Precision>()
                .unwrap_err()
                .contains("fp8, bf16 or fp32")
        );
        assert_eq!(parse_grad_fp8("e5m2"), Ok(DType::F8E5M2));
        assert!(parse_grad_fp8("bf16").is_err());
    }

    #[test]
    fn sizes_in_the_usual_forms() {
        assert_eq!(parse_size("16G").unwrap(), 16 << 30);
        assert_eq!(parse_size("16GiB").unwrap(), 16 << 30);
        assert_eq!(parse_size("24000M").unwrap(), 24000 << 20);
        assert_eq!(parse_size("1.5G").unwrap(), 3 << 29);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("16Q").unwrap_err().contains("unknown size unit"));
        assert!(parse_size("lots").is_err());
    }

    #[test]
    fn every_card_the_cli_names_is_known() {
        for name in [
            "h100",
            "h200",
            "a100",
            "rtx4090",
            "rtx4060ti-16g",
            "rtx5060ti-16g",
            "rtx5090",
            "l40s",
        ] {
            assert!(device(name).is_some(), "{name} missing");
        }
    }
}
