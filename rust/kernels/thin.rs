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

    /// Land one product element `x` in `*o`.
    #[inline(always)]
    fn apply(self, o: &mut f32, x: f32) {
        *o = if !self.accumulate { self.beta * x } else if self.alpha == 1.0 { *o + self.beta * x } else { self.alpha * *o + self.beta * x };
    }
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

/// Run `run(first_row, rows_of_dst)` over C (m x n): in the pool for large products, one run of
/// whole `rb`-row blocks per thread, else once over all of C. A row's values never depend on the
/// split, so results do not depend on the thread count.
fn by_row_blocks(dst: &mut [f32], m: usize, n: usize, k: usize, rb: usize, run: impl Fn(usize, &mut [f32]) + Sync + Send) {
    let blocks = m.div_ceil(rb);
    let threads = super::num_threads();
    if 2 * m * n * k >= super::gemm::SPLIT_MIN_FLOPS && threads > 1 && blocks >= 2 {
        // one block of rows per thread on the spinning team
        let per = blocks.div_ceil(threads) * rb;
        let dp = super::gemm::SendPtr(dst.as_mut_ptr());
        let len = dst.len();
        super::run_blocks(m.div_ceil(per), |c| {
            let dp = &dp;
            let (r0, r1) = (c * per, ((c + 1) * per).min(m));
            // SAFETY: block c writes only its own rows r0..r1 of dst
            let out = unsafe { std::slice::from_raw_parts_mut(dp.0.add(r0 * n), (r1 - r0) * n) };
            debug_assert!(r1 * n <= len);
            run(r0, out);
        });
    } else {
        run(0, dst);
    }
}

/// Store one accumulator vector `c` into the `mk` lanes at `o` with the epilogue.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn store_epilogue(o: *mut f32, mk: u16, c: std::arch::x86_64::__m512, e: Epilogue) {
    use std::arch::x86_64::*;
    let (alpha, beta) = (_mm512_set1_ps(e.alpha), _mm512_set1_ps(e.beta));
    let y = if e.accumulate { _mm512_fmadd_ps(alpha, _mm512_maskz_loadu_ps(mk, o), _mm512_mul_ps(beta, c)) } else { _mm512_mul_ps(beta, c) };
    _mm512_mask_storeu_ps(o, mk, y);
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
        vm_avx512::<16>(dst, a, b, k, n, e)
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn vm_avx512<const NV: usize>(dst: &mut [f32], a: &View, b: &View, k: usize, n: usize, e: Epilogue) {
    use std::arch::x86_64::*;
    let (ap, bp, dp) = (a.data.as_ptr(), b.data.as_ptr(), dst.as_mut_ptr());
    let a_at = |p: usize| *ap.offset(a.off as isize + p as isize * a.cs);
    let mut j0 = 0;
    while j0 < n {
        let cols = (n - j0).min(16 * NV);
        let mut mask = [0u16; NV];
        for (v, mk) in mask.iter_mut().enumerate() {
            let left = cols.saturating_sub(16 * v);
            *mk = if left >= 16 { 0xFFFF } else { ((1u32 << left) - 1) as u16 };
        }
        let mut acc = [_mm512_setzero_ps(); NV];
        for p in 0..k {
            let row = bp.offset(b.off as isize + p as isize * b.rs).add(j0);
            let av = _mm512_set1_ps(a_at(p));
            for (v, (c, &mk)) in acc.iter_mut().zip(&mask).enumerate() {
                *c = _mm512_fmadd_ps(av, _mm512_maskz_loadu_ps(mk, row.add(16 * v)), *c);
            }
        }
        for (v, (&c, &mk)) in acc.iter().zip(&mask).enumerate() {
            if mk != 0 {
                store_epilogue(dp.add(j0 + 16 * v), mk, c, e);
            }
        }
        j0 += cols;
    }
}

/// Whether `narrow_product` takes this product: A (m x k, rows contiguous) · B (k x n, rows
/// contiguous) with at most 16 output columns (the classifier head's forward x·W), on a CPU with
/// AVX-512.
pub fn narrow_applies(k: usize, n: usize, a: &View, b: &View) -> bool {
    (1..=16).contains(&n) && k >= 16 && a.cs == 1 && b.cs == 1 && super::simd::level() == 2
}

/// C (m x n) = epilogue(A · B) for n <= 16: a row of B is one (masked) vector, and 8 rows of A are
/// multiplied at once, each A element broadcast into its row's accumulator (8 independent FMA
/// chains; B, k x 16 floats at most, stays in L1). The packed GEMM's register tiles are mostly
/// padding at this width (32x256 @ 256x10: 3.7 us in the crate). Each element is a sum over k in
/// order (fused multiply-adds), so the result does not depend on the thread count (row blocks go
/// to threads whole).
pub fn narrow_product(dst: &mut [f32], a: &View, b: &View, m: usize, k: usize, n: usize, e: Epilogue) {
    assert!(narrow_applies(k, n, a, b) && dst.len() == m * n);
    let run = |i0: usize, out: &mut [f32]| {
        let rows = out.len() / n;
        let full = rows / 8 * 8;
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX-512F is present (narrow_applies); A rows i0..i0+rows and B rows 0..k lie
        // inside their views, B rows are read with a mask of n <= 16 lanes, stores inside `out`
        unsafe {
            for r in (0..full).step_by(8) {
                narrow_avx512::<8>(&mut out[r * n..], a, b, i0 + r, k, n, e);
            }
            for r in full..rows {
                narrow_avx512::<1>(&mut out[r * n..], a, b, i0 + r, k, n, e);
            }
        }
    };
    by_row_blocks(dst, m, n, k, 8, run);
}

/// R output rows (starting at A's row `i0`) of `narrow_product` into `out`'s first R rows.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn narrow_avx512<const R: usize>(out: &mut [f32], a: &View, b: &View, i0: usize, k: usize, n: usize, e: Epilogue) {
    use std::arch::x86_64::*;
    debug_assert!(out.len() >= R * n);
    let mk: u16 = ((1u32 << n) - 1) as u16;
    let (ap, bp) = (a.data.as_ptr(), b.data.as_ptr());
    let arow: [*const f32; R] = std::array::from_fn(|r| ap.offset(a.off as isize + (i0 + r) as isize * a.rs));
    let mut acc = [_mm512_setzero_ps(); R];
    for p in 0..k {
        let bv = _mm512_maskz_loadu_ps(mk, bp.offset(b.off as isize + p as isize * b.rs));
        for r in 0..R {
            acc[r] = _mm512_fmadd_ps(_mm512_set1_ps(*arow[r].add(p)), bv, acc[r]);
        }
    }
    for (r, &c) in acc.iter().enumerate() {
        store_epilogue(out.as_mut_ptr().add(r * n), mk, c, e);
    }
}

/// Widest output that `tn_product` takes (2 x 12 accumulator registers).
pub const TN_MAX_COLS: usize = 12;

/// Whether `tn_product` takes this product: Aᵀ (A stored k x m row-major, so op(A) has unit row
/// stride) times B (k x n, rows contiguous) with a narrow output, on a CPU with AVX-512.
pub fn tn_applies(m: usize, k: usize, n: usize, a: &View, b: &View) -> bool {
    (1..=TN_MAX_COLS).contains(&n) && m >= 16 && k >= 16 && a.rs == 1 && b.cs == 1 && super::simd::level() == 2
}

/// C (m x n) = epilogue(Aᵀ B) for a narrow n (the classifier head's weight gradient Hᵀ G:
/// 256 x 2048 · 2048 x 10). The packed GEMM spends most of its time packing Aᵀ for a few output
/// columns; here A's rows stream past unpacked: a tile of 32 output rows keeps its 32 x n sums in
/// registers (2 x n AVX-512 accumulators) while p runs over k in blocks that stay in L2. Tiles go
/// to threads whole, and each output element is a sum over k in order, so the result does not
/// depend on the thread count.
pub fn tn_product(dst: &mut [f32], a: &View, b: &View, m: usize, k: usize, n: usize, e: Epilogue) {
    assert!(tn_applies(m, k, n, a, b) && dst.len() == m * n);
    let tiles = m.div_ceil(32);
    // a task = a run of whole tiles; its rows of C are contiguous in `dst`
    let run = |t0: usize, t1: usize, out: &mut [f32]| {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX-512F is present (tn_applies); loads stay inside `a` / `b` (masked at the
        // last partial vector), stores inside `out`
        unsafe {
            macro_rules! go {
                ($($n:literal)*) => {
                    match n {
                        $($n => tn_avx512::<$n>(out, a, b, t0, t1, m, k, e),)*
                        _ => unreachable!(),
                    }
                };
            }
            go!(1 2 3 4 5 6 7 8 9 10 11 12)
        }
    };
    super::maybe_par(m * k * n / 4, |par| {
        if par && tiles >= 2 {
            use rayon::prelude::*;
            let per = tiles.div_ceil(super::num_threads().max(1) * 2).max(1);
            dst.par_chunks_mut(per * 32 * n).enumerate().for_each(|(c, out)| run(c * per, (c * per + per).min(tiles), out));
        } else {
            run(0, tiles, dst);
        }
    });
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn tn_avx512<const N: usize>(out: &mut [f32], a: &View, b: &View, t0: usize, t1: usize, m: usize, k: usize, e: Epilogue) {
    use std::arch::x86_64::*;
    // rows of A and B per block. A tile reads only its 128 bytes of each row, so a block's rows
    // are prefetched whole one block ahead: A then streams from memory once, in order, and the
    // tiles find their lines in cache (without it the first step of a training run, with A cold,
    // took 5x as long as with A warm)
    const PB: usize = 32;
    let (ap, bp) = (a.data.as_ptr(), b.data.as_ptr());
    let nt = t1 - t0;
    // the running sums of every tile of this task, [tile][vector][column] x 16 lanes
    let mut sums = vec![_mm512_setzero_ps(); nt * 2 * N];
    let masks: Vec<[u16; 2]> = (t0..t1)
        .map(|t| {
            let mk = |v: usize| {
                let left = m.saturating_sub(32 * t + 16 * v);
                if left >= 16 { 0xFFFF } else { ((1u32 << left) - 1) as u16 }
            };
            [mk(0), mk(1)]
        })
        .collect();
    let mut p0 = 0;
    while p0 < k {
        let p1 = (p0 + PB).min(k);
        for p in p1..(p1 + PB).min(k) {
            let row = ap.offset(a.off as isize + p as isize * a.cs).add(32 * t0);
            for l in (0..(32 * nt).min(m - 32 * t0)).step_by(16) {
                _mm_prefetch::<_MM_HINT_T0>(row.add(l) as *const i8);
            }
        }
        for t in 0..nt {
            let i0 = 32 * (t0 + t);
            let mk = masks[t];
            let s = &mut sums[t * 2 * N..(t + 1) * 2 * N];
            let mut acc0 = [_mm512_setzero_ps(); N];
            let mut acc1 = [_mm512_setzero_ps(); N];
            acc0.copy_from_slice(&s[..N]);
            acc1.copy_from_slice(&s[N..]);
            for p in p0..p1 {
                let arow = ap.offset(a.off as isize + p as isize * a.cs).add(i0);
                let a0 = _mm512_maskz_loadu_ps(mk[0], arow);
                let a1 = _mm512_maskz_loadu_ps(mk[1], arow.add(16));
                let brow = bp.offset(b.off as isize + p as isize * b.rs);
                for j in 0..N {
                    let bj = _mm512_set1_ps(*brow.add(j));
                    acc0[j] = _mm512_fmadd_ps(a0, bj, acc0[j]);
                    acc1[j] = _mm512_fmadd_ps(a1, bj, acc1[j]);
                }
            }
            s[..N].copy_from_slice(&acc0);
            s[N..].copy_from_slice(&acc1);
        }
        p0 = p1;
    }
    // C[i, j] = epilogue(sum[i][j]): column j of a tile is lane i of its accumulator j
    let mut lanes = [0f32; 16];
    for t in 0..nt {
        for v in 0..2 {
            let rows = (m.saturating_sub(32 * (t0 + t) + 16 * v)).min(16);
            for j in 0..N {
                _mm512_storeu_ps(lanes.as_mut_ptr(), sums[t * 2 * N + v * N + j]);
                for (l, &x) in lanes[..rows].iter().enumerate() {
                    let o = &mut out[(32 * t + 16 * v + l) * N + j];
                    e.apply(o, x);
                }
            }
        }
    }
}

/// Whether `nt_product` takes this product: A (m x k, rows contiguous) · Bᵀ (B stored n x k, rows
/// contiguous) with 3-128 rows, on a CPU with AVX-512 (`matmul_into` sends it the products under
/// 4 MFLOP; larger ones transpose B and run A·B).
pub fn nt_applies(m: usize, k: usize, a: &View, b: &View) -> bool {
    (3..=128).contains(&m) && k >= 16 && a.cs == 1 && b.rs == 1 && super::simd::level() == 2
}

/// C (m x n) = epilogue(A · Bᵀ) as dot products of rows (dX = G·Wᵀ at batch 3-31): both
/// operands are read along their contiguous rows, 4 rows of A against 4 rows of B in 16 AVX-512
/// accumulators. The packed GEMM packs Bᵀ column by column here, which cost more than the product
/// (32x256 @ (256x256)ᵀ: 46 GFLOP/s against 104 for A·B). Each element is one fixed-order dot
/// product, so the result does not depend on the thread count (row blocks go to threads whole).
pub fn nt_product(dst: &mut [f32], a: &View, b: &View, m: usize, k: usize, n: usize, e: Epilogue) {
    assert!(nt_applies(m, k, a, b) && dst.len() == m * n);
    let run = |i0: usize, out: &mut [f32]| {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX-512F is present (nt_applies); row pointers stay inside `a` / `b` (rows are
        // clamped to the last valid one; loads are masked past k), stores inside `out`
        unsafe {
            nt_avx512(out, a, b, i0, out.len() / n, k, n, e)
        }
    };
    by_row_blocks(dst, m, n, k, 4, run);
}

/// The 16 horizontal sums of a 4 x 4 block of accumulators as one vector (lane 4r + c = the sum of
/// v[r][c]): a transposing reduction tree, ~3 instructions per sum instead of ~8 for each
/// `_mm512_reduce_add_ps`. The tree is fixed, so the result is too.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn reduce16(v: &[[std::arch::x86_64::__m512; 4]; 4]) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    let f = |i: usize| v[i / 4][i % 4];
    // per 128-bit lane: [a0+a2, b0+b2, a1+a3, b1+b3] for the pairs (v[2i], v[2i+1])
    let w: [__m512; 8] = std::array::from_fn(|i| {
        let (a, b) = (f(2 * i), f(2 * i + 1));
        _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b))
    });
    // per 128-bit lane: the lane's partial sums of v[4i], v[4i+1], v[4i+2], v[4i+3]
    let x: [__m512; 4] = std::array::from_fn(|i| {
        let (c, d) = (_mm512_castps_pd(w[2 * i]), _mm512_castps_pd(w[2 * i + 1]));
        _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(c, d)), _mm512_castpd_ps(_mm512_unpackhi_pd(c, d)))
    });
    // add the 128-bit lanes pairwise, twice
    let y0 = _mm512_add_ps(_mm512_shuffle_f32x4::<0x88>(x[0], x[1]), _mm512_shuffle_f32x4::<0xDD>(x[0], x[1]));
    let y1 = _mm512_add_ps(_mm512_shuffle_f32x4::<0x88>(x[2], x[3]), _mm512_shuffle_f32x4::<0xDD>(x[2], x[3]));
    _mm512_add_ps(_mm512_shuffle_f32x4::<0x88>(y0, y1), _mm512_shuffle_f32x4::<0xDD>(y0, y1))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn nt_avx512(out: &mut [f32], a: &View, b: &View, i0: usize, rows: usize, k: usize, n: usize, e: Epilogue) {
    use std::arch::x86_64::*;
    let (ap, bp) = (a.data.as_ptr(), b.data.as_ptr());
    let arow = |i: usize| ap.offset(a.off as isize + i as isize * a.rs);
    let brow = |j: usize| bp.offset(b.off as isize + j as isize * b.cs);
    let full = k / 16 * 16;
    let tail = if k > full { ((1u32 << (k - full)) - 1) as u16 } else { 0 };
    for r0 in (0..rows).step_by(4) {
        let ra: [usize; 4] = std::array::from_fn(|r| i0 + (r0 + r).min(rows - 1));
        for j0 in (0..n).step_by(4) {
            let cb: [usize; 4] = std::array::from_fn(|c| (j0 + c).min(n - 1));
            let mut acc = [[_mm512_setzero_ps(); 4]; 4];
            let mut p = 0;
            while p < k {
                let mk = if p < full { 0xFFFF } else { tail };
                let av: [__m512; 4] = std::array::from_fn(|r| _mm512_maskz_loadu_ps(mk, arow(ra[r]).add(p)));
                let bv: [__m512; 4] = std::array::from_fn(|c| _mm512_maskz_loadu_ps(mk, brow(cb[c]).add(p)));
                for r in 0..4 {
                    for c in 0..4 {
                        acc[r][c] = _mm512_fmadd_ps(av[r], bv[c], acc[r][c]);
                    }
                }
                p += 16;
            }
            // lane 4r + c of `sums` = the dot product of A row r0 + r with B row j0 + c
            let mut sums = [0f32; 16];
            _mm512_storeu_ps(sums.as_mut_ptr(), reduce16(&acc));
            for r in 0..4.min(rows - r0) {
                for c in 0..4.min(n - j0) {
                    let x = sums[4 * r + c];
                    let o = &mut out[(r0 + r) * n + j0 + c];
                    e.apply(o, x);
                }
            }
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

    /// A deterministic uniform(-0.5, 0.5) stream.
    fn lcg(mut seed: u32) -> impl FnMut() -> f32 {
        move || {
            seed = seed.wrapping_mul(1664525).wrapping_add(1013904223);
            (seed >> 8) as f32 / (1 << 24) as f32 - 0.5
        }
    }

    /// `product(c, epilogue)` against `want` (float64): a plain store, then C = 2 C - 0.25 P.
    fn check_epilogues(len: usize, want: &[f64], tol: f64, product: impl Fn(&mut [f32], Epilogue)) {
        let mut c = vec![0.5f32; len];
        product(&mut c, Epilogue::STORE);
        for (x, y) in c.iter().zip(want) {
            assert!((*x as f64 - y).abs() < tol, "{x} vs {y}");
        }
        let mut c = vec![0.5f32; len];
        product(&mut c, Epilogue { accumulate: true, alpha: 2.0, beta: -0.25 });
        for (x, y) in c.iter().zip(want) {
            assert!((*x as f64 - (1.0 - 0.25 * y)).abs() < tol, "{x} vs {}", 1.0 - 0.25 * y);
        }
    }

    #[test]
    fn thin_products_match_naive() {
        let mut rnd = lcg(1);
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
                check_epilogues(m * n, &want, 1e-4, |c, e| product(c, &av, &b, m, n, e));
            }
        }
    }

    #[test]
    fn narrow_product_matches_naive() {
        if super::super::simd::level() != 2 {
            return;
        }
        let mut rnd = lcg(11);
        // full 8-row blocks and leftover rows, 1..16 columns, A and B offset inside their buffers
        for &(m, k, n) in &[(32, 256, 10), (13, 16, 1), (8, 100, 16), (3, 40, 7), (70, 33, 12)] {
            let am: Vec<f32> = (0..m * (k + 3) + 2).map(|_| rnd()).collect();
            let bm: Vec<f32> = (0..k * n + 5).map(|_| rnd()).collect();
            let a = View { data: &am, off: 2, rs: (k + 3) as isize, cs: 1 };
            let b = View { data: &bm, off: 5, rs: n as isize, cs: 1 };
            assert!(narrow_applies(k, n, &a, &b));
            let want = naive(&a, &b, m, k, n);
            check_epilogues(m * n, &want, 1e-3, |c, e| narrow_product(c, &a, &b, m, k, n, e));
        }
    }

    #[test]
    fn vm_product_matches_naive() {
        if super::super::simd::level() != 2 {
            return; // the crate's path runs instead (tested through matmul)
        }
        let mut rnd = lcg(7);
        // full tiles, partial vectors, several tiles with a ragged last one
        for &(k, n) in &[(784, 256), (3, 32), (17, 47), (64, 300), (2, 513)] {
            let a: Vec<f32> = (0..2 * k).map(|_| rnd()).collect();
            let bm: Vec<f32> = (0..k * n + 5).map(|_| rnd()).collect();
            // a as a contiguous row and as a strided column of a (k x 2) matrix; B offset by 5
            for av in [View { data: &a, off: 0, rs: k as isize, cs: 1 }, View { data: &a, off: 1, rs: 1, cs: 2 }] {
                let b = View { data: &bm, off: 5, rs: n as isize, cs: 1 };
                assert!(vm_applies(1, k, n, &b));
                let want = naive(&av, &b, 1, k, n);
                check_epilogues(n, &want, 1e-4, |c, e| vm_product(c, &av, &b, k, n, e));
            }
        }
    }

    #[test]
    fn tn_product_matches_naive() {
        if super::super::simd::level() != 2 {
            return;
        }
        let mut rnd = lcg(11);
        for &(m, k, n) in &[(256, 2048, 10), (16, 16, 1), (47, 300, 12), (100, 513, 3), (33, 17, 7)] {
            let at: Vec<f32> = (0..k * m + 3).map(|_| rnd()).collect();
            let bm: Vec<f32> = (0..k * n).map(|_| rnd()).collect();
            let a = View { data: &at, off: 3, rs: 1, cs: m as isize };
            let b = View { data: &bm, off: 0, rs: n as isize, cs: 1 };
            assert!(tn_applies(m, k, n, &a, &b));
            let want = naive(&a, &b, m, k, n);
            for threads in [1, 2] {
                crate::kernels::set_num_threads(threads);
                check_epilogues(m * n, &want, 1e-3, |c, e| tn_product(c, &a, &b, m, k, n, e));
            }
        }
    }

    #[test]
    fn nt_product_matches_naive() {
        if super::super::simd::level() != 2 {
            return;
        }
        let mut rnd = lcg(5);
        for &(m, k, n) in &[(32, 256, 256), (13, 16, 1), (33, 257, 10), (128, 100, 7), (17, 31, 5)] {
            let am: Vec<f32> = (0..m * k + 2).map(|_| rnd()).collect();
            let bm: Vec<f32> = (0..n * k).map(|_| rnd()).collect();
            let a = View { data: &am, off: 2, rs: k as isize, cs: 1 };
            let b = View { data: &bm, off: 0, rs: 1, cs: k as isize };
            assert!(nt_applies(m, k, &a, &b));
            let want = naive(&a, &b, m, k, n);
            for threads in [1, 2] {
                crate::kernels::set_num_threads(threads);
                check_epilogues(m * n, &want, 1e-3, |c, e| nt_product(c, &a, &b, m, k, n, e));
            }
        }
    }
}
