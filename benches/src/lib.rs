//! Benchmark support for Krisp: deterministic test signals. The benchmarks are in `benches/`.

/// Deterministic speech-like test signal (voiced harmonics plus noise), ±1.0 full scale.
pub fn test_signal(rate: u32, secs: f32) -> Vec<f32> {
    let n = (rate as f32 * secs) as usize;
    let mut seed = 0x9e37_79b9_u32;
    (0..n)
        .map(|i| {
            let t = i as f32 / rate as f32;
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let noise = (seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5;
            let f0 = 120.0 + 20.0 * (t * 3.0).sin();
            let voiced: f32 = (1..8)
                .map(|h| (2.0 * std::f32::consts::PI * f0 * h as f32 * t).sin() / h as f32)
                .sum();
            0.2 * voiced * (0.5 + 0.5 * (t * 4.0).sin()) + 0.05 * noise
        })
        .collect()
}
