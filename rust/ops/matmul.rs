//! Batched matmul with numpy batch broadcasting; `ta`/`tb` read an operand transposed (no copy).
//! C = op(A) op(B):  dop(A) = G op(B)^T,  dop(B) = op(A)^T G, each again one matmul.
use crate::bail;
use crate::error::Result;
use crate::kernels::gemm::{self, Operand};
use crate::shape::{broadcast_shapes, broadcast_strides, numel};
use crate::tape::build::*;
use crate::tape::Var;
use crate::tensor::Tensor;

/// (m, k) of op(X) for a stored matrix and its transpose flag
fn dims(s: &[usize], t: bool) -> (usize, usize) {
    let (r, c) = (s[s.len() - 2], s[s.len() - 1]);
    if t { (c, r) } else { (r, c) }
}

pub fn out_shape(a: &[usize], b: &[usize], ta: bool, tb: bool) -> Result<(Vec<usize>, Vec<usize>, usize, usize, usize)> {
    if a.len() < 2 || b.len() < 2 {
        bail!(Shape, "matmul: operands must have at least 2 dimensions, got shapes {a:?} and {b:?}");
    }
    let (m, k) = dims(a, ta);
    let (k2, n) = dims(b, tb);
    if k != k2 {
        bail!(Shape, "matmul: shapes {a:?} and {b:?} are not aligned: {k} (dim of a) != {k2} (dim of b)");
    }
    let batch = match broadcast_shapes(&a[..a.len() - 2], &b[..b.len() - 2], "matmul") {
        Ok(s) => s,
        Err(_) => bail!(Shape, "matmul: the batch dimensions of shapes {a:?} and {b:?} cannot be broadcast together"),
    };
    let mut out = batch.clone();
    out.extend([m, n]);
    Ok((out, batch, m, k, n))
}

/// Offsets of each batch's matrix in a and b (broadcast batch dims read offset 0).
fn batch_offsets(a: &Tensor, b: &Tensor, batch: &[usize]) -> (Vec<usize>, Vec<usize>) {
    let nb = numel(batch);
    let offsets = |s: &[usize]| -> Vec<usize> {
        let bs = &s[..s.len() - 2];
        let mat = s[s.len() - 2] * s[s.len() - 1];
        let st = broadcast_strides(bs, batch);
        (0..nb)
            .map(|mut i| {
                let mut off = 0isize;
                for d in (0..batch.len()).rev() {
                    off += (i % batch[d]) as isize * st[d];
                    i /= batch[d];
                }
                off as usize * mat
            })
            .collect()
    };
    (offsets(&a.shape), offsets(&b.shape))
}

fn operands<'a>(a: &'a Tensor, b: &'a Tensor, ta: bool, tb: bool) -> (Operand<'a>, Operand<'a>) {
    let (ar, ac) = (a.shape[a.ndim() - 2], a.shape[a.ndim() - 1]);
    let (br, bc) = (b.shape[b.ndim() - 2], b.shape[b.ndim() - 1]);
    (Operand { data: a.data(), rows: ar, cols: ac, trans: ta }, Operand { data: b.data(), rows: br, cols: bc, trans: tb })
}

pub fn forward(a: &Tensor, b: &Tensor, ta: bool, tb: bool) -> Result<Tensor> {
    let (out, batch, m, k, n) = out_shape(&a.shape, &b.shape, ta, tb)?;
    let (a_off, b_off) = batch_offsets(a, b, &batch);
    let (oa, ob) = operands(a, b, ta, tb);
    let data = gemm::matmul(&oa, &ob, &a_off, &b_off, m, k, n)?;
    Tensor::new(data, out)
}

/// `dst += beta * op(A) op(B)` in place (`dst = beta * op(A) op(B)` without `accumulate`), where
/// `dst` has the product's shape: an executor's epilogue (the compiled step writes a plain-SGD
/// weight update straight into the weight, or a scaled gradient straight into an all-reduce
/// buffer).
#[allow(clippy::too_many_arguments)]
pub fn product_into(a: &Tensor, b: &Tensor, ta: bool, tb: bool, dst: &mut [f32], dst_shape: &[usize], beta: f32, accumulate: bool) -> Result<()> {
    let (out, batch, m, k, n) = out_shape(&a.shape, &b.shape, ta, tb)?;
    if out != dst_shape {
        bail!(Shape, "matmul into a buffer: product shape {out:?} does not match destination shape {dst_shape:?}");
    }
    if k == 0 {
        if !accumulate {
            dst.iter_mut().for_each(|x| *x = 0.0);
        }
        return Ok(());
    }
    let (a_off, b_off) = batch_offsets(a, b, &batch);
    let (oa, ob) = operands(a, b, ta, tb);
    gemm::matmul_into(dst, gemm::Epilogue { accumulate, alpha: 1.0, beta }, &oa, &ob, &a_off, &b_off, m, k, n);
    Ok(())
}

pub fn vjp(a: &Var, b: &Var, ta: bool, tb: bool, g: &Var) -> Result<Vec<Option<Var>>> {
    vjp_some(a, b, ta, tb, g, a.requires_grad(), b.requires_grad())
}

/// `vjp` for the operands selected by `want_a` / `want_b` (None for the others).
pub fn vjp_some(a: &Var, b: &Var, ta: bool, tb: bool, g: &Var, want_a: bool, want_b: bool) -> Result<Vec<Option<Var>>> {
    let ga = if want_a {
        // ta=false: dA = G op(B)^T ; ta=true: dA = op(B) G^T
        let d = if ta { matmul(b, g, tb, true)? } else { matmul(g, b, false, !tb)? };
        Some(sum_to(&d, &a.shape())?)
    } else {
        None
    };
    let gb = if want_b {
        // tb=false: dB = op(A)^T G ; tb=true: dB = G^T op(A)
        let d = if tb { matmul(g, a, true, ta)? } else { matmul(a, g, !ta, false)? };
        Some(sum_to(&d, &b.shape())?)
    } else {
        None
    };
    Ok(vec![ga, gb])
}

/// The gradient of `b` in `a @ b` (or `a @ bᵀ`) with `a` a one-row matrix (a Linear layer at
/// batch 1), as the two vectors of its outer product instead of a tensor: `dB = aᵀ G` (`tb`
/// false) or `Gᵀ a` (`tb` true), the same rule as `vjp`'s. None where that rule is not a
/// product of two single rows.
pub fn vjp_b_outer(a: &Var, b: &Var, ta: bool, tb: bool, g: &Var) -> Option<Outer> {
    let (sa, sb) = (a.shape(), b.shape());
    if ta || sa.len() != 2 || sb.len() != 2 || sa[0] != 1 || sa[1] == 0 {
        return None;
    }
    let (a, g) = (a.value(), g.value());
    if g.shape.len() != 2 || g.shape[0] != 1 || g.shape[1] == 0 {
        return None;
    }
    Some(if tb { Outer { a: g, g: a } } else { Outer { a, g } })
}

/// A matrix kept as the two vectors of its outer product `aᵀ g`, `a` (1 x m) and `g` (1 x n): a
/// weight gradient that `backward` leaves unevaluated at batch 1 (`tape::Grad::Outer`). Any range
/// of its elements is computed on demand, each with the same bits (`gemm::outer_range`).
#[derive(Clone, Debug)]
pub struct Outer {
    pub a: Tensor,
    pub g: Tensor,
}

impl Outer {
    pub fn shape(&self) -> Vec<usize> {
        vec![self.a.numel(), self.g.numel()]
    }
    pub fn numel(&self) -> usize {
        self.a.numel() * self.g.numel()
    }
    /// Elements `start..start + out.len()` of the product, row-major.
    pub fn fill(&self, start: usize, out: &mut [f32]) {
        gemm::outer_range(self.a.data(), self.g.data(), start, out)
    }
    /// `p[i] += beta * self[start + i]` (plain SGD's update, `p + beta g`), the elements computed
    /// as `fill` computes them.
    pub fn axpy(&self, start: usize, p: &mut [f32], beta: f32) {
        gemm::outer_axpy(self.a.data(), self.g.data(), start, p, beta)
    }
    /// The whole product as a tensor.
    pub fn materialize(&self) -> Result<Tensor> {
        let mut data = crate::tensor::alloc_for_overwrite(self.numel())?;
        self.fill(0, &mut data);
        Tensor::new(data, self.shape())
    }
}
