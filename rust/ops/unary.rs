//! Unary elementwise ops: each row gives the forward `f` and the VJP side by side.
#![allow(unused_variables)]
use super::Op;
use crate::error::Result;
use crate::kernels::{map, simd};
use crate::tape::build::*;
use crate::tape::Var;
use crate::tensor::Tensor;

#[inline(always)]
fn sign(x: f32) -> f32 {
    if x > 0.0 { 1.0 } else if x < 0.0 { -1.0 } else if x == 0.0 { 0.0 } else { x }
}

macro_rules! unary_ops {
    ($( $pat:pat => f: |$x:ident| $f:expr, vjp: |$xi:ident, $yi:ident, $gi:ident| $df:expr; )*) => {
        /// Forward kernel of a unary op.
        pub fn forward(op: &Op, t: &Tensor) -> Result<Tensor> {
            if let Op::Exp = op {
                // the same bits as its row's `simd::exp`, from a kernel with AVX-512 scaling
                return Tensor::new(map::unary_slices(t.data(), simd::exp_into)?, t.shape.clone());
            }
            let data = match *op {
                $( $pat => map::unary(t.data(), #[inline(always)] |$x: f32| $f)?, )*
                _ => unreachable!("not a unary op"),
            };
            Tensor::new(data, t.shape.clone())
        }
        /// VJP of a unary op: x = input, y = output, g = incoming gradient.
        pub fn vjp(op: &Op, x: &Var, y: &Var, g: &Var) -> Result<Option<Var>> {
            match *op {
                $( $pat => { let ($xi, $yi, $gi) = (x, y, g); $df } )*
                _ => unreachable!("not a unary op"),
            }
        }
    };
}

unary_ops! {
    // d(-x) = -1
    Op::Neg => f: |x| -x, vjp: |x, y, g| Ok(Some(neg(g)?));
    // d e^x = e^x = y
    Op::Exp => f: |x| simd::exp(x), vjp: |x, y, g| Ok(Some(mul(g, y)?));
    // d ln x = 1/x
    Op::Log => f: |x| x.ln(), vjp: |x, y, g| Ok(Some(div(g, x)?));
    // d sqrt x = 1/(2y)
    Op::Sqrt => f: |x| x.sqrt(), vjp: |x, y, g| Ok(Some(div(g, &scale(y, 2.0)?)?));
    // d tanh = 1 - y^2
    Op::Tanh => f: |x| simd::tanh(x), vjp: |x, y, g| Ok(Some(mul(g, &rsub(1.0, &mul(y, y)?)?)?));
    // d sigmoid = y (1 - y)
    Op::Sigmoid => f: |x| simd::sigmoid(x), vjp: |x, y, g| Ok(Some(mul(g, &mul(y, &rsub(1.0, y)?)?)?));
    // d relu = [y > 0], one fused pass over g and the output
    Op::Relu => f: |x| super::binary::relu(x), vjp: |x, y, g| Ok(Some(relu_grad(g, y)?));
    // d |x| = sign(x)
    Op::Abs => f: |x| x.abs(), vjp: |x, y, g| Ok(Some(mul(g, &Var::apply(Op::Sign, &[x.clone()])?)?));
    // piecewise constant: no gradient
    Op::Sign => f: |x| sign(x), vjp: |x, y, g| Ok(None);
    // d x^p = p x^(p-1). p = 0.5 runs sqrt, as numpy/torch x ** 0.5 do: (-inf) ** 0.5 = NaN, (-0) ** 0.5 = -0 (powf: +inf, +0)
    Op::PowScalar { p } => f: |x| if p == 2.0 { x * x } else if p == 0.5 { x.sqrt() } else { x.powf(p) },
        vjp: |x, y, g| Ok(Some(mul(g, &scale(&Var::apply(Op::PowScalar { p: p - 1.0 }, &[x.clone()])?, p)?)?));
    // d clip = [lo <= x <= hi]
    Op::Clip { lo, hi } => f: |x| if x.is_nan() { x } else { x.max(lo).min(hi) },
        vjp: |x, y, g| {
            let inside = mul(&cmp(Op::Ge, x, &Var::scalar(lo))?, &cmp(Op::Le, x, &Var::scalar(hi))?)?;
            Ok(Some(mul(g, &inside)?))
        };
}
