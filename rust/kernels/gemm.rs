//! Batched float32 matmul through the `gemm` crate (packed, register-blocked micro-kernels with
//! run-time AVX-512 / AVX2+FMA / scalar dispatch). Transposed operands are read through strides,
//! never materialised.
use gemm::{gemm, Parallelism};
use rayon::prelude::*;

use super::{num_threads, pool};
use crate::error::Result;
use crate::tensor::{alloc, alloc_for_overwrite};

/// Inner dimensions up to this use the direct row-axpy path instead of the packed GEMM.
const SMALL_K: usize = 4;

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
    if m * n == 0 {
        return Ok(out);
    }
    // strides (row stride, col stride) of op(X) as an (r x c) matrix
    let st = |x: &Operand| -> (isize, isize) {
        if x.trans { (1, x.cols as isize) } else { (x.cols as isize, 1) }
    };
    let (a_rs, a_cs) = st(a);
    let (b_rs, b_cs) = st(b);
    let flops = 2 * m * n * k;
    let one = |dst: &mut [f32], ao: usize, bo: usize, par: Parallelism| unsafe {
        gemm(
            m, n, k,
            dst.as_mut_ptr(), 1, n as isize, false,
            a.data.as_ptr().add(ao), a_cs, a_rs,
            b.data.as_ptr().add(bo), b_cs, b_rs,
            0.0f32, 1.0f32, false, false, false, par,
        )
    };
    if k == 0 {
        return Ok(out);
    }
    let threads = num_threads();
    if k <= SMALL_K && b_cs == 1 {
        // outer products and other thin products (per-example weight gradients): rows of axpys,
        // vectorised over n; packing for a GEMM micro-kernel would cost more than the work
        let small = |dst: &mut [f32], ao: usize, bo: usize| {
            for (i, row) in dst.chunks_mut(n).enumerate() {
                for p in 0..k {
                    let av = a.data[(ao as isize + i as isize * a_rs + p as isize * a_cs) as usize];
                    let brow = &b.data[(bo as isize + p as isize * b_rs) as usize..][..n];
                    if p == 0 {
                        row.iter_mut().zip(brow).for_each(|(o, &bv)| *o = av * bv);
                    } else {
                        row.iter_mut().zip(brow).for_each(|(o, &bv)| *o += av * bv);
                    }
                }
            }
        };
        super::maybe_par(batch * m * n, |par| {
            if par && batch > 1 {
                out.par_chunks_mut(m * n).enumerate().for_each(|(i, dst)| small(dst, a_off[i], b_off[i]));
            } else if par {
                let rows = (1usize << 14) / n.max(1) + 1;
                out.par_chunks_mut(rows * n).enumerate().for_each(|(c, dst)| {
                    // row block c of the single matrix: shift a's start by c*rows rows
                    small(dst, (a_off[0] as isize + (c * rows) as isize * a_rs) as usize, b_off[0]);
                });
            } else {
                for (i, dst) in out.chunks_mut(m * n).enumerate() {
                    small(dst, a_off[i], b_off[i]);
                }
            }
        });
        return Ok(out);
    }
    // split a product across threads only when each thread gets several MFLOP and a real panel
    let small = flops < (1 << 23) || m.min(n) < 16 || k <= SMALL_K;
    if threads <= 1 || (small && batch == 1) {
        for (i, dst) in out.chunks_mut(m * n).enumerate() {
            one(dst, a_off[i], b_off[i], Parallelism::None);
        }
    } else if batch >= threads * 2 && m * n * k <= (1 << 21) {
        // many small matrices: one thread per matrix
        pool().install(|| {
            out.par_chunks_mut(m * n).enumerate().for_each(|(i, dst)| one(dst, a_off[i], b_off[i], Parallelism::None));
        });
    } else {
        pool().install(|| {
            for (i, dst) in out.chunks_mut(m * n).enumerate() {
                one(dst, a_off[i], b_off[i], Parallelism::Rayon(threads));
            }
        });
    }
    Ok(out)
}
