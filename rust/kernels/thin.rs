//! Thin products: `C = alpha*C + beta*op(A) op(B)` when the inner dimension is small
//! (k <= THIN_K = 1: the weight gradient Xᵀ G at batch 1, an outer product).
//!
//! These shapes are memory-bound (each element of the big operand is used a handful of times),
//! so the kernels stream the big operand once, keep the small accumulator in L1 and are
//! compiled for the CPU's widest SIMD by `simd::dispatch`. A packed GEMM spends more on packing
//! than on arithmetic here; `benches/kernels.rs` (group `gemm_thin`) measures these shapes.
//!
//! Every output element is summed over k in a fixed order, so results do not depend on the
//! thread count.
use super::simd::level;

pub const THIN_K: usize = 1;

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

/// How the product lands in the output: `C = beta*P` (overwrite) or `C = alpha*C + beta*P`.
#[derive(Clone, Copy, PartialEq, Debug)]
pub struct Epilogue {
    pub accumulate: bool,
    pub alpha: f32,
    pub beta: f32,
}

impl Epilogue {
    pub const STORE: Epilogue = Epilogue { accumulate: false, alpha: 0.0, beta: 1.0 };
}

#[inline(always)]
fn finish(dst: &mut [f32], p: &[f32], e: Epilogue) {
    if !e.accumulate {
        if e.beta == 1.0 {
            dst.copy_from_slice(p);
        } else {
            dst.iter_mut().zip(p).for_each(|(d, &v)| *d = e.beta * v);
        }
    } else if e.alpha == 1.0 {
        dst.iter_mut().zip(p).for_each(|(d, &v)| *d += e.beta * v);
    } else {
        dst.iter_mut().zip(p).for_each(|(d, &v)| *d = e.alpha * *d + e.beta * v);
    }
}

/// Whether the thin kernel takes this product: a small inner dimension with B's rows contiguous.
/// (Few-row products stay with the packed GEMM, which measured as fast or faster there.)
pub fn applies(k: usize, b: &View) -> bool {
    k <= THIN_K && b.cs == 1
}

/// C (m x n, row-major, `dst`) = epilogue(op(A) (m x k) · op(B) (k x n)); see `applies`.
pub fn product(dst: &mut [f32], a: &View, b: &View, m: usize, k: usize, n: usize, e: Epilogue) {
    debug_assert_eq!(dst.len(), m * n);
    let rows = (8192 / n.max(1)).clamp(1, m.max(1));
    SCRATCH.with(|sc| {
        let mut sc = sc.borrow_mut();
        if sc.len() < rows * n {
            sc.resize(rows * n, 0.0);
        }
        let acc = &mut sc[..rows * n];
        // explicit target-feature copies: the kernel is too big for `simd::dispatch`'s closure
        // to be inlined into its feature-enabled frame
        #[cfg(target_arch = "x86_64")]
        {
            #[target_feature(enable = "avx512f,avx512vl,avx512dq,avx2,fma")]
            unsafe fn avx512(dst: &mut [f32], acc: &mut [f32], a: &View, b: &View, m: usize, k: usize, n: usize, e: Epilogue) {
                kernel(dst, acc, a, b, m, k, n, e)
            }
            #[target_feature(enable = "avx2,fma")]
            unsafe fn avx2(dst: &mut [f32], acc: &mut [f32], a: &View, b: &View, m: usize, k: usize, n: usize, e: Epilogue) {
                kernel(dst, acc, a, b, m, k, n, e)
            }
            match level() {
                // SAFETY: the CPU has these features (checked at run time by `level`)
                2 => return unsafe { avx512(dst, acc, a, b, m, k, n, e) },
                1 => return unsafe { avx2(dst, acc, a, b, m, k, n, e) },
                _ => {}
            }
        }
        kernel(dst, acc, a, b, m, k, n, e)
    })
}

thread_local! {
    /// Per-thread accumulator block, reused across calls (no allocation per product).
    static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn kernel(dst: &mut [f32], acc: &mut [f32], a: &View, b: &View, m: usize, k: usize, n: usize, e: Epilogue) {
    axpy_rows(dst, acc, a, b, m, k, n, e)
}

/// B's rows contiguous: each block of output rows accumulates `a(r,p) * B[p,:]` over p, with B
/// streamed once per block and the block's accumulator (`acc`) in L1.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn axpy_rows(dst: &mut [f32], acc: &mut [f32], a: &View, b: &View, m: usize, k: usize, n: usize, e: Epilogue) {
    let rows = acc.len() / n.max(1);
    let direct = !e.accumulate && e.beta == 1.0;
    for r0 in (0..m).step_by(rows.max(1)) {
        let r1 = (r0 + rows).min(m);
        let out = &mut dst[r0 * n..r1 * n];
        if e.accumulate && k == 1 {
            // rank-1 update in one pass: C = alpha*C + (beta*a) * B[0,:]
            let brow = b.row(0, n);
            for (i, orow) in out.chunks_exact_mut(n).enumerate() {
                let av = e.beta * a.at(r0 + i, 0);
                if e.alpha == 1.0 {
                    orow.iter_mut().zip(brow).for_each(|(o, &bv)| *o += av * bv);
                } else {
                    orow.iter_mut().zip(brow).for_each(|(o, &bv)| *o = e.alpha * *o + av * bv);
                }
            }
            continue;
        }
        // the plain product accumulates straight into the output block; epilogues go via `acc`
        let (acc, out): (&mut [f32], Option<&mut [f32]>) = if direct { (out, None) } else { (&mut acc[..(r1 - r0) * n], Some(out)) };
        for p in 0..k {
            let brow = b.row(p, n);
            for (i, arow) in acc.chunks_exact_mut(n).enumerate() {
                let av = a.at(r0 + i, p);
                if p == 0 {
                    arow.iter_mut().zip(brow).for_each(|(o, &bv)| *o = av * bv);
                } else {
                    arow.iter_mut().zip(brow).for_each(|(o, &bv)| *o += av * bv);
                }
            }
        }
        if let Some(out) = out {
            finish(out, acc, e);
        }
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
                product(&mut c, &av, &b, m, k, n, Epilogue::STORE);
                for (x, y) in c.iter().zip(&want) {
                    assert!((*x as f64 - y).abs() < 1e-4, "({m},{k},{n}): {x} vs {y}");
                }
                // accumulate: C = 2 C - 0.25 P
                let mut c = vec![0.5f32; m * n];
                product(&mut c, &av, &b, m, k, n, Epilogue { accumulate: true, alpha: 2.0, beta: -0.25 });
                for (x, y) in c.iter().zip(&want) {
                    assert!((*x as f64 - (1.0 - 0.25 * y)).abs() < 1e-4);
                }
            }
        }
    }
}
