//! Shared by the criterion benches (`mod common;` in each): deterministic inputs and the config.
use std::time::Duration;

use criterion::Criterion;

/// `n` deterministic pseudo-random floats, uniform in [-scale/2, scale/2).
pub fn lcg(seed: u64, n: usize, scale: f32) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5) * scale
        })
        .collect()
}

/// Measurement time from `BENCH_SECS` (default 1 s), no plots, command-line overrides last.
pub fn config() -> Criterion {
    let secs: f64 = std::env::var("BENCH_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(1.0);
    Criterion::default()
        .warm_up_time(Duration::from_secs_f64((secs / 3.0).max(0.1)))
        .measurement_time(Duration::from_secs_f64(secs))
        .without_plots()
        .configure_from_args()
}
