//! Reductions over axes (sum, mean, max): forward and VJP side by side. Each VJP broadcasts the
//! incoming gradient back over the reduced axes.
use super::Op;
use crate::error::Result;
use crate::kernels::map::{strided_copy, View};
use crate::kernels::reduce::{reduce3, Reduce};
use crate::shape::{norm_axes, numel, reduced_shape, strides};
use crate::tape::build::*;
use crate::tape::Var;
use crate::tensor::Tensor;

/// Reduce `x` over sorted `axes` -> values in the order of the kept axes. Contiguous axis blocks
/// reduce in place; otherwise the reduced axes are first moved last (one strided copy).
pub fn reduce_axes(x: &Tensor, axes: &[usize], kind: Reduce) -> Result<Vec<f32>> {
    let sh = &x.shape;
    let contiguous = axes.windows(2).all(|w| w[1] == w[0] + 1);
    if axes.is_empty() {
        return Ok(x.data().to_vec());
    }
    if contiguous {
        let (a0, a1) = (axes[0], *axes.last().unwrap() + 1);
        return reduce3(x.data(), numel(&sh[..a0]), numel(&sh[a0..a1]), numel(&sh[a1..]), kind);
    }
    let kept: Vec<usize> = (0..sh.len()).filter(|i| !axes.contains(i)).collect();
    let perm: Vec<usize> = kept.iter().chain(axes.iter()).copied().collect();
    let st = strides(sh);
    let pshape: Vec<usize> = perm.iter().map(|&p| sh[p]).collect();
    let moved = strided_copy(&pshape, View { data: x.data(), offset: 0, strides: perm.iter().map(|&p| st[p]).collect() })?;
    let outer = numel(&kept.iter().map(|&k| sh[k]).collect::<Vec<_>>());
    reduce3(&moved, outer, numel(&axes.iter().map(|&a| sh[a]).collect::<Vec<_>>()), 1, kind)
}

pub fn forward(op: &Op, x: &Tensor) -> Result<Tensor> {
    let (axes, keepdims) = match op {
        Op::Sum { axes, keepdims } | Op::Mean { axes, keepdims } | Op::Max { axes, keepdims } => (axes, *keepdims),
        _ => unreachable!(),
    };
    let ax = norm_axes(axes, x.ndim(), op.name())?;
    let out_shape = reduced_shape(&x.shape, &ax, keepdims);
    let mut data = match op {
        Op::Max { .. } => reduce_axes(x, &ax, Reduce::Max).map_err(|e| match e {
            crate::Error::Value(_) => crate::Error::Value(format!("max: cannot reduce a zero-size tensor of shape {:?} (no identity)", x.shape)),
            e => e,
        })?,
        _ => reduce_axes(x, &ax, Reduce::Sum)?,
    };
    if let Op::Mean { .. } = op {
        let n = ax.iter().map(|&a| x.shape[a]).product::<usize>() as f32;
        let inv = 1.0 / n; // 0/0 -> NaN for an empty mean, as numpy
        data.iter_mut().for_each(|v| *v *= inv);
    }
    Tensor::new(data, out_shape)
}

/// Gradient of a reduction, broadcast back to the input's shape.
pub fn vjp(op: &Op, x: &Var, y: &Var, g: &Var) -> Result<Var> {
    let xs = x.shape();
    let (axes, _) = match op {
        Op::Sum { axes, keepdims } | Op::Mean { axes, keepdims } | Op::Max { axes, keepdims } => (axes, keepdims),
        _ => unreachable!(),
    };
    let ax = norm_axes(axes, xs.len(), op.name())?;
    let kshape = reduced_shape(&xs, &ax, true);
    let gk = reshape(g, &kshape)?;
    match op {
        // d sum = 1 on every reduced element
        Op::Sum { .. } => broadcast_to(&gk, &xs),
        // d mean = 1/n
        Op::Mean { .. } => {
            let n = ax.iter().map(|&a| xs[a]).product::<usize>() as f32;
            broadcast_to(&scale(&gk, 1.0 / n)?, &xs)
        }
        // d max = [x == max] / (number of maxima): ties share the gradient
        Op::Max { .. } => {
            let yk = reshape(y, &kshape)?;
            let mask = cmp(Op::Eq, x, &yk)?;
            let count = sum(&mask, ax.iter().map(|&a| a as i64).collect(), true)?;
            mul(&mask, &div(&gk, &count)?)
        }
        _ => unreachable!(),
    }
}
