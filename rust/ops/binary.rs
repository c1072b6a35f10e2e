//! Binary elementwise ops with numpy broadcasting: forward `f` and VJP side by side. Each VJP
//! returns gradients at the broadcast output shape; `unbroadcast` sums them back to each input.
#![allow(unused_variables)]
use super::Op;
use crate::error::Result;
use crate::kernels::map::{self, View};
use crate::shape::{broadcast_shapes, broadcast_strides};
use crate::tape::build::*;
use crate::tape::Var;
use crate::tensor::Tensor;

fn view<'a>(t: &'a Tensor, out: &[usize]) -> View<'a> {
    View { data: t.data(), offset: 0, strides: broadcast_strides(&t.shape, out) }
}

#[inline(always)]
fn b(c: bool) -> f32 {
    c as u8 as f32
}

/// max/min that propagate NaN like numpy.maximum / numpy.minimum
#[inline(always)]
fn fmax(a: f32, c: f32) -> f32 {
    if a.is_nan() || c.is_nan() { f32::NAN } else if a >= c { a } else { c }
}
#[inline(always)]
fn fmin(a: f32, c: f32) -> f32 {
    if a.is_nan() || c.is_nan() { f32::NAN } else if a <= c { a } else { c }
}

/// Gradient mask of maximum/minimum w.r.t. `a`: 1 where a wins, 1/2 on ties.
fn win_mask(strict: Op, a: &Var, c: &Var) -> Result<Var> {
    add(&cmp(strict, a, c)?, &scale(&cmp(Op::Eq, a, c)?, 0.5)?)
}

macro_rules! binary_ops {
    ($( $pat:pat => f: |$x:ident, $y:ident| $f:expr, vjp: |$ai:ident, $bi:ident, $oi:ident, $gi:ident| $df:expr; )*) => {
        /// Forward kernel of a broadcasting binary op.
        pub fn forward(op: &Op, a: &Tensor, c: &Tensor) -> Result<Tensor> {
            if crate::shape::same(&a.shape, &c.shape) {
                // no broadcasting: no views or strides to build (the common case of small graphs)
                let data = match *op {
                    $( $pat => map::zip(a.data(), c.data(), #[inline(always)] |$x: f32, $y: f32| $f)?, )*
                    _ => unreachable!("not a binary op"),
                };
                return Tensor::new(data, a.shape.clone());
            }
            let shape = broadcast_shapes(&a.shape, &c.shape, op.name())?;
            let data = match *op {
                $( $pat => map::binary(&shape, view(a, &shape), view(c, &shape), #[inline(always)] |$x: f32, $y: f32| $f)?, )*
                _ => unreachable!("not a binary op"),
            };
            Tensor::new(data, shape)
        }
        /// VJP of a binary op, summed back to each input's shape.
        pub fn vjp(op: &Op, a: &Var, c: &Var, y: &Var, g: &Var) -> Result<Vec<Option<Var>>> {
            let (ga, gc): (Option<Var>, Option<Var>) = match *op {
                $( $pat => { let ($ai, $bi, $oi, $gi) = (a, c, y, g); $df } )*
                _ => unreachable!("not a binary op"),
            };
            let ga = match ga { Some(v) if a.requires_grad() => Some(sum_to(&v, &a.shape())?), _ => None };
            let gc = match gc { Some(v) if c.requires_grad() => Some(sum_to(&v, &c.shape())?), _ => None };
            Ok(vec![ga, gc])
        }
    };
}

binary_ops! {
    // d(a+b) = (1, 1)
    Op::Add => f: |x, y| x + y, vjp: |a, b, o, g| (Some(g.clone()), Some(g.clone()));
    // d(a-b) = (1, -1)
    Op::Sub => f: |x, y| x - y, vjp: |a, b, o, g| (Some(g.clone()), if b.requires_grad() { Some(neg(g)?) } else { None });
    // d(ab) = (b, a)
    Op::Mul => f: |x, y| x * y, vjp: |a, b, o, g| (
        if a.requires_grad() { Some(mul(g, b)?) } else { None },
        if b.requires_grad() { Some(mul(g, a)?) } else { None });
    // d(a/b) = (1/b, -a/b^2 = -o/b)
    Op::Div => f: |x, y| x / y, vjp: |a, b, o, g| {
        let ga = div(g, b)?;
        let gb = if b.requires_grad() { Some(neg(&mul(&ga, o)?)?) } else { None };
        (Some(ga), gb)
    };
    // d max(a,b) = ([a>b] + [a=b]/2, [b>a] + [a=b]/2)
    Op::Maximum => f: |x, y| fmax(x, y), vjp: |a, b, o, g| (
        Some(mul(g, &win_mask(Op::Gt, a, b)?)?), Some(mul(g, &win_mask(Op::Gt, b, a)?)?));
    Op::Minimum => f: |x, y| fmin(x, y), vjp: |a, b, o, g| (
        Some(mul(g, &win_mask(Op::Lt, a, b)?)?), Some(mul(g, &win_mask(Op::Lt, b, a)?)?));
    // comparisons: piecewise constant, no gradient
    Op::Lt => f: |x, y| b(x < y), vjp: |a, b, o, g| (None, None);
    Op::Le => f: |x, y| b(x <= y), vjp: |a, b, o, g| (None, None);
    Op::Gt => f: |x, y| b(x > y), vjp: |a, b, o, g| (None, None);
    Op::Ge => f: |x, y| b(x >= y), vjp: |a, b, o, g| (None, None);
    Op::Eq => f: |x, y| b(x == y), vjp: |a, b, o, g| (None, None);
    Op::Ne => f: |x, y| b(x != y), vjp: |a, b, o, g| (None, None);
    // relu_grad(g, y) = g [y > 0] is linear in g (same mask); the mask has no gradient
    Op::ReluGrad => f: |x, y| if y > 0.0 { x } else { 0.0 }, vjp: |a, b, o, g| (Some(relu_grad(g, b)?), None);
    // d relu(a+b) = [o > 0] for both, read from the output
    Op::AddRelu => f: |x, y| relu(x + y), vjp: |a, b, o, g| { let t = relu_grad(g, o)?; (Some(t.clone()), Some(t)) };
}

/// relu that propagates NaN (as numpy.maximum(x, 0) does)
#[inline(always)]
pub fn relu(s: f32) -> f32 {
    if s > 0.0 { s } else if s.is_nan() { s } else { 0.0 }
}

/// where(cond, a, b): cond != 0 selects a.
pub fn where_forward(cond: &Tensor, a: &Tensor, c: &Tensor) -> Result<Tensor> {
    let s = broadcast_shapes(&broadcast_shapes(&cond.shape, &a.shape, "where")?, &c.shape, "where")?;
    let data = map::ternary(&s, view(cond, &s), view(a, &s), view(c, &s), |m, x, y| if m != 0.0 { x } else { y })?;
    Tensor::new(data, s)
}

/// d where(c, a, b) = (none, where(c, g, 0), where(c, 0, g))
pub fn where_vjp(ins: &[Var], g: &Var) -> Result<Vec<Option<Var>>> {
    let zero = Var::scalar(0.0);
    let pick = |i: usize, a: &Var, b: &Var| -> Result<Option<Var>> {
        if !ins[i].requires_grad() {
            return Ok(None);
        }
        let full = Var::apply(Op::Where, &[ins[0].clone(), a.clone(), b.clone()])?;
        Ok(Some(sum_to(&full, &ins[i].shape())?))
    };
    Ok(vec![None, pick(1, g, &zero)?, pick(2, &zero, g)?])
}
