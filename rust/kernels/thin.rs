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
}
