//! Vectorisable elementwise math and run-time SIMD dispatch.
//!
//! `exp`, `tanh` and `sigmoid` from libm are scalar calls that block vectorisation (tanh ran at
//! 0.5 GB/s); these versions use only +, *, selects and bit casts, so loops over them vectorise.
//! `dispatch` runs a loop body compiled for AVX-512 or AVX2+FMA when the CPU has them (detected at
//! run time; the wheel itself targets baseline x86-64), else the baseline build.

const LOG2E: f32 = std::f32::consts::LOG2_E;
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;

/// e^x to ~1 ulp over the float range: Cephes range reduction x = n ln2 + r, degree-6 polynomial
/// for e^r, and 2^n applied in two factors so results in the subnormal range stay exact-ish.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let xc = x.clamp(-104.0, 89.0);
    // round to nearest via the 1.5 * 2^23 trick (vectorises without SSE4.1's roundps)
    // fused multiply-adds: one instruction each in the AVX2 / AVX-512 builds `dispatch` makes
    // (exp 16 -> 25 GB/s per thread). x86-64 CPUs without FMA (before 2013) and
    // BATCHGRAD_NO_SIMD take the baseline build, where they are libm's exact but slow fmaf.
    let t = xc.mul_add(LOG2E, 12_582_912.0);
    let n = t - 12_582_912.0;
    let r = (-n).mul_add(LN2_LO, (-n).mul_add(LN2_HI, xc));
    let r2 = r * r;
    let p = 1.987_569_1e-4f32.mul_add(r, 1.398_199_9e-3).mul_add(r, 8.333_452e-3).mul_add(r, 4.166_579_6e-2).mul_add(r, 1.666_666_5e-1).mul_add(r, 5.000_000_1e-1);
    let p = p.mul_add(r2, r) + 1.0;
    // n as an integer from t's bits (t = 1.5 * 2^23 + n): a float->int `as` cast saturates, which
    // does not vectorise; n is in [-151, 129] here (NaN is handled by the select below)
    let ni = t.to_bits() as i32 - 0x4B40_0000;
    let n1 = ni >> 1;
    let n2 = ni - n1;
    let s1 = f32::from_bits(((n1 + 127) as u32) << 23);
    let s2 = f32::from_bits(((n2 + 127) as u32) << 23);
    // no selects for the edges: x > 89 (and +inf) is clamped to 89, where p 2^128 overflows to
    // inf; below -104 p 2^-150 rounds to 0; NaN passes the clamp and propagates through p
    p * s1 * s2
}

/// out[i] = exp(x[i]) over two equal-length slices, bit-identical to `exp` element by element.
/// With AVX-512 the 2^n scaling is one `vscalefps` (exact, with overflow to inf and gradual
/// underflow) instead of `exp`'s two-factor integer construction, about half the instructions.
#[inline]
pub fn exp_into(out: &mut [f32], x: &[f32]) {
    assert_eq!(out.len(), x.len());
    #[cfg(target_arch = "x86_64")]
    if level() == 2 {
        // SAFETY: AVX-512F is available (checked at run time); both slices hold out.len() floats
        unsafe { x86::exp_avx512(out.as_mut_ptr(), x.as_ptr(), out.len()) };
        return;
    }
    dispatch(#[inline(always)] || out.iter_mut().zip(x).for_each(|(o, &x)| *o = exp(x)))
}

/// v[i] = exp(v[i]), as `exp_into`.
#[inline]
pub fn exp_inplace(v: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if level() == 2 {
        // SAFETY: AVX-512F is available; the kernel reads each vector before writing it back
        unsafe { x86::exp_avx512(v.as_mut_ptr(), v.as_ptr(), v.len()) };
        return;
    }
    dispatch(#[inline(always)] || v.iter_mut().for_each(|v| *v = exp(*v)))
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// `super::exp` on 16 lanes: the same clamp, reduction and polynomial (the same fused
    /// multiply-adds in the same order), then p 2^n by `vscalefps`. `exp` forms p 2^n as
    /// (p 2^n1) 2^n2, where the first product is exact, so both round once: the same bits.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn exp16(x: __m512) -> __m512 {
        // max(lo, x) / min(hi, .) return x when it is NaN (the second operand), as f32::clamp
        let xc = _mm512_min_ps(_mm512_set1_ps(89.0), _mm512_max_ps(_mm512_set1_ps(-104.0), x));
        let magic = _mm512_set1_ps(12_582_912.0);
        let t = _mm512_fmadd_ps(xc, _mm512_set1_ps(super::LOG2E), magic);
        let n = _mm512_sub_ps(t, magic);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(super::LN2_HI), xc);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(super::LN2_LO), r);
        let r2 = _mm512_mul_ps(r, r);
        let c = |v: f32| _mm512_set1_ps(v);
        let mut p = _mm512_fmadd_ps(c(1.987_569_1e-4), r, c(1.398_199_9e-3));
        p = _mm512_fmadd_ps(p, r, c(8.333_452e-3));
        p = _mm512_fmadd_ps(p, r, c(4.166_579_6e-2));
        p = _mm512_fmadd_ps(p, r, c(1.666_666_5e-1));
        p = _mm512_fmadd_ps(p, r, c(5.000_000_1e-1));
        let p = _mm512_add_ps(_mm512_fmadd_ps(p, r2, r), c(1.0));
        _mm512_scalef_ps(p, n)
    }

    macro_rules! burn {
        ($name:ident, $feat:literal, $t:ty, $lanes:expr, $set1:ident, $fma:ident, $store:ident) => {
            #[target_feature(enable = $feat)]
            pub unsafe fn $name(rounds: usize) -> (f64, f32) {
                let (m, c) = ($set1(0.999_999), $set1(1e-7));
                let mut a: [$t; 12] = [$set1(1.0); 12];
                for _ in 0..rounds {
                    for v in a.iter_mut() {
                        *v = $fma(*v, m, c);
                    }
                }
                let mut sum = 0.0f32;
                for v in a {
                    let mut lanes = [0.0f32; $lanes];
                    $store(lanes.as_mut_ptr(), v);
                    sum += lanes.iter().sum::<f32>();
                }
                (rounds as f64 * 12.0 * $lanes as f64 * 2.0, sum)
            }
        };
    }
    burn!(fma_burn_avx512, "avx512f", __m512, 16, _mm512_set1_ps, _mm512_fmadd_ps, _mm512_storeu_ps);
    burn!(fma_burn_avx2, "avx2,fma", __m256, 8, _mm256_set1_ps, _mm256_fmadd_ps, _mm256_storeu_ps);

    /// o[i] = exp(x[i]) for i < n; `o` may equal `x` (in place).
    #[target_feature(enable = "avx512f,avx512vl,avx512dq,avx2,fma")]
    pub unsafe fn exp_avx512(o: *mut f32, x: *const f32, n: usize) {
        let full = n / 16 * 16;
        let mut i = 0;
        while i < full {
            _mm512_storeu_ps(o.add(i), exp16(_mm512_loadu_ps(x.add(i))));
            i += 16;
        }
        for j in full..n {
            *o.add(j) = super::exp(*x.add(j));
        }
    }
}

/// tanh(x): odd rational approximation (Eigen's float coefficients) on [-7.9, 7.9], +-1 beyond.
#[inline(always)]
pub fn tanh(x: f32) -> f32 {
    let xc = x.clamp(-7.905_311, 7.905_311);
    let x2 = xc * xc;
    // Horner steps as fused multiply-adds (one instruction each in the SIMD builds)
    let p = (-2.760_768_5e-16f32)
        .mul_add(x2, 2.000_187_9e-13)
        .mul_add(x2, -8.604_671_5e-11)
        .mul_add(x2, 5.122_297e-8)
        .mul_add(x2, 1.485_722_4e-5)
        .mul_add(x2, 6.372_619_3e-4)
        .mul_add(x2, 4.893_524_6e-3)
        * xc;
    let q = 1.198_258_4e-6f32.mul_add(x2, 1.185_347_1e-4).mul_add(x2, 2.268_434_6e-3).mul_add(x2, 4.893_525_2e-3);
    let y = p / q;
    // at the clamp the fit (with FMAs) ends 2e-7 below 1: beyond it, the rounded +-1;
    // NaN passes the clamp and propagates through p / q
    if x.abs() < 4e-4 {
        x
    } else if x.abs() >= 7.905_311 {
        1f32.copysign(x)
    } else {
        y
    }
}

/// 1 / (1 + e^-x) with e = e^-|x| <= 1 (never overflows): s = 1/(1+e) for x >= 0, e*s below,
/// so tiny results (down to subnormals) keep their relative accuracy.
#[inline(always)]
pub fn sigmoid(x: f32) -> f32 {
    let e = exp(-x.abs());
    let s = 1.0 / (1.0 + e);
    if x >= 0.0 { s } else if x.is_nan() { x } else { e * s }
}

/// Run `body` compiled with the widest SIMD the CPU supports (the closure is inlined into each
/// target-feature copy, so its loops vectorise for that instruction set).
#[inline(always)]
pub fn dispatch<R>(body: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f,avx512vl,avx512dq,avx2,fma")]
        unsafe fn avx512<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        if level() == 2 {
            // SAFETY: the CPU supports AVX-512F/VL/DQ (checked at run time)
            return unsafe { avx512(body) };
        }
        if level() == 1 {
            // SAFETY: the CPU supports AVX2 and FMA (checked at run time)
            return unsafe { avx2(body) };
        }
    }
    body()
}

/// 2 = AVX-512, 1 = AVX2+FMA, 0 = baseline (cached).
pub fn level() -> u8 {
    use std::sync::atomic::{AtomicU8, Ordering};
    static L: AtomicU8 = AtomicU8::new(255);
    let l = L.load(Ordering::Relaxed);
    if l != 255 {
        return l;
    }
    #[allow(unused_mut)]
    let mut v = 0u8;
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512vl") && std::arch::is_x86_feature_detected!("avx512dq") {
            v = 2;
        } else if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            v = 1;
        }
    }
    if std::env::var_os("BATCHGRAD_NO_SIMD").is_some() {
        v = 0;
    }
    L.store(v, Ordering::Relaxed);
    v
}

/// Outputs of at least this many bytes are written with non-temporal stores (`fill_streamed`):
/// 3/4 of the last-level cache, the threshold glibc's memcpy uses for the same choice. Such an
/// output cannot stay in cache, so its next reader fetches it from memory anyway.
pub fn stream_min_bytes() -> usize {
    static B: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *B.get_or_init(|| {
        let llc = (0..8)
            .filter_map(|i| {
                let dir = format!("/sys/devices/system/cpu/cpu0/cache/index{i}");
                let level: u32 = std::fs::read_to_string(format!("{dir}/level")).ok()?.trim().parse().ok()?;
                let size = std::fs::read_to_string(format!("{dir}/size")).ok()?;
                let size = size.trim();
                let (num, mult) = match size.strip_suffix('K') {
                    Some(k) => (k, 1usize << 10),
                    None => match size.strip_suffix('M') {
                        Some(m) => (m, 1 << 20),
                        None => (size, 1),
                    },
                };
                Some((level, num.parse::<usize>().ok()? * mult))
            })
            .max()
            .map(|(_, b)| b)
            .unwrap_or(32 << 20);
        llc / 4 * 3
    })
}

/// Whether an output of `n` floats is written with non-temporal stores.
#[inline]
pub fn streams(n: usize) -> bool {
    n.saturating_mul(4) >= stream_min_bytes()
}

const STREAM_BLOCK: usize = 2048;

/// Fill `out` by blocks: `fill(block, start)` writes `out[start..start + block.len()]` into a
/// small scratch block that stays in L1, which is then written out with non-temporal stores.
/// Regular stores first read each output cache line from memory (read-for-ownership), so a map
/// over an output larger than the cache moves 12 bytes per float instead of 8 (a copy by
/// `memcpy`, which streams, reaches 1.5x the bandwidth of a naive map). Call it inside
/// `dispatch` so the fill loop is compiled for the CPU's SIMD.
#[inline(always)]
pub fn fill_streamed(out: &mut [f32], mut fill: impl FnMut(&mut [f32], usize)) {
    #[cfg(target_arch = "x86_64")]
    {
        #[repr(align(64))]
        struct Scratch([f32; STREAM_BLOCK]);
        let mut tmp = Scratch([0.0; STREAM_BLOCK]);
        // up to the first 64-byte boundary with plain stores
        let head = out.as_ptr().align_offset(64).min(out.len());
        fill(&mut out[..head], 0);
        let mut s = head;
        while s < out.len() {
            let n = (out.len() - s).min(STREAM_BLOCK);
            fill(&mut tmp.0[..n], s);
            stream_copy(&mut out[s..s + n], &tmp.0[..n]);
            s += n;
        }
        // SAFETY: sfence is SSE (baseline x86-64); it orders the streamed stores before later ones
        unsafe { std::arch::x86_64::_mm_sfence() };
    }
    #[cfg(not(target_arch = "x86_64"))]
    fill(out, 0);
}

/// dst = src with non-temporal stores; dst starts on a 64-byte boundary.
#[cfg(target_arch = "x86_64")]
#[inline]
fn stream_copy(dst: &mut [f32], src: &[f32]) {
    use std::arch::x86_64::*;
    debug_assert_eq!(dst.len(), src.len());
    debug_assert_eq!(dst.as_ptr() as usize % 64, 0);
    let full = dst.len() / 16 * 16;
    #[target_feature(enable = "avx512f")]
    unsafe fn wide(d: *mut f32, s: *const f32, n: usize) {
        for i in (0..n).step_by(16) {
            _mm512_stream_ps(d.add(i), _mm512_loadu_ps(s.add(i)));
        }
    }
    // SAFETY: both ranges hold `full` floats; dst + i is 64-byte aligned for every i multiple of
    // 16 (16-byte alignment suffices for the SSE stores); AVX-512 is used only when detected.
    unsafe {
        let (d, s) = (dst.as_mut_ptr(), src.as_ptr());
        if level() == 2 {
            wide(d, s, full);
        } else {
            for i in (0..full).step_by(4) {
                _mm_stream_ps(d.add(i), _mm_loadu_ps(s.add(i)));
            }
        }
    }
    dst[full..].copy_from_slice(&src[full..]);
}

#[cfg(test)]
mod tests {
    use super::*;
    fn ulps(a: f32, b: f64) -> f64 {
        if b == 0.0 {
            return (a as f64).abs() / f32::MIN_POSITIVE as f64;
        }
        ((a as f64 - b) / b).abs() / f32::EPSILON as f64
    }
    #[test]
    fn exp_is_accurate_everywhere() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.7 {
            worst = worst.max(ulps(exp(x), (x as f64).exp()));
            x += 0.0137;
        }
        assert!(worst < 3.0, "worst {worst} ulp");
        assert_eq!(exp(100.0), f32::INFINITY);
        assert_eq!(exp(f32::INFINITY), f32::INFINITY);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(-1e4), 0.0);
        assert!(exp(f32::NAN).is_nan());
        let sub = exp(-100.0) as f64;
        assert!((sub - (-100f64).exp()).abs() < 1e-45 * 4.0);
    }
    #[test]
    fn tanh_and_sigmoid_are_accurate() {
        let mut worst = 0f64;
        let mut x = -12.0f32;
        while x < 12.0 {
            worst = worst.max(ulps(tanh(x), (x as f64).tanh()));
            x += 0.00731;
        }
        assert!(worst < 4.0, "tanh worst {worst} ulp");
        assert_eq!(tanh(1e4), 1.0);
        assert_eq!(tanh(-1e4), -1.0);
        assert!(tanh(f32::NAN).is_nan());
        let mut worst = 0f64;
        let mut x = -80.0f32;
        while x < 80.0 {
            let r = 1.0 / (1.0 + (-(x as f64)).exp());
            worst = worst.max(ulps(sigmoid(x), r));
            x += 0.0173;
        }
        assert!(worst < 4.0, "sigmoid worst {worst} ulp");
        assert_eq!(sigmoid(1e4), 1.0);
        assert_eq!(sigmoid(-1e4), 0.0);
    }
    #[test]
    fn fill_streamed_writes_every_element_at_any_alignment() {
        let src: Vec<f32> = (0..10_000).map(|i| i as f32 * 0.5 - 7.0).collect();
        for off in 0..17 {
            for len in [0, 1, 15, 16, 17, 2047, 2048, 2049, 5000, 9000] {
                let mut buf = vec![f32::NAN; off + len];
                let out = &mut buf[off..];
                fill_streamed(out, |blk, s| blk.iter_mut().zip(&src[s..]).for_each(|(o, &x)| *o = x.max(0.0)));
                let want: Vec<f32> = src[..len].iter().map(|x| x.max(0.0)).collect();
                assert_eq!(&buf[off..], &want[..], "off {off} len {len}");
            }
        }
    }
    #[test]
    fn exp_into_is_bit_identical_to_exp() {
        // every lane path (vector body, scalar tail) against the scalar function, over the whole
        // range including overflow, gradual underflow, infinities and NaN
        let mut xs: Vec<f32> = (0..200_000).map(|i| -110.0 + i as f32 * 0.001_013).collect();
        xs.extend([f32::INFINITY, f32::NEG_INFINITY, f32::NAN, -f32::NAN, 0.0, -0.0, 88.72, 88.73, 89.5, -103.9, -104.5, 1e-30, -1e-30]);
        let mut out = vec![0f32; xs.len()];
        exp_into(&mut out, &xs);
        let mut inplace = xs.clone();
        exp_inplace(&mut inplace);
        assert!(out.iter().zip(&inplace).all(|(a, b)| a.to_bits() == b.to_bits()));
        for (&x, &o) in xs.iter().zip(&out) {
            let want = exp(x);
            assert!(o.to_bits() == want.to_bits() || (o.is_nan() && want.is_nan()), "exp({x}) = {o}, scalar {want}");
        }
    }
}

/// Single-precision flops one thread sustains on fused multiply-adds alone (no memory traffic):
/// `rounds` rounds of 12 independent FMA chains on the widest vectors the CPU has (12 chains
/// cover the FMA latency times the FMA ports of current x86 cores). The benchmarks divide GEMM
/// and training-step GFLOP/s by this figure, measured in the same run. Returns (flops, checksum);
/// the checksum keeps the chains from being optimised away.
pub fn fma_burn(rounds: usize) -> (f64, f32) {
    #[cfg(target_arch = "x86_64")]
    {
        if level() == 2 {
            // SAFETY: the CPU supports AVX-512F (checked at run time)
            return unsafe { x86::fma_burn_avx512(rounds) };
        }
        if level() == 1 {
            // SAFETY: the CPU supports AVX2 and FMA (checked at run time)
            return unsafe { x86::fma_burn_avx2(rounds) };
        }
    }
    let mut acc = [1.0f32; 12];
    for _ in 0..rounds {
        for a in acc.iter_mut() {
            *a = std::hint::black_box(*a).mul_add(0.999_999, 1e-7);
        }
    }
    (rounds as f64 * 12.0 * 2.0, acc.iter().sum())
}
