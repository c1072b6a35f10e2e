//! Reductions over an (outer, red, inner) layout, and row-wise softmax / logsumexp.
//! Every output element is accumulated in a fixed order, so results do not depend on the
//! number of threads.
use rayon::prelude::*;

use super::{maybe_par, simd};
use crate::bail;
use crate::error::Result;
use crate::tensor::{alloc, alloc_for_overwrite};

const BLOCK: usize = 4096;

/// Rows of a reduced (non-last) axis reduced together before the block results are combined.
const RED_BLOCK: usize = 128;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Reduce {
    Sum,
    Max,
}

/// f32 lanes of a run: 4 AVX-512 accumulators (independent add chains, so the loop runs at
/// memory speed instead of one add's latency per vector).
const LANES: usize = 64;

/// Sum of at most `RUN` floats in `LANES` f32 lanes, the lanes then added pairwise.
#[inline(always)]
fn lanes_sum(x: &[f32]) -> f32 {
    let mut lanes = [0f32; LANES];
    let mut it = x.chunks_exact(LANES);
    for c in &mut it {
        for k in 0..LANES {
            lanes[k] += c[k];
        }
    }
    let mut w = LANES / 2;
    while w > 0 {
        for k in 0..w {
            lanes[k] += lanes[k + w];
        }
        w /= 2;
    }
    let mut s = lanes[0];
    for &v in it.remainder() {
        s += v;
    }
    s
}

/// Elements per f32 run (16 per lane); runs are added in f64, so the f32 rounding error grows
/// with `RUN`, not with the slice length (better than numpy's pairwise: 1e6 x 0.1 sums to 1e-7).
const RUN: usize = 1024;

/// Sum of a contiguous slice (at most `BLOCK` long in the parallel path), in f64.
fn block_sum(x: &[f32]) -> f64 {
    simd::dispatch(#[inline(always)] || {
        let mut runs = x.chunks_exact(RUN);
        let mut total = 0f64;
        for r in &mut runs {
            total += lanes_sum(r) as f64;
        }
        total + lanes_sum(runs.remainder()) as f64
    })
}

fn sum_contig(x: &[f32], par: bool) -> f32 {
    if x.len() <= BLOCK {
        return block_sum(x) as f32;
    }
    let partial: Vec<f64> = if par {
        // blocks stay the unit of the fixed summation order; each thread takes one contiguous
        // range of them (one sequential stream per core, as OpenMP's static schedule does)
        let nb = x.len().div_ceil(BLOCK);
        let per = nb.div_ceil(rayon::current_num_threads());
        let mut partial = vec![0f64; nb];
        partial.par_chunks_mut(per).enumerate().for_each(|(t, p)| {
            for (j, slot) in p.iter_mut().enumerate() {
                let s = (t * per + j) * BLOCK;
                *slot = block_sum(&x[s..(s + BLOCK).min(x.len())]);
            }
        });
        partial
    } else {
        x.chunks(BLOCK).map(block_sum).collect()
    };
    partial.iter().sum::<f64>() as f32
}

#[inline]
fn nan_max(m: f32, v: f32) -> f32 {
    if v > m || v.is_nan() { v } else { m }
}

/// Max of a contiguous slice; in the pool by blocks when `par` (max is exact in any order).
fn max_par(x: &[f32], par: bool) -> f32 {
    if !par || x.len() <= 16 * BLOCK {
        return simd::dispatch(#[inline(always)] || max_contig(x));
    }
    let partial: Vec<f32> = x.par_chunks(16 * BLOCK).map(|c| simd::dispatch(#[inline(always)] || max_contig(c))).collect();
    max_contig(&partial)
}

#[inline(always)]
fn max_contig(x: &[f32]) -> f32 {
    // LANES independent lanes and a NaN flag: no early exit, so the loop vectorises
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let mut nan = false;
    let mut it = x.chunks_exact(LANES);
    for c in &mut it {
        for k in 0..LANES {
            lanes[k] = if c[k] > lanes[k] { c[k] } else { lanes[k] };
            nan |= c[k].is_nan();
        }
    }
    let mut m = lanes.iter().fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m });
    for &v in it.remainder() {
        nan |= v.is_nan();
        m = nan_max(m, v);
    }
    if nan { f32::NAN } else { m }
}

/// dst[i] = dst[i] + src[i] (sum) or the NaN-propagating max of the two.
#[inline(always)]
fn combine(kind: Reduce, dst: &mut [f32], src: &[f32]) {
    match kind {
        Reduce::Sum => dst.iter_mut().zip(src).for_each(|(d, &s)| *d += s),
        Reduce::Max => dst.iter_mut().zip(src).for_each(|(d, &s)| {
            if s > *d || s.is_nan() {
                *d = s
            }
        }),
    }
}

/// Reduce `x` laid out as (outer, red, inner) over the middle axis -> (outer, inner).
pub fn reduce3(x: &[f32], outer: usize, red: usize, inner: usize, kind: Reduce) -> Result<Vec<f32>> {
    if red == 0 && kind == Reduce::Max {
        bail!(Value, "max: zero-size reduction has no identity (reduced axis of length 0)");
    }
    let mut out = alloc(outer * inner)?;
    if outer * inner == 0 {
        return Ok(out);
    }
    let work = outer * red * inner;
    maybe_par(work, |par| -> Result<()> {
        if inner == 1 {
            let f = |o: usize| -> f32 {
                let row = &x[o * red..(o + 1) * red];
                match kind {
                    Reduce::Sum => sum_contig(row, par && outer < 4),
                    Reduce::Max => max_par(row, par && outer < 4),
                }
            };
            if par && outer >= 4 {
                out.par_iter_mut().enumerate().for_each(|(o, v)| *v = f(o));
            } else {
                out.iter_mut().enumerate().for_each(|(o, v)| *v = f(o));
            }
        } else {
            // dst = rows x[o, r0..r1, c0..c0 + w] accumulated in order r = r0..r1
            let body = |o: usize, c0: usize, r0: usize, r1: usize, dst: &mut [f32]| {
                let w = dst.len();
                let row = |r: usize| &x[(o * red + r) * inner + c0..(o * red + r) * inner + c0 + w];
                dst.copy_from_slice(row(r0));
                simd::dispatch(#[inline(always)] || {
                    for r in r0 + 1..r1 {
                        combine(kind, dst, row(r));
                    }
                })
            };
            if red == 0 {
                return Ok(()); // sums over an empty axis stay 0 (max with red == 0 was rejected above)
            }
            if red > RED_BLOCK {
                // a long reduced axis (a bias gradient: the batch): fixed blocks of RED_BLOCK rows
                // reduced on their own (in parallel when large), then the block results combined
                // in block order. The blocking never depends on the thread count.
                let nb = red.div_ceil(RED_BLOCK);
                let mut partial = alloc_for_overwrite(outer * nb * inner)?;
                let block = |ob: usize, dst: &mut [f32]| {
                    let (o, b) = (ob / nb, ob % nb);
                    body(o, 0, b * RED_BLOCK, (b * RED_BLOCK + RED_BLOCK).min(red), dst)
                };
                if par {
                    partial.par_chunks_mut(inner).enumerate().for_each(|(ob, dst)| block(ob, dst));
                } else {
                    partial.chunks_mut(inner).enumerate().for_each(|(ob, dst)| block(ob, dst));
                }
                for (o, row) in out.chunks_mut(inner).enumerate() {
                    let p = &partial[o * nb * inner..(o + 1) * nb * inner];
                    row.copy_from_slice(&p[..inner]);
                    simd::dispatch(#[inline(always)] || {
                        for src in p.chunks(inner).skip(1) {
                            combine(kind, row, src);
                        }
                    });
                }
                crate::tensor::recycle(partial);
                return Ok(());
            }
            let col_chunk = 1024usize;
            if par {
                out.par_chunks_mut(inner).enumerate().for_each(|(o, row)| {
                    row.par_chunks_mut(col_chunk).enumerate().for_each(|(c, dst)| body(o, c * col_chunk, 0, red, dst));
                });
            } else {
                out.chunks_mut(inner).enumerate().for_each(|(o, row)| body(o, 0, 0, red, row));
            }
        }
        Ok(())
    })?;
    Ok(out)
}

/// sum of e^(v - m) over a row, in 16 independent lanes (vectorises; fixed order)
#[inline(always)]
fn sum_exp(xr: &[f32], m: f32) -> f32 {
    let mut lanes = [0f32; 16];
    let mut it = xr.chunks_exact(16);
    for c in &mut it {
        for k in 0..16 {
            lanes[k] += simd::exp(c[k] - m);
        }
    }
    let mut s = 0f32;
    for &v in it.remainder() {
        s += simd::exp(v - m);
    }
    lanes.iter().sum::<f32>() + s
}

/// Run `row(x_row, out_row)` over rows of length `n` (`ow` output floats per row), in the pool
/// for large inputs, each task compiled for the CPU's widest SIMD.
fn for_each_row(x: &[f32], out: &mut [f32], n: usize, ow: usize, row: impl Fn(&[f32], &mut [f32]) + Sync + Send) {
    let rows_per_task = ((1usize << 14) / n.max(1)).max(1);
    // a plain `for` (not `for_each`, whose `fold` is a separate function that may not be inlined
    // into the dispatched frame, so the row body would run without the wide SIMD)
    let task = |xs: &[f32], os: &mut [f32]| {
        simd::dispatch(#[inline(always)] || {
            for (xr, o) in xs.chunks(n).zip(os.chunks_mut(ow)) {
                row(xr, o)
            }
        })
    };
    maybe_par(x.len(), |par| {
        if par {
            x.par_chunks(rows_per_task * n).zip(out.par_chunks_mut(rows_per_task * ow)).for_each(|(xs, os)| task(xs, os));
        } else {
            task(x, out);
        }
    });
}

/// Row-wise over rows of length `n`: softmax (`log = false`) or log-softmax (`log = true`).
pub fn softmax_rows(x: &[f32], n: usize, log: bool) -> Result<Vec<f32>> {
    let mut out = alloc_for_overwrite(x.len())?;
    if n == 0 {
        return Ok(out);
    }
    if n < 16 {
        narrow_softmax_rows(x, &mut out, n, log);
        return Ok(out);
    }
    for_each_row(x, &mut out, n, n, #[inline(always)] |xr, o| {
        let m = max_contig(xr);
        let m = if m.is_finite() { m } else if m.is_nan() { m } else { 0.0 };
        if log {
            // (v - m) - ln s, not v - (m + ln s): m + ln s rounds at the scale of m (1e-3 at |m| = 1e4)
            let ls = sum_exp(xr, m).ln();
            o.iter_mut().zip(xr).for_each(|(o, &v)| *o = (v - m) - ls);
        } else {
            o.iter_mut().zip(xr).for_each(|(o, &v)| *o = v - m);
            simd::exp_inplace(o);
            let inv = (1.0 / block_sum(o)) as f32;
            o.iter_mut().for_each(|o| *o *= inv);
        }
    });
    Ok(out)
}

/// `softmax_rows` for rows shorter than one vector (a classifier's logits): a row-by-row
/// exponential would be a scalar tail loop, so blocks of 64 rows take their row maxima, then one
/// vectorised exp over the whole block's shifted values, then per-row sums (3.5x faster at
/// 2048 x 10 than the row-wise body).
fn narrow_softmax_rows(x: &[f32], out: &mut [f32], n: usize, log: bool) {
    const R: usize = 64;
    let task = |xs: &[f32], os: &mut [f32]| {
        simd::dispatch(#[inline(always)] || {
            let mut ms = [0f32; R];
            for (xb, ob) in xs.chunks(R * n).zip(os.chunks_mut(R * n)) {
                let rows = xb.len() / n;
                for r in 0..rows {
                    // the row max with NaN propagated (as max_contig, without its 16-lane setup)
                    let (mut m, mut nan) = (f32::NEG_INFINITY, false);
                    for &v in &xb[r * n..(r + 1) * n] {
                        m = if v > m { v } else { m };
                        nan |= v.is_nan();
                    }
                    ms[r] = if m.is_finite() { m } else if nan { f32::NAN } else { 0.0 };
                }
                for ((orow, xrow), &m) in ob.chunks_mut(n).zip(xb.chunks(n)).zip(&ms[..rows]) {
                    orow.iter_mut().zip(xrow).for_each(|(o, &v)| *o = v - m);
                }
                simd::exp_inplace(ob);
                for r in 0..rows {
                    let row = &mut ob[r * n..(r + 1) * n];
                    let s: f32 = row.iter().sum();
                    if log {
                        // (v - m) - ln s, as in the row-wise body
                        let ls = s.ln();
                        row.iter_mut().zip(&xb[r * n..(r + 1) * n]).for_each(|(o, &v)| *o = (v - ms[r]) - ls);
                    } else {
                        let inv = 1.0 / s;
                        row.iter_mut().for_each(|o| *o *= inv);
                    }
                }
            }
        })
    };
    let per_task = R * n * 64;
    maybe_par(x.len(), |par| {
        if par {
            x.par_chunks(per_task).zip(out.par_chunks_mut(per_task)).for_each(|(xs, os)| task(xs, os));
        } else {
            task(x, out);
        }
    });
}

/// Row-wise logsumexp over rows of length `n`.
pub fn logsumexp_rows(x: &[f32], n: usize) -> Result<Vec<f32>> {
    let rows = if n == 0 { 0 } else { x.len() / n };
    let mut out = alloc_for_overwrite(rows)?;
    if rows == 0 {
        return Ok(out);
    }
    for_each_row(x, &mut out, n, 1, #[inline(always)] |xr, o| {
        let m = max_contig(xr);
        // NaN stays NaN; all -inf gives -inf; any +inf gives +inf
        o[0] = if m.is_nan() || m.is_infinite() { m } else { sum_exp(xr, m).ln() + m };
    });
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn sums() {
        let x: Vec<f32> = (0..24).map(|v| v as f32).collect();
        // (2, 3, 4) reduce middle
        let r = reduce3(&x, 2, 3, 4, Reduce::Sum).unwrap();
        assert_eq!(r, vec![12.0, 15.0, 18.0, 21.0, 48.0, 51.0, 54.0, 57.0]);
        let m = reduce3(&x, 1, 24, 1, Reduce::Max).unwrap();
        assert_eq!(m, vec![23.0]);
        let big: Vec<f32> = vec![1.0; 100_000];
        assert_eq!(reduce3(&big, 1, 100_000, 1, Reduce::Sum).unwrap()[0], 100_000.0);
        // relative error about 1e-7, as numpy's pairwise sum (one f32 accumulation over 1e6 values: 4e-6)
        let tenth: Vec<f32> = vec![0.1; 1_000_000];
        let s = reduce3(&tenth, 1, 1_000_000, 1, Reduce::Sum).unwrap()[0];
        assert!((s as f64 - 1e6 * 0.1f32 as f64).abs() < 0.05, "{s}");
    }
    #[test]
    fn nan_propagates_through_max() {
        let x = vec![1.0, f32::NAN, 3.0];
        assert!(reduce3(&x, 1, 3, 1, Reduce::Max).unwrap()[0].is_nan());
    }
    #[test]
    fn softmax_is_stable() {
        let x = vec![1e4f32, 0.0, -1e4];
        let s = softmax_rows(&x, 3, false).unwrap();
        assert_eq!(s, vec![1.0, 0.0, 0.0]);
        let l = logsumexp_rows(&x, 3).unwrap();
        assert_eq!(l, vec![1e4]);
        // log-softmax keeps full precision far from zero: log(1/3) at an offset of -1e4
        let ls = softmax_rows(&[-1e4f32; 3], 3, true).unwrap();
        assert!(ls.iter().all(|&v| (v + 3f32.ln()).abs() < 1e-6), "{ls:?}");
    }
}
