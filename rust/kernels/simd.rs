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
    let y = p * s1 * s2;
    if x > 88.722_84 {
        f32::INFINITY
    } else if x < -103.972_08 {
        0.0
    } else if x.is_nan() {
        x
    } else {
        y
    }
}

/// tanh(x): odd rational approximation (Eigen's float coefficients) on [-7.9, 7.9], +-1 beyond.
#[inline(always)]
pub fn tanh(x: f32) -> f32 {
    let xc = x.clamp(-7.905_311, 7.905_311);
    let x2 = xc * xc;
    let p = ((((((-2.760_768_5e-16 * x2 + 2.000_187_9e-13) * x2 - 8.604_671_5e-11) * x2 + 5.122_297e-8) * x2 + 1.485_722_4e-5) * x2
        + 6.372_619_3e-4)
        * x2
        + 4.893_524_6e-3)
        * xc;
    let q = ((1.198_258_4e-6 * x2 + 1.185_347_1e-4) * x2 + 2.268_434_6e-3) * x2 + 4.893_525_2e-3;
    let y = p / q;
    if x.abs() < 4e-4 {
        x
    } else if x.is_nan() {
        x
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
}
