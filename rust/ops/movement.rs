//! Movement ops (reshape, transpose, broadcast_to, slicing, gathers, concatenation): forward and
//! VJP side by side. Every VJP is the adjoint movement, itself a registry op.
use std::sync::Arc;

use super::Op;
use crate::bail;
use crate::error::Result;
use crate::kernels::map::{strided_copy, View};
use crate::kernels::movement as k;
use crate::shape::{broadcast_shapes, broadcast_strides, norm_axis, numel, resolve_reshape, strides};
use crate::tape::build::*;
use crate::tape::Var;
use crate::tensor::Tensor;

fn perm_of(p: &[i64], nd: usize) -> Result<Vec<usize>> {
    if p.is_empty() {
        return Ok((0..nd).rev().collect());
    }
    if p.len() != nd {
        bail!(Value, "transpose: axes {p:?} don't match a tensor of dimension {nd}");
    }
    let mut out = Vec::with_capacity(nd);
    for &a in p {
        let a = norm_axis(a, nd, "transpose")?;
        if out.contains(&a) {
            bail!(Value, "transpose: repeated axis in {p:?}");
        }
        out.push(a);
    }
    Ok(out)
}

/// (offset, strides, out shape) of a strided slice, validated against `shape`.
fn slice_geom(shape: &[usize], start: &[i64], step: &[i64], len: &[i64]) -> Result<(isize, Vec<isize>, Vec<usize>)> {
    let nd = shape.len();
    if start.len() > nd || step.len() != start.len() || len.len() != start.len() {
        bail!(Index, "slice: too many indices ({}) for a tensor of dimension {nd}", start.len());
    }
    let st = strides(shape);
    let mut off = 0isize;
    let mut sts = st.clone();
    let mut out = shape.to_vec();
    for d in 0..start.len() {
        let (s, p, l) = (start[d], step[d], len[d]);
        if p == 0 {
            bail!(Value, "slice: step cannot be zero");
        }
        if l < 0 {
            bail!(Index, "slice: negative length {l}");
        }
        if l > 0 {
            let last = s + (l - 1) * p;
            if s < 0 || s >= shape[d] as i64 || last < 0 || last >= shape[d] as i64 {
                bail!(Index, "index {} is out of bounds for axis {d} with size {}", if s < 0 || s >= shape[d] as i64 { s } else { last }, shape[d]);
            }
            off += s as isize * st[d];
        }
        sts[d] = p as isize * st[d];
        out[d] = l as usize;
    }
    Ok((off, sts, out))
}

/// indices normalised to 0..dim (negative count from the end), or an IndexError
fn norm_idx(idx: &[i64], dim: usize, axis: usize) -> Result<Vec<usize>> {
    idx.iter()
        .map(|&i| {
            let j = if i < 0 { i + dim as i64 } else { i };
            if j < 0 || j >= dim as i64 {
                bail!(Index, "index {i} is out of bounds for axis {axis} with size {dim}");
            }
            Ok(j as usize)
        })
        .collect()
}

pub fn forward(op: &Op, ins: &[&Tensor]) -> Result<Tensor> {
    let x = ins[0];
    let sh = &x.shape;
    match op {
        Op::Reshape { shape } => Ok(x.reshaped(resolve_reshape(sh, shape)?)),
        Op::Transpose { perm } => {
            let p = perm_of(perm, x.ndim())?;
            let st = strides(sh);
            let out: Vec<usize> = p.iter().map(|&i| sh[i]).collect();
            Tensor::new(strided_copy(&out, View { data: x.data(), offset: 0, strides: p.iter().map(|&i| st[i]).collect() })?, out)
        }
        Op::BroadcastTo { shape } => {
            if shape.len() < sh.len() || broadcast_shapes(sh, shape, "broadcast_to")? != *shape {
                bail!(Shape, "broadcast_to: cannot broadcast a tensor of shape {sh:?} to shape {shape:?}");
            }
            let data = strided_copy(shape, View { data: x.data(), offset: 0, strides: broadcast_strides(sh, shape) }).map_err(|e| match e {
                crate::Error::Memory(m) => crate::Error::Memory(format!("{m}, to broadcast to shape {shape:?}")),
                e => e,
            })?;
            Tensor::new(data, shape.clone())
        }
        Op::Slice { start, step, len } => {
            let (off, sts, out) = slice_geom(sh, start, step, len)?;
            Tensor::new(strided_copy(&out, View { data: x.data(), offset: off, strides: sts })?, out)
        }
        Op::SliceGrad { in_shape, start, step } => {
            let len: Vec<i64> = sh[..start.len().min(sh.len())].iter().map(|&d| d as i64).collect();
            let (off, sts, out) = slice_geom(in_shape, start, step, &len)?;
            if out != *sh {
                bail!(Shape, "slice_grad: gradient of shape {sh:?} does not match the slice shape {out:?}");
            }
            Tensor::new(k::strided_scatter(x.data(), sh, numel(in_shape), off, &sts)?, in_shape.clone())
        }
        Op::Take { idx, axis } => {
            let a = norm_axis(*axis, x.ndim(), "take")?;
            let ix = norm_idx(idx, sh[a], a)?;
            let mut out = sh.clone();
            out[a] = ix.len();
            Tensor::new(k::take(x.data(), numel(&sh[..a]), sh[a], numel(&sh[a + 1..]), &ix)?, out)
        }
        Op::ScatterAdd { idx, axis, dim } => {
            let a = norm_axis(*axis, x.ndim(), "scatter_add")?;
            if sh[a] != idx.len() {
                bail!(Shape, "scatter_add: {} indices but axis {a} of the gradient has size {}", idx.len(), sh[a]);
            }
            let ix = norm_idx(idx, *dim, a)?;
            let mut out = sh.clone();
            out[a] = *dim;
            Tensor::new(k::scatter_add(x.data(), numel(&sh[..a]), *dim, numel(&sh[a + 1..]), &ix)?, out)
        }
        Op::Concatenate { axis } | Op::Stack { axis } => {
            let stack = matches!(op, Op::Stack { .. });
            let nd = x.ndim();
            let a = norm_axis(*axis, if stack { nd + 1 } else { nd }, op.name())?;
            let mut parts = Vec::with_capacity(ins.len());
            for (i, t) in ins.iter().enumerate() {
                let ok = if stack { t.shape == *sh } else { t.ndim() == nd && (0..nd).all(|d| d == a || t.shape[d] == sh[d]) };
                if !ok {
                    bail!(Shape, "{}: input {i} has shape {:?}, which does not match input 0's shape {sh:?}{}", op.name(), t.shape,
                        if stack { "" } else { " outside the concatenation axis" });
                }
                parts.push((t.data(), if stack { 1 } else { t.shape[a] }));
            }
            let mut out = sh.clone();
            if stack {
                out.insert(a, ins.len());
            } else {
                out[a] = parts.iter().map(|p| p.1).sum();
            }
            let inner = numel(&out[a + 1..]);
            Tensor::new(k::concat(&parts, numel(&out[..a]), inner)?, out)
        }
        _ => unreachable!(),
    }
}

/// Slice `g` along `axis` from `start` with length `len`.
fn narrow(g: &Var, axis: usize, start: usize, len: usize) -> Result<Var> {
    let nd = g.shape().len();
    let mut st = vec![0i64; axis + 1];
    let mut sp = vec![1i64; axis + 1];
    let mut ln: Vec<i64> = g.shape()[..=axis].iter().map(|&d| d as i64).collect();
    st[axis] = start as i64;
    sp[axis] = 1;
    ln[axis] = len as i64;
    let _ = nd;
    Var::apply(Op::Slice { start: st, step: sp, len: ln }, &[g.clone()])
}

pub fn vjp(op: &Op, ins: &[Var], g: &Var) -> Result<Vec<Option<Var>>> {
    let x = &ins[0];
    let xs = x.shape();
    Ok(match op {
        // reshape back
        Op::Reshape { .. } => vec![Some(reshape(g, &xs)?)],
        // inverse permutation
        Op::Transpose { perm } => {
            let p = perm_of(perm, xs.len())?;
            let mut inv = vec![0i64; p.len()];
            for (i, &pi) in p.iter().enumerate() {
                inv[pi] = i as i64;
            }
            vec![Some(Var::apply(Op::Transpose { perm: inv }, &[g.clone()])?)]
        }
        // sum over the broadcast dimensions
        Op::BroadcastTo { .. } => vec![Some(sum_to(g, &xs)?)],
        // scatter into zeros of the input's shape
        Op::Slice { start, step, .. } => vec![Some(Var::apply(Op::SliceGrad { in_shape: xs, start: start.clone(), step: step.clone() }, &[g.clone()])?)],
        // adjoint of the scatter is the slice
        Op::SliceGrad { start, step, .. } => {
            let len = xs[..start.len()].iter().map(|&d| d as i64).collect();
            vec![Some(Var::apply(Op::Slice { start: start.clone(), step: step.clone(), len }, &[g.clone()])?)]
        }
        // gather <-> scatter-add
        Op::Take { idx, axis } => {
            let a = norm_axis(*axis, xs.len(), "take")?;
            vec![Some(Var::apply(Op::ScatterAdd { idx: Arc::clone(idx), axis: *axis, dim: xs[a] }, &[g.clone()])?)]
        }
        Op::ScatterAdd { idx, axis, .. } => vec![Some(Var::apply(Op::Take { idx: Arc::clone(idx), axis: *axis }, &[g.clone()])?)],
        // each input gets its slab of the gradient
        Op::Concatenate { axis } => {
            let a = norm_axis(*axis, xs.len(), "concatenate")?;
            let mut at = 0;
            let mut out = Vec::with_capacity(ins.len());
            for v in ins {
                let d = v.shape()[a];
                out.push(if v.requires_grad() { Some(narrow(g, a, at, d)?) } else { None });
                at += d;
            }
            out
        }
        Op::Stack { axis } => {
            let a = norm_axis(*axis, xs.len() + 1, "stack")?;
            let mut out = Vec::with_capacity(ins.len());
            for (i, v) in ins.iter().enumerate() {
                out.push(if v.requires_grad() { Some(reshape(&narrow(g, a, i, 1)?, &xs)?) } else { None });
            }
            out
        }
        _ => unreachable!(),
    })
}
