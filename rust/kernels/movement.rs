//! Gathers, scatters and concatenation over an (outer, dim, inner) layout.
use rayon::prelude::*;

use super::maybe_par;
use crate::error::Result;
use crate::tensor::{alloc, alloc_for_overwrite};

/// out[o, j, :] = x[o, idx[j], :]  (indices already normalised to 0..dim).
pub fn take(x: &[f32], outer: usize, dim: usize, inner: usize, idx: &[usize]) -> Result<Vec<f32>> {
    let k = idx.len();
    let mut out = alloc_for_overwrite(outer * k * inner)?;
    if out.is_empty() {
        return Ok(out);
    }
    let body = |o: usize, dst: &mut [f32]| {
        for (j, &i) in idx.iter().enumerate() {
            let s = (o * dim + i) * inner;
            dst[j * inner..(j + 1) * inner].copy_from_slice(&x[s..s + inner]);
        }
    };
    maybe_par(out.len(), |par| {
        if par && outer > 1 {
            out.par_chunks_mut(k * inner).enumerate().for_each(|(o, d)| body(o, d));
        } else if par {
            // one outer block: split the index list into fixed chunks of rows
            let rows = (1usize << 12) / inner.max(1) + 1;
            out.par_chunks_mut(rows * inner).enumerate().for_each(|(c, d)| {
                for (jj, row) in d.chunks_mut(inner).enumerate() {
                    let s = idx[c * rows + jj] * inner;
                    row.copy_from_slice(&x[s..s + inner]);
                }
            });
        } else {
            out.chunks_mut(k * inner).enumerate().for_each(|(o, d)| body(o, d));
        }
    });
    Ok(out)
}

/// out = zeros(outer, dim, inner); out[o, idx[j], :] += g[o, j, :]  (repeated indices add up,
/// in index order, so the result is deterministic).
pub fn scatter_add(g: &[f32], outer: usize, dim: usize, inner: usize, idx: &[usize]) -> Result<Vec<f32>> {
    let k = idx.len();
    let mut out = alloc(outer * dim * inner)?;
    if out.is_empty() {
        return Ok(out);
    }
    let body = |o: usize, dst: &mut [f32]| {
        for (j, &i) in idx.iter().enumerate() {
            let src = &g[(o * k + j) * inner..(o * k + j + 1) * inner];
            dst[i * inner..(i + 1) * inner].iter_mut().zip(src).for_each(|(d, &s)| *d += s);
        }
    };
    maybe_par(g.len(), |par| {
        if par && outer > 1 {
            out.par_chunks_mut(dim * inner).enumerate().for_each(|(o, d)| body(o, d));
        } else {
            out.chunks_mut(dim * inner).enumerate().for_each(|(o, d)| body(o, d));
        }
    });
    Ok(out)
}

/// Concatenate parts laid out as (outer, dim_p, inner) along the middle axis.
pub fn concat(parts: &[(&[f32], usize)], outer: usize, inner: usize) -> Result<Vec<f32>> {
    let total: usize = parts.iter().map(|p| p.1).sum();
    let mut out = alloc_for_overwrite(outer * total * inner)?;
    if out.is_empty() {
        return Ok(out);
    }
    let body = |o: usize, dst: &mut [f32]| {
        let mut at = 0;
        for &(x, d) in parts {
            let w = d * inner;
            dst[at..at + w].copy_from_slice(&x[o * w..(o + 1) * w]);
            at += w;
        }
    };
    maybe_par(out.len(), |par| {
        if par {
            out.par_chunks_mut(total * inner).enumerate().for_each(|(o, d)| body(o, d));
        } else {
            out.chunks_mut(total * inner).enumerate().for_each(|(o, d)| body(o, d));
        }
    });
    Ok(out)
}

/// Write `g` (shape `gshape`) into a zero tensor of `n` elements at positions
/// offset + sum(i_d * strides_d): the adjoint of a strided slice (positions never collide).
pub fn strided_scatter(g: &[f32], gshape: &[usize], n: usize, offset: isize, strides: &[isize]) -> Result<Vec<f32>> {
    let mut out = alloc(n)?;
    if g.is_empty() {
        return Ok(out);
    }
    let nd = gshape.len();
    let mut idx = vec![0usize; nd];
    for &v in g {
        let mut pos = offset;
        for d in 0..nd {
            pos += idx[d] as isize * strides[d];
        }
        out[pos as usize] = v;
        for d in (0..nd).rev() {
            idx[d] += 1;
            if idx[d] < gshape[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    Ok(out)
}
