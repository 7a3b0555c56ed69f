//! A counter-based random generator: value `i` of stream `(seed, stream)` is a pure function of
//! the three, so initialisation and stochastic rounding are reproducible on any backend, in any
//! order, and resumable without saved state. SplitMix64's finaliser mixes the counter.

/// One 64-bit random word for position `index` of stream `stream` under `seed`.
pub fn word(seed: u64, stream: u64, index: u64) -> u64 {
    let mut z = seed
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(stream.wrapping_mul(0xD1B5_4A32_D192_ED03))
        .wrapping_add(index.wrapping_mul(0xBF58_476D_1CE4_E5B9))
        .wrapping_add(0x94D0_49BB_1331_11EB);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A uniform value in the open interval (0, 1).
pub fn uniform(seed: u64, stream: u64, index: u64) -> f64 {
    ((word(seed, stream, index) >> 11) as f64 + 0.5) / (1u64 << 53) as f64
}

/// A standard normal value (Box–Muller over two counters).
pub fn normal(seed: u64, stream: u64, index: u64) -> f64 {
    let u1 = uniform(seed, stream, 2 * index);
    let u2 = uniform(seed, stream, 2 * index + 1);
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}
