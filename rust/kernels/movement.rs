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

/// dst (cols x rows, row-major) = the transpose of `src`'s (rows x cols) matrix whose rows start
/// `src_rs` floats apart. AVX-512 16x16 tiles (four rounds of in-register shuffles) where the CPU
/// has it, else 8x8 blocks through a scalar loop; edges scalar.
pub fn transpose(dst: &mut [f32], src: &[f32], rows: usize, cols: usize, src_rs: usize) {
    assert!(dst.len() >= rows * cols && (rows == 0 || src.len() >= (rows - 1) * src_rs + cols));
    let (r16, c16) = (rows / 16 * 16, cols / 16 * 16);
    #[cfg(target_arch = "x86_64")]
    let wide = super::simd::level() == 2;
    #[cfg(not(target_arch = "x86_64"))]
    let wide = false;
    if wide {
        #[cfg(target_arch = "x86_64")]
        for i in (0..r16).step_by(16) {
            for j in (0..c16).step_by(16) {
                // SAFETY: AVX-512F is present; the tile's 16 rows of 16 floats lie inside src
                // (i + 15 < rows, j + 15 < cols) and its 16 columns inside dst (asserted above)
                unsafe { tile16(src.as_ptr().add(i * src_rs + j), src_rs, dst.as_mut_ptr().add(j * rows + i), rows) };
            }
        }
    } else {
        for i0 in (0..r16).step_by(8) {
            for j0 in (0..c16).step_by(8) {
                for i in i0..i0 + 8 {
                    for j in j0..j0 + 8 {
                        dst[j * rows + i] = src[i * src_rs + j];
                    }
                }
            }
        }
    }
    // the right edge (all rows) and the bottom edge (the tiled columns)
    for i in 0..rows {
        for j in c16..cols {
            dst[j * rows + i] = src[i * src_rs + j];
        }
    }
    for i in r16..rows {
        for j in 0..c16 {
            dst[j * rows + i] = src[i * src_rs + j];
        }
    }
}

/// `transpose`, split across the pool by blocks of source columns (each task writes its own
/// block of dst rows); call it inside the pool.
pub fn transpose_par(dst: &mut [f32], src: &[f32], rows: usize, cols: usize, src_rs: usize) {
    let chunk = cols.div_ceil(rayon::current_num_threads()).next_multiple_of(16);
    dst[..rows * cols].par_chunks_mut(chunk * rows).enumerate().for_each(|(c, d)| {
        transpose(d, &src[c * chunk..], rows, d.len() / rows, src_rs);
    });
}

/// One 16x16 tile: rows of `s` (stride `srs`) become columns of `d` (stride `drs`). For each
/// block of 4 source columns, register q holds in 128-bit lane L the 4 floats of row 4L + q (four
/// 128-bit loads): a 4x4 transpose inside the lanes (8 unpacks) then leaves in lane L of register
/// c the rows 4L..4L+3 of column c, i.e. each register is one output column. This takes the
/// cross-lane stage to the loads: 32 shuffles per tile instead of 64 (256x256: 8.4 -> ... us).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn tile16(s: *const f32, srs: usize, d: *mut f32, drs: usize) {
    use std::arch::x86_64::*;
    let lo = |a: __m512, b: __m512| _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(a), _mm512_castps_pd(b)));
    let hi = |a: __m512, b: __m512| _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(a), _mm512_castps_pd(b)));
    for cb in 0..4 {
        let col = s.add(4 * cb);
        // x[q], lane L = row 4L + q, columns 4cb..4cb+3
        let x: [__m512; 4] = std::array::from_fn(|q| {
            let v = _mm512_castps128_ps512(_mm_loadu_ps(col.add(q * srs)));
            let v = _mm512_insertf32x4::<1>(v, _mm_loadu_ps(col.add((4 + q) * srs)));
            let v = _mm512_insertf32x4::<2>(v, _mm_loadu_ps(col.add((8 + q) * srs)));
            _mm512_insertf32x4::<3>(v, _mm_loadu_ps(col.add((12 + q) * srs)))
        });
        // in-lane 4x4 transpose: t0 = (r0c0 r1c0 r0c1 r1c1), t1 = (r0c2 r1c2 r0c3 r1c3), ...
        let t0 = _mm512_unpacklo_ps(x[0], x[1]);
        let t1 = _mm512_unpackhi_ps(x[0], x[1]);
        let t2 = _mm512_unpacklo_ps(x[2], x[3]);
        let t3 = _mm512_unpackhi_ps(x[2], x[3]);
        let dc = d.add(4 * cb * drs);
        _mm512_storeu_ps(dc, lo(t0, t2));
        _mm512_storeu_ps(dc.add(drs), hi(t0, t2));
        _mm512_storeu_ps(dc.add(2 * drs), lo(t1, t3));
        _mm512_storeu_ps(dc.add(3 * drs), hi(t1, t3));
    }
}

#[cfg(test)]
mod transpose_tests {
    use super::transpose;
    #[test]
    fn transpose_matches_naive_at_every_edge() {
        for (rows, cols, pad) in [(1, 1, 0), (16, 16, 0), (17, 33, 3), (256, 256, 0), (40, 7, 1), (5, 48, 0), (300, 784, 16), (31, 16, 2)] {
            let rs = cols + pad;
            let src: Vec<f32> = (0..rows * rs).map(|i| i as f32 * 0.25 - 3.0).collect();
            let mut dst = vec![f32::NAN; rows * cols];
            transpose(&mut dst, &src, rows, cols, rs);
            for i in 0..rows {
                for j in 0..cols {
                    assert_eq!(dst[j * rows + i], src[i * rs + j], "{rows}x{cols} at ({i}, {j})");
                }
            }
        }
    }
}
