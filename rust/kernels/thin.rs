//! Outer products: `C = alpha*C + beta * a bᵀ` for an inner dimension of 1 (the weight gradient
//! Xᵀ G at batch 1). Memory-bound: each output row is one scaled copy (or axpy) of B's single row,
//! streamed once, compiled for the CPU's widest SIMD by `simd::dispatch`. The packed GEMM spends
//! more on packing than on arithmetic here (`benches/kernels.rs`, group `gemm_thin`: 784x1x256
//! 12.9 us vs the crate's ~16 us); from k = 2 on the crate was as fast or faster, so it keeps them.
//!
//! Every output element is one product, so results do not depend on the thread count.
use super::simd::dispatch;

/// A strided matrix view: element (r, c) at `off + r*rs + c*cs`.
#[derive(Clone, Copy)]
pub struct View<'a> {
    pub data: &'a [f32],
    pub off: usize,
    pub rs: isize,
    pub cs: isize,
}

impl View<'_> {
    #[inline(always)]
    fn at(&self, r: usize, c: usize) -> f32 {
        self.data[(self.off as isize + r as isize * self.rs + c as isize * self.cs) as usize]
    }
    #[inline(always)]
    fn row(&self, r: usize, len: usize) -> &[f32] {
        let s = (self.off as isize + r as isize * self.rs) as usize;
        &self.data[s..s + len]
    }
}

/// How a product lands in the output: `C = beta*P` (overwrite) or `C = alpha*C + beta*P`.
#[derive(Clone, Copy, PartialEq, Debug)]
pub struct Epilogue {
    pub accumulate: bool,
    pub alpha: f32,
    pub beta: f32,
}

impl Epilogue {
    pub const STORE: Epilogue = Epilogue { accumulate: false, alpha: 0.0, beta: 1.0 };
}

/// Whether `product` takes this product: inner dimension 1 with B's row contiguous.
pub fn applies(k: usize, b: &View) -> bool {
    k == 1 && b.cs == 1
}

/// C (m x n, row-major, `dst`) = epilogue(op(A) (m x 1) · op(B) (1 x n)); see `applies`.
pub fn product(dst: &mut [f32], a: &View, b: &View, m: usize, n: usize, e: Epilogue) {
    debug_assert_eq!(dst.len(), m * n);
    let brow = b.row(0, n);
    dispatch(#[inline(always)] || {
        for (r, orow) in dst.chunks_exact_mut(n).enumerate() {
            let av = e.beta * a.at(r, 0);
            match (e.accumulate, e.alpha == 1.0) {
                (false, _) => orow.iter_mut().zip(brow).for_each(|(o, &bv)| *o = av * bv),
                (true, true) => orow.iter_mut().zip(brow).for_each(|(o, &bv)| *o += av * bv),
                (true, false) => orow.iter_mut().zip(brow).for_each(|(o, &bv)| *o = e.alpha * *o + av * bv),
            }
        }
    })
}

/// Whether `vm_product` takes this product: one row times a matrix of at least 32 contiguous
/// columns, on a CPU with AVX-512 (elsewhere the gemm crate's matrix-vector path runs). With 2-4
/// rows (half-width column tiles) and with fewer columns (too few independent accumulators) the
/// crate was as fast or faster.
pub fn vm_applies(m: usize, k: usize, n: usize, b: &View) -> bool {
    m == 1 && k >= 2 && n >= 32 && b.cs == 1 && super::simd::level() == 2
}

/// c (1 x n) = epilogue(a (1 x k) · B (k x n)) with B's rows contiguous (the forward product x W
/// at batch 1): a streamed vector-matrix product. The accumulators of a 256-column tile stay in
/// 16 AVX-512 registers while B's rows stream past once, so B is read once at cache bandwidth
/// with no packing (1x784x256: ~10 us vs the crate's ~14). Each output element is a sum over k in
/// order (fused multiply-adds), so the result does not depend on the thread count.
pub fn vm_product(dst: &mut [f32], a: &View, b: &View, k: usize, n: usize, e: Epilogue) {
    assert!(vm_applies(1, k, n, b) && dst.len() == n);
    #[cfg(target_arch = "x86_64")]
    // SAFETY: AVX-512F is present (vm_applies); every load and store is inside `a`, `b` or `dst`
    // (masked for the last partial vector of a row)
    unsafe {
        vm_avx512::<1, 16>(dst, a, b, k, n, e)
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn vm_avx512<const M: usize, const NV: usize>(dst: &mut [f32], a: &View, b: &View, k: usize, n: usize, e: Epilogue) {
    use std::arch::x86_64::*;
    let (ap, bp, dp) = (a.data.as_ptr(), b.data.as_ptr(), dst.as_mut_ptr());
    let a_at = |r: usize, p: usize| *ap.offset(a.off as isize + r as isize * a.rs + p as isize * a.cs);
    let mut j0 = 0;
    while j0 < n {
        let cols = (n - j0).min(16 * NV);
        let mut mask = [0u16; NV];
        for (v, mk) in mask.iter_mut().enumerate() {
            let left = cols.saturating_sub(16 * v);
            *mk = if left >= 16 { 0xFFFF } else { ((1u32 << left) - 1) as u16 };
        }
        let mut acc = [[_mm512_setzero_ps(); NV]; M];
        for p in 0..k {
            let row = bp.offset(b.off as isize + p as isize * b.rs).add(j0);
            let mut bv = [_mm512_setzero_ps(); NV];
            for v in 0..NV {
                bv[v] = _mm512_maskz_loadu_ps(mask[v], row.add(16 * v));
            }
            for r in 0..M {
                let av = _mm512_set1_ps(a_at(r, p));
                for v in 0..NV {
                    acc[r][v] = _mm512_fmadd_ps(av, bv[v], acc[r][v]);
                }
            }
        }
        let (alpha, beta) = (_mm512_set1_ps(e.alpha), _mm512_set1_ps(e.beta));
        for r in 0..M {
            for v in 0..NV {
                if mask[v] == 0 {
                    continue;
                }
                let o = dp.add(r * n + j0 + 16 * v);
                let y = if e.accumulate {
                    _mm512_fmadd_ps(alpha, _mm512_maskz_loadu_ps(mask[v], o), _mm512_mul_ps(beta, acc[r][v]))
                } else {
                    _mm512_mul_ps(beta, acc[r][v])
                };
                _mm512_mask_storeu_ps(o, mask[v], y);
            }
        }
        j0 += cols;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: &View, b: &View, m: usize, k: usize, n: usize) -> Vec<f64> {
        let mut c = vec![0f64; m * n];
        for r in 0..m {
            for j in 0..n {
                c[r * n + j] = (0..k).map(|p| a.at(r, p) as f64 * b.at(p, j) as f64).sum();
            }
        }
        c
    }

    #[test]
    fn thin_products_match_naive() {
        let mut seed = 1u32;
        let mut rnd = || {
            seed = seed.wrapping_mul(1664525).wrapping_add(1013904223);
            (seed >> 8) as f32 / (1 << 24) as f32 - 0.5
        };
        for &(m, k, n) in &[(1, 1, 256), (3, 1, 5), (784, 1, 10), (300, 1, 77), (5, 1, 33), (2, 1, 1)] {
            let a: Vec<f32> = (0..m * k).map(|_| rnd()).collect();
            let bt: Vec<f32> = (0..k * n).map(|_| rnd()).collect();
            let av = View { data: &a, off: 0, rs: k as isize, cs: 1 };
            // B as stored (k, n) and as Wᵀ of a stored (n, k)
            let b_nn = View { data: &bt, off: 0, rs: n as isize, cs: 1 };
            let w: Vec<f32> = (0..n * k).map(|i| bt[(i % k) * n + i / k]).collect();
            let b_nt = View { data: &w, off: 0, rs: 1, cs: k as isize };
            let want = naive(&av, &b_nn, m, k, n);
            for b in [b_nn, b_nt] {
                if !applies(k, &b) {
                    continue;
                }
                let mut c = vec![0.5f32; m * n];
                product(&mut c, &av, &b, m, n, Epilogue::STORE);
                for (x, y) in c.iter().zip(&want) {
                    assert!((*x as f64 - y).abs() < 1e-4, "({m},{k},{n}): {x} vs {y}");
                }
                // accumulate: C = 2 C - 0.25 P
                let mut c = vec![0.5f32; m * n];
                product(&mut c, &av, &b, m, n, Epilogue { accumulate: true, alpha: 2.0, beta: -0.25 });
                for (x, y) in c.iter().zip(&want) {
                    assert!((*x as f64 - (1.0 - 0.25 * y)).abs() < 1e-4);
                }
            }
        }
    }

    #[test]
    fn vm_product_matches_naive() {
        if super::super::simd::level() != 2 {
            return; // the crate's path runs instead (tested through matmul)
        }
        let mut seed = 7u32;
        let mut rnd = || {
            seed = seed.wrapping_mul(1664525).wrapping_add(1013904223);
            (seed >> 8) as f32 / (1 << 24) as f32 - 0.5
        };
        // full tiles, partial vectors, several tiles with a ragged last one
        for &(k, n) in &[(784, 256), (3, 32), (17, 47), (64, 300), (2, 513)] {
            let a: Vec<f32> = (0..2 * k).map(|_| rnd()).collect();
            let bm: Vec<f32> = (0..k * n + 5).map(|_| rnd()).collect();
            // a as a contiguous row and as a strided column of a (k x 2) matrix; B offset by 5
            for av in [View { data: &a, off: 0, rs: k as isize, cs: 1 }, View { data: &a, off: 1, rs: 1, cs: 2 }] {
                let b = View { data: &bm, off: 5, rs: n as isize, cs: 1 };
                assert!(vm_applies(1, k, n, &b));
                let want = naive(&av, &b, 1, k, n);
                let mut c = vec![0.5f32; n];
                vm_product(&mut c, &av, &b, k, n, Epilogue::STORE);
                for (x, y) in c.iter().zip(&want) {
                    assert!((*x as f64 - y).abs() < 1e-4, "(1,{k},{n}): {x} vs {y}");
                }
                let mut c = vec![0.5f32; n];
                vm_product(&mut c, &av, &b, k, n, Epilogue { accumulate: true, alpha: 2.0, beta: -0.25 });
                for (x, y) in c.iter().zip(&want) {
                    assert!((*x as f64 - (1.0 - 0.25 * y)).abs() < 1e-4);
                }
            }
        }
    }
}
