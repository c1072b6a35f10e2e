//! Softmax family and the fused softmax cross-entropy: stable forwards and VJPs side by side.
use super::Op;
use crate::bail;
use crate::error::Result;
use crate::kernels::map::{strided_copy, View};
use crate::kernels::reduce::{logsumexp_rows, softmax_rows};
use crate::shape::{norm_axes, norm_axis, numel, reduced_shape, strides};
use crate::tape::build::*;
use crate::tape::Var;
use crate::tensor::{alloc, Tensor};

/// Copy `x` with axes permuted by `perm`.
fn permute(x: &[f32], shape: &[usize], perm: &[usize]) -> Result<Vec<f32>> {
    let st = strides(shape);
    let out: Vec<usize> = perm.iter().map(|&p| shape[p]).collect();
    strided_copy(&out, View { data: x, offset: 0, strides: perm.iter().map(|&p| st[p]).collect() })
}

/// Apply a row kernel along `axis` (moving that axis last and back when it is not last).
fn along_axis(x: &Tensor, axis: usize, f: impl Fn(&[f32], usize) -> Result<Vec<f32>>) -> Result<Tensor> {
    let nd = x.ndim();
    let n = x.shape[axis];
    if axis + 1 == nd {
        return Tensor::new(f(x.data(), n)?, x.shape.clone());
    }
    let mut perm: Vec<usize> = (0..nd).filter(|&d| d != axis).collect();
    perm.push(axis);
    let moved_shape: Vec<usize> = perm.iter().map(|&p| x.shape[p]).collect();
    let y = f(&permute(x.data(), &x.shape, &perm)?, n)?;
    let mut inv = vec![0; nd];
    for (i, &p) in perm.iter().enumerate() {
        inv[p] = i;
    }
    Tensor::new(permute(&y, &moved_shape, &inv)?, x.shape.clone())
}

fn check_labels(logits: &Tensor, labels: &Tensor, op: &str) -> Result<(usize, usize)> {
    if logits.ndim() != 2 || labels.ndim() != 1 || labels.shape[0] != logits.shape[0] {
        bail!(Shape, "{op}: expected logits of shape (N, C) and labels of shape (N,), got {:?} and {:?}", logits.shape, labels.shape);
    }
    let (n, c) = (logits.shape[0], logits.shape[1]);
    for (i, &l) in labels.data().iter().enumerate() {
        if !(l >= 0.0 && (l as usize) < c && l.fract() == 0.0) {
            bail!(Value, "{op}: label {l} at position {i} is out of range for {c} classes (labels must be integers in [0, {c}))");
        }
    }
    Ok((n, c))
}

pub fn forward(op: &Op, ins: &[&Tensor]) -> Result<Tensor> {
    let x = ins[0];
    match op {
        Op::Softmax { axis } => along_axis(x, norm_axis(*axis, x.ndim(), "softmax")?, |d, n| softmax_rows(d, n, false)),
        Op::LogSoftmax { axis } => along_axis(x, norm_axis(*axis, x.ndim(), "log_softmax")?, |d, n| softmax_rows(d, n, true)),
        Op::LogSumExp { axes, keepdims } => {
            let ax = norm_axes(axes, x.ndim(), "logsumexp")?;
            let out_shape = reduced_shape(&x.shape, &ax, *keepdims);
            let kept: Vec<usize> = (0..x.ndim()).filter(|d| !ax.contains(d)).collect();
            let n = numel(&ax.iter().map(|&a| x.shape[a]).collect::<Vec<_>>());
            let trailing = ax.iter().enumerate().all(|(i, &a)| a == x.ndim() - ax.len() + i);
            let data = if trailing {
                logsumexp_rows(x.data(), n)?
            } else {
                let perm: Vec<usize> = kept.iter().chain(ax.iter()).copied().collect();
                logsumexp_rows(&permute(x.data(), &x.shape, &perm)?, n)?
            };
            let data = if n == 0 { vec![f32::NEG_INFINITY; numel(&out_shape)] } else { data };
            Tensor::new(data, out_shape)
        }
        // loss_i = logsumexp(z_i) - z_i[label_i] = -log_softmax(z_i)[label_i] (which keeps precision at large |z|)
        Op::SoftmaxXent => {
            let (n, c) = check_labels(x, ins[1], "cross_entropy")?;
            let ls = softmax_rows(x.data(), c, true)?;
            let mut out = alloc(n)?;
            for i in 0..n {
                out[i] = -ls[i * c + ins[1].data()[i] as usize];
            }
            crate::tensor::recycle(ls);
            Tensor::new(out, vec![n])
        }
        // (softmax(z) - onehot(label)) * g[:, None]
        Op::SoftmaxXentBackward => {
            let (n, c) = check_labels(x, ins[1], "cross_entropy")?;
            if ins[2].shape != [n] && ins[2].numel() != 1 {
                bail!(Shape, "softmax_xent_backward: gradient of shape {:?} does not match {n} examples", ins[2].shape);
            }
            let mut p = softmax_rows(x.data(), c, false)?;
            let g = ins[2].data();
            for i in 0..n {
                let gi = if g.len() == 1 { g[0] } else { g[i] };
                p[i * c + ins[1].data()[i] as usize] -= 1.0;
                p[i * c..(i + 1) * c].iter_mut().for_each(|v| *v *= gi);
            }
            Tensor::new(p, vec![n, c])
        }
        _ => unreachable!(),
    }
}

pub fn vjp(op: &Op, ins: &[Var], y: &Var, g: &Var) -> Result<Vec<Option<Var>>> {
    let x = &ins[0];
    Ok(match op {
        // d softmax: y * (g - sum(g * y, axis))
        Op::Softmax { axis } => {
            let s = sum(&mul(g, y)?, vec![*axis], true)?;
            vec![Some(mul(y, &sub(g, &s)?)?)]
        }
        // d log_softmax: g - exp(y) * sum(g, axis)
        Op::LogSoftmax { axis } => {
            let s = sum(g, vec![*axis], true)?;
            vec![Some(sub(g, &mul(&exp(y)?, &s)?)?)]
        }
        // d logsumexp: g * softmax(x) over the axes = g * e / sum(e) with e = exp(x - y). Normalising by
        // sum(e) cancels the f32 rounding of y (ulp 1e-3 at |y| = 1e4), which exp(x - y) alone would keep.
        // (y stays on the graph, not detached: a replayed program must shift by the current y.)
        Op::LogSumExp { axes, .. } => {
            let xs = x.shape();
            let ax = norm_axes(axes, xs.len(), "logsumexp")?;
            let ks = reduced_shape(&xs, &ax, true);
            let e = exp(&sub(x, &reshape(y, &ks)?)?)?;
            let p = div(&e, &sum(&e, ax.iter().map(|&a| a as i64).collect(), true)?)?;
            vec![Some(mul(&reshape(g, &ks)?, &p)?)]
        }
        // d xent / d logits = softmax - onehot (fused); labels get no gradient
        Op::SoftmaxXent => vec![Some(Var::apply(Op::SoftmaxXentBackward, &[x.clone(), ins[1].clone(), g.clone()])?), None],
        // second order: d/dz = gin * p * (gg - sum(p gg)), d/dgin = sum(gg * (p - onehot))
        Op::SoftmaxXentBackward => {
            let (labels, gin) = (&ins[1], &ins[2]);
            let p = Var::apply(Op::Softmax { axis: -1 }, &[x.clone()])?;
            let n = x.shape()[0];
            let gcol = reshape(&broadcast_to(gin, &[n])?, &[n, 1])?;
            let inner = sub(g, &sum(&mul(&p, g)?, vec![-1], true)?)?;
            let gz = mul(&mul(&p, &inner)?, &gcol)?;
            let pm = Var::apply(Op::SoftmaxXentBackward, &[x.clone(), labels.clone(), Var::scalar(1.0)])?;
            let gg = sum_to(&sum(&mul(g, &pm)?, vec![-1], false)?, &gin.shape())?;
            vec![Some(gz), None, Some(gg)]
        }
        _ => unreachable!(),
    })
}
