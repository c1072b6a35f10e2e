//! Batched float32 matmul through the `gemm` crate (packed, register-blocked micro-kernels with
//! run-time AVX-512 / AVX2+FMA / scalar dispatch). Transposed operands are read through strides,
//! never materialised.
use gemm::{gemm, Parallelism};
use rayon::prelude::*;

pub use super::thin::Epilogue;
use super::thin;
use super::num_threads;
use crate::error::Result;
use crate::tensor::{alloc, alloc_for_overwrite};

/// One operand: buffer, and for each batch the element offset of its matrix.
pub struct Operand<'a> {
    pub data: &'a [f32],
    /// rows, cols of the stored (untransposed) matrix
    pub rows: usize,
    pub cols: usize,
    pub trans: bool,
}

/// C[b] = op(A)[b] @ op(B)[b] for each batch b; offsets give each operand's matrix start.
pub fn matmul(a: &Operand, b: &Operand, a_off: &[usize], b_off: &[usize], m: usize, k: usize, n: usize) -> Result<Vec<f32>> {
    let batch = a_off.len();
    let mut out = if k == 0 { alloc(batch * m * n)? } else { alloc_for_overwrite(batch * m * n)? };
    if k > 0 {
        matmul_into(&mut out, Epilogue::STORE, a, b, a_off, b_off, m, k, n);
    }
    Ok(out)
}

/// Up to this many rows, A·Bᵀ runs row by row (see `matmul_into`); from 3 rows the 4-row dot
/// product kernel is faster (2 rows: 45 vs 36 GFLOP/s, 4 rows: 49 vs 69).
const ROWWISE_NT_MAX: usize = 2;

/// From this many rows, A·Bᵀ transposes B and runs A·B (below, the transpose costs more than the
/// row-wise products save: 4x256 @ (256x256)ᵀ 48 -> 35 GFLOP/s).
const NT_TRANSPOSE_MIN_ROWS: usize = 8;

/// Up to this many flops, A·B with at most 16 columns runs `thin::narrow_product`. It uses 10 of 16
/// lanes at n = 10, so it is FMA-bound at ~70 GFLOP/s per thread; above this size the packed GEMM
/// with its own threading is faster at 2 threads (4096x256 @ 256x10: 154 vs 176 us).
const NARROW_MAX_FLOPS: usize = 1 << 23;

/// From this many flops, A·Bᵀ through a transposed B is split across threads, and a compiled
/// step that holds such a product replays on a pool worker (`tape::step`). Other single
/// products split from `SPLIT_MIN_FLOPS`.
pub const PAR_MIN_FLOPS: usize = 1 << 22;
/// Products from this size are split by hand across the spinning team (`team.rs`), one block of
/// C per thread: with a ~1 us fork-join, 2 threads pay from 1 MFLOP (8x784 @ 784x256 at 2
/// threads: 95 -> 146 GFLOP/s, 16x256 @ 256x256: 95 -> 155).
pub const SPLIT_MIN_FLOPS: usize = 1 << 20;

fn view<'a>(x: &Operand<'a>, off: usize, rs: isize, cs: isize) -> thin::View<'a> {
    thin::View { data: x.data, off, rs, cs }
}

/// `out[b] = alpha*out[b] + beta * op(A)[b] @ op(B)[b]` (or `beta * product` when the epilogue
/// does not accumulate): the optimizer's fused SGD update writes a weight gradient's product
/// straight into the weight this way. `k` must be > 0.
#[allow(clippy::too_many_arguments)]
pub fn matmul_into(out: &mut [f32], e: Epilogue, a: &Operand, b: &Operand, a_off: &[usize], b_off: &[usize], m: usize, k: usize, n: usize) {
    let batch = a_off.len();
    debug_assert!(k > 0 && out.len() == batch * m * n);
    if m * n == 0 {
        return;
    }
    // strides (row stride, col stride) of op(X) as an (r x c) matrix
    let st = |x: &Operand| -> (isize, isize) {
        if x.trans { (1, x.cols as isize) } else { (x.cols as isize, 1) }
    };
    let (a_rs, a_cs) = st(a);
    let (b_rs, b_cs) = st(b);
    let flops = 2 * m * n * k;
    // A few rows times a transposed B (dX = G Wᵀ in every backward): the crate's general kernel
    // is 8-13x slower here than its matrix-vector path (benches/kernels.rs `gemm_thin`), so such a
    // product runs as one matrix-vector product per row.
    // (without AVX-512 the dot-product kernel is not there, and row-wise stays up to 12 rows)
    let rowwise_max = if super::simd::level() == 2 { ROWWISE_NT_MAX } else { 12 };
    let rowwise = b_cs != 1 && (2..=rowwise_max).contains(&m) && k >= 64;
    let one = |dst: &mut [f32], ao: usize, bo: usize, par: Parallelism| unsafe {
        if rowwise {
            for r in 0..m {
                gemm(
                    1, n, k,
                    dst.as_mut_ptr().add(r * n), 1, n as isize, e.accumulate,
                    a.data.as_ptr().offset(ao as isize + r as isize * a_rs), a_cs, a_rs,
                    b.data.as_ptr().add(bo), b_cs, b_rs,
                    e.alpha, e.beta, false, false, false, par,
                )
            }
        } else {
            gemm(
                m, n, k,
                dst.as_mut_ptr(), 1, n as isize, e.accumulate,
                a.data.as_ptr().add(ao), a_cs, a_rs,
                b.data.as_ptr().add(bo), b_cs, b_rs,
                e.alpha, e.beta, false, false, false, par,
            )
        }
    };
    let threads = num_threads();
    if thin::applies(k, &view(b, 0, b_rs, b_cs)) {
        // outer products (k = 1): memory-bound, one streamed scaled row per output row (no packing)
        let outer = |dst: &mut [f32], ao: usize, bo: usize, rows: usize| {
            thin::product(dst, &view(a, ao, a_rs, a_cs), &view(b, bo, b_rs, b_cs), rows, n, e)
        };
        super::maybe_par(batch * m * n, |par| {
            if par && batch > 1 {
                out.par_chunks_mut(m * n).enumerate().for_each(|(i, dst)| outer(dst, a_off[i], b_off[i], m));
            } else if par && m > 1 {
                let rows = (1usize << 14) / n.max(1) + 1;
                out.par_chunks_mut(rows * n).enumerate().for_each(|(c, dst)| {
                    // row block c of the single matrix: shift a's start by c*rows rows
                    outer(dst, (a_off[0] as isize + (c * rows) as isize * a_rs) as usize, b_off[0], dst.len() / n);
                });
            } else {
                for (i, dst) in out.chunks_mut(m * n).enumerate() {
                    outer(dst, a_off[i], b_off[i], m);
                }
            }
        });
        return;
    }
    // Products too small to split across threads (< PAR_MIN_FLOPS) with 13+ rows keep the row
    // dot-product kernel below, which splits by rows: at 2 threads it is faster than a transpose
    // and A·B on one thread (16x256 @ (256x256)ᵀ 86 vs 73 GFLOP/s), and equal at 1. The choice
    // depends on the shape only, never on the thread count, so results do not either.
    let dot = flops < PAR_MIN_FLOPS && thin::nt_applies(m, k, &view(a, 0, a_rs, a_cs), &view(b, 0, b_rs, b_cs));
    if b_rs == 1 && a_cs == 1 && m >= NT_TRANSPOSE_MIN_ROWS && n >= 16 && k >= 16 && !dot {
        // A·Bᵀ (dX = G·Wᵀ): the packed kernel is fast only for a row-major B (32x256 @ (256x256)ᵀ
        // at 1 thread: 46 GFLOP/s as A·Bᵀ, 112 as A·B), so B is transposed first (16x16 AVX-512
        // tiles, in cache: 7 us for 256x256), then multiplied as A·B: 93 GFLOP/s all in (torch 87).
        let par = threads > 1 && flops >= PAR_MIN_FLOPS;
        if par && batch == 1 && flops < (1 << 30) && n >= 32 * threads {
            // one block of C's columns per thread, each transposing only its own rows of B (one
            // fork-join; the transposes run in parallel with no barrier before the products)
            let chunk = n.div_ceil(threads).next_multiple_of(16);
            let dp = SendPtr(out.as_mut_ptr());
            let (a0, b0) = (a_off[0], b_off[0]);
            super::run_blocks(n.div_ceil(chunk), |c| {
                let (j0, len) = (c * chunk, chunk.min(n - c * chunk));
                let mut bt = alloc_for_overwrite(k * len).expect("transposed block of B");
                super::movement::transpose(&mut bt, &b.data[b0 + j0 * b.cols..], len, k, b.cols);
                let dp = &dp;
                // SAFETY: block c writes only columns j0..j0+len of C; A and bt are read-only
                unsafe {
                    gemm(
                        m, len, k,
                        dp.0.add(j0), 1, n as isize, e.accumulate,
                        a.data.as_ptr().add(a0), a_cs, a_rs,
                        bt.as_ptr(), 1, len as isize,
                        e.alpha, e.beta, false, false, false, Parallelism::None,
                    )
                }
                crate::tensor::recycle(bt);
            });
            return;
        }
        // larger products: B transposed by all threads, then A·B with the usual threading, all in
        // one visit to the pool
        let mut bt = alloc_for_overwrite(k * n).expect("transposed operand (k x n floats, at most B's size)");
        let mut run = || {
            for (i, dst) in out.chunks_mut(m * n).enumerate() {
                let src = &b.data[b_off[i]..];
                if par { super::movement::transpose_par(&mut bt, src, n, k, b.cols) } else { super::movement::transpose(&mut bt, src, n, k, b.cols) }
                let bt_op = Operand { data: &bt, rows: k, cols: n, trans: false };
                matmul_into(dst, e, a, &bt_op, &a_off[i..i + 1], &[0], m, k, n);
            }
        };
        if par { super::install(run) } else { run() }
        crate::tensor::recycle(bt);
        return;
    }
    if thin::nt_applies(m, k, &view(a, 0, a_rs, a_cs), &view(b, 0, b_rs, b_cs)) {
        // A·Bᵀ with 3-128 rows under 4 MFLOP (dX = G·Wᵀ at batch 3-31): row dot products, no
        // packing (the crate packs Bᵀ column by column: 4x256 @ (256x256)ᵀ 49 -> 69 GFLOP/s at 1
        // thread, 8 rows 58 -> 76, 4x256 @ (784x256)ᵀ 49 -> 87)
        for (i, dst) in out.chunks_mut(m * n).enumerate() {
            thin::nt_product(dst, &view(a, a_off[i], a_rs, a_cs), &view(b, b_off[i], b_rs, b_cs), m, k, n, e);
        }
        return;
    }
    if thin::tn_applies(m, k, n, &view(a, 0, a_rs, a_cs), &view(b, 0, b_rs, b_cs)) {
        // Aᵀ B with a narrow output (the classifier head's weight gradient): unpacked, streamed
        for (i, dst) in out.chunks_mut(m * n).enumerate() {
            thin::tn_product(dst, &view(a, a_off[i], a_rs, a_cs), &view(b, b_off[i], b_rs, b_cs), m, k, n, e);
        }
        return;
    }
    if thin::vm_applies(m, k, n, &view(b, 0, b_rs, b_cs)) {
        // one row times a row-major matrix (forward at batch 1): streamed, no packing
        let vm = |dst: &mut [f32], ao: usize, bo: usize| thin::vm_product(dst, &view(a, ao, a_rs, a_cs), &view(b, bo, b_rs, b_cs), k, n, e);
        super::maybe_par(batch * m * n * k, |par| {
            if par && batch > 1 {
                out.par_chunks_mut(m * n).enumerate().for_each(|(i, dst)| vm(dst, a_off[i], b_off[i]));
            } else {
                for (i, dst) in out.chunks_mut(m * n).enumerate() {
                    vm(dst, a_off[i], b_off[i]);
                }
            }
        });
        return;
    }
    if flops <= NARROW_MAX_FLOPS && thin::narrow_applies(k, n, &view(a, 0, a_rs, a_cs), &view(b, 0, b_rs, b_cs)) {
        // A·B with at most 16 columns (the classifier head's forward): 8 rows of A at a time
        // against B's rows as single vectors (kernel time at 32x256 @ 256x10: 3.7 -> 2.3 us)
        for (i, dst) in out.chunks_mut(m * n).enumerate() {
            thin::narrow_product(dst, &view(a, a_off[i], a_rs, a_cs), &view(b, b_off[i], b_rs, b_cs), m, k, n, e);
        }
        return;
    }
    // split a product across threads only when each thread gets several MFLOP and a real panel
    let small = flops < (1 << 23) || m.min(n) < 16;
    // A single product from 1 MFLOP at 2+ threads is split by hand on the spinning team: C is cut
    // into one block of rows (or of columns when C is wide) per thread, each a serial crate
    // product. Through rayon, this fork-join cost 30+ us on this VM and won only where the crate's
    // own threading lost (4-8 MFLOP products, k < 64, A·Bᵀ); on the team it costs ~1 us and beats
    // the crate's threading at every size measured (2 threads, GFLOP/s, crate -> team: 256^3
    // 189 -> 210, 512x784 @ 784x256 205 -> 217, (512x784)ᵀ @ 512x256 193 -> 201, 1024^3 and
    // 4096 rows equal). Every element's sum over k is the same serial kernel's either way, so
    // results do not depend on the split (tests/test_ops.py checks, up to 1024^3).
    let split_dim = if n >= m { n } else { m };
    if threads > 1 && batch == 1 && !rowwise && flops >= SPLIT_MIN_FLOPS && split_dim >= 32 * threads {
        let cols = n >= m;
        let chunk = split_dim.div_ceil(threads).next_multiple_of(16);
        let (dp, ap, bp) = (SendPtr(out.as_mut_ptr()), SendPtr(a.data.as_ptr() as *mut f32), SendPtr(b.data.as_ptr() as *mut f32));
        let (a0, b0) = (a_off[0], b_off[0]);
        super::run_blocks(split_dim.div_ceil(chunk), |c| {
            let (s0, len) = (c * chunk, chunk.min(split_dim - c * chunk));
            let (dp, ap, bp) = (&dp, &ap, &bp);
            // SAFETY: block c writes only its own rows / columns of C; A and B are read-only
            unsafe {
                if cols {
                    gemm(
                        m, len, k,
                        dp.0.add(s0), 1, n as isize, e.accumulate,
                        ap.0.add(a0), a_cs, a_rs,
                        bp.0.offset(b0 as isize + s0 as isize * b_cs), b_cs, b_rs,
                        e.alpha, e.beta, false, false, false, Parallelism::None,
                    )
                } else {
                    gemm(
                        len, n, k,
                        dp.0.add(s0 * n), 1, n as isize, e.accumulate,
                        ap.0.offset(a0 as isize + s0 as isize * a_rs), a_cs, a_rs,
                        bp.0.add(b0), b_cs, b_rs,
                        e.alpha, e.beta, false, false, false, Parallelism::None,
                    )
                }
            }
        });
        return;
    }
    if threads <= 1 || (small && batch == 1) {
        for (i, dst) in out.chunks_mut(m * n).enumerate() {
            one(dst, a_off[i], b_off[i], Parallelism::None);
        }
    } else if batch >= threads * 2 && m * n * k <= (1 << 21) {
        // many small matrices: one thread per matrix
        super::install(|| {
            out.par_chunks_mut(m * n).enumerate().for_each(|(i, dst)| one(dst, a_off[i], b_off[i], Parallelism::None));
        });
    } else {
        super::install(|| {
            for (i, dst) in out.chunks_mut(m * n).enumerate() {
                one(dst, a_off[i], b_off[i], Parallelism::Rayon(threads));
            }
        });
    }
}

/// A raw pointer handed to the pool's tasks (each writes a disjoint block).
pub(crate) struct SendPtr(pub(crate) *mut f32);
// SAFETY: used only for disjoint writes / shared reads inside one fork-join
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

/// Walk the elements `start..start + len` of the outer product of `a` (m) and `g` (n), a
/// row-major m x n matrix, one row segment at a time: `seg(o, a[r], g[j0..j0 + l])` for the
/// segment at offset `o` of the range. The callers' loops over a segment are plain zipped loops,
/// which vectorise inside `simd::dispatch`.
#[inline(always)]
fn outer_segments(a: &[f32], g: &[f32], start: usize, len: usize, mut seg: impl FnMut(usize, f32, &[f32])) {
    let n = g.len();
    assert!(n > 0 && start + len <= a.len() * n);
    let (mut r, mut j0, mut o) = (start / n, start % n, 0);
    while o < len {
        let l = (n - j0).min(len - o);
        seg(o, a[r], &g[j0..j0 + l]);
        o += l;
        r += 1;
        j0 = 0;
    }
}

/// `out[i] = (aᵀ g)[start + i]` for vectors `a` (m) and `g` (n), their outer product read as a
/// row-major m x n matrix: any range of it, computed where it is needed (a deferred weight
/// gradient at batch 1, `ops::matmul::Outer`). Each element is one product `a[r] g[j]`, the same
/// bits whichever range computes it (and as a one-row matrix product).
pub fn outer_range(a: &[f32], g: &[f32], start: usize, out: &mut [f32]) {
    super::simd::dispatch(
        #[inline(always)]
        || {
            outer_segments(a, g, start, out.len(), |o, ar, gs| {
                for (d, &x) in out[o..o + gs.len()].iter_mut().zip(gs) {
                    *d = ar * x;
                }
            })
        },
    )
}

/// `p[i] += beta * (a[r] g[j])` over the elements `start..start + p.len()` of the outer product
/// (`outer_range`'s elements, the same bits), in one pass over `p`: plain SGD on a deferred weight
/// gradient, which is never stored (`ops::matmul::Outer::axpy`).
pub fn outer_axpy(a: &[f32], g: &[f32], start: usize, p: &mut [f32], beta: f32) {
    super::simd::dispatch(
        #[inline(always)]
        || {
            outer_segments(a, g, start, p.len(), |o, ar, gs| {
                for (d, &x) in p[o..o + gs.len()].iter_mut().zip(gs) {
                    *d += beta * (ar * x);
                }
            })
        },
    )
}
