//! THE op registry. Each op has one `Op` variant, one `OpSpec` row (name, arity, what its VJP
//! reads), one forward (which calls CPU kernels) and one VJP rule (which emits registry ops, so
//! gradients are themselves graphs). Executors replay ops by name; nobody outside `ops/` writes a
//! derivative.
use std::sync::Arc;

use crate::bail;
use crate::error::{Error, Result};
use crate::tape::Var;
use crate::tensor::Tensor;

pub mod binary;
pub mod matmul;
pub mod movement;
pub mod nn;
pub mod profile;
pub mod reduce;
pub mod unary;

/// Registry row exported to Python by `op_table()`.
#[derive(Debug, Clone, Copy)]
pub struct OpSpec {
    pub name: &'static str,
    /// number of inputs; -1 = variadic
    pub arity: i32,
    /// what the VJP reads: "none", "inputs", "output", "inputs+output"
    pub saves: &'static str,
    /// false for ops with no gradient (comparisons, sign): their results are never recorded
    pub differentiable: bool,
    pub doc: &'static str,
}

macro_rules! registry {
    ($( $idx:literal $name:literal $arity:literal $saves:literal $diff:literal $doc:literal ;)*) => {
        pub static TABLE: &[OpSpec] = &[ $( OpSpec { name: $name, arity: $arity, saves: $saves, differentiable: $diff, doc: $doc } ),* ];
    };
}

registry! {
    0  "neg"        1 "none"          true  "-x";
    1  "exp"        1 "output"        true  "e^x";
    2  "log"        1 "inputs"        true  "natural log";
    3  "sqrt"       1 "output"        true  "square root";
    4  "tanh"       1 "output"        true  "hyperbolic tangent";
    5  "sigmoid"    1 "output"        true  "1/(1+e^-x), stable for large |x|";
    6  "relu"       1 "output"        true  "max(x, 0)";
    7  "abs"        1 "inputs"        true  "|x|";
    8  "sign"       1 "none"          false "sign(x) (no gradient)";
    9  "pow_scalar" 1 "inputs"        true  "x ** p for a scalar p";
    10 "clip"       1 "inputs"        true  "clip(x, lo, hi); gradient 1 inside [lo, hi]";
    11 "add"        2 "none"          true  "a + b (broadcasting)";
    12 "sub"        2 "none"          true  "a - b (broadcasting)";
    13 "mul"        2 "inputs"        true  "a * b (broadcasting)";
    14 "div"        2 "inputs+output" true  "a / b (broadcasting)";
    15 "maximum"    2 "inputs"        true  "elementwise max; ties split the gradient";
    16 "minimum"    2 "inputs"        true  "elementwise min; ties split the gradient";
    17 "lt"         2 "none"          false "a < b as 0/1";
    18 "le"         2 "none"          false "a <= b as 0/1";
    19 "gt"         2 "none"          false "a > b as 0/1";
    20 "ge"         2 "none"          false "a >= b as 0/1";
    21 "eq"         2 "none"          false "a == b as 0/1";
    22 "ne"         2 "none"          false "a != b as 0/1";
    23 "where"      3 "inputs"        true  "where(cond != 0, a, b) (broadcasting)";
    24 "sum"        1 "none"          true  "sum over axes";
    25 "mean"       1 "none"          true  "mean over axes";
    26 "max"        1 "inputs+output" true  "max over axes; ties split the gradient";
    27 "reshape"    1 "none"          true  "reshape (one -1 allowed)";
    28 "transpose"  1 "none"          true  "permute axes (default: reverse)";
    29 "broadcast_to" 1 "none"        true  "numpy broadcast_to";
    30 "slice"      1 "none"          true  "basic indexing: per-axis start, step (any sign), length";
    31 "slice_grad" 1 "none"          true  "adjoint of slice: scatter into zeros";
    32 "take"       1 "none"          true  "gather along an axis with an integer array (negative, repeated ok)";
    33 "scatter_add" 1 "none"         true  "adjoint of take: zeros, then add rows at indices";
    34 "concatenate" -1 "none"        true  "join along an existing axis";
    35 "stack"      -1 "none"         true  "join along a new axis";
    36 "matmul"     2 "inputs"        true  "batched matmul with broadcast batch dims; ta/tb read an operand transposed";
    37 "softmax"    1 "output"        true  "softmax along an axis (stable)";
    38 "log_softmax" 1 "output"       true  "log-softmax along an axis (stable)";
    39 "logsumexp"  1 "inputs+output" true  "log(sum(exp(x))) over axes (stable)";
    40 "softmax_xent" 2 "inputs"      true  "per-example cross-entropy of logits (N, C) and integer labels (N,)";
    41 "softmax_xent_backward" 3 "inputs" true "fused (softmax(logits) - onehot) * g[:, None]";
    42 "relu_grad"  2 "inputs"        true  "g * [y > 0] (broadcasting): relu's backward in one pass; no gradient through y";
    43 "add_relu"   2 "output"        true  "relu(a + b) (broadcasting): bias add + activation in one pass";
}

/// An op and its attributes.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    Neg, Exp, Log, Sqrt, Tanh, Sigmoid, Relu, Abs, Sign,
    PowScalar { p: f32 },
    Clip { lo: f32, hi: f32 },
    Add, Sub, Mul, Div, Maximum, Minimum,
    Lt, Le, Gt, Ge, Eq, Ne,
    Where,
    Sum { axes: Vec<i64>, keepdims: bool },
    Mean { axes: Vec<i64>, keepdims: bool },
    Max { axes: Vec<i64>, keepdims: bool },
    Reshape { shape: Vec<i64> },
    Transpose { perm: Vec<i64> },
    BroadcastTo { shape: Vec<usize> },
    Slice { start: Vec<i64>, step: Vec<i64>, len: Vec<i64> },
    SliceGrad { in_shape: Vec<usize>, start: Vec<i64>, step: Vec<i64> },
    Take { idx: Arc<Vec<i64>>, axis: i64 },
    ScatterAdd { idx: Arc<Vec<i64>>, axis: i64, dim: usize },
    Concatenate { axis: i64 },
    Stack { axis: i64 },
    MatMul { ta: bool, tb: bool },
    Softmax { axis: i64 },
    LogSoftmax { axis: i64 },
    LogSumExp { axes: Vec<i64>, keepdims: bool },
    SoftmaxXent,
    SoftmaxXentBackward,
    ReluGrad,
    AddRelu,
}

/// An attribute value, for export to / construction from Python.
#[derive(Clone, Debug, PartialEq)]
pub enum Attr {
    Int(i64),
    Ints(Vec<i64>),
    Float(f64),
    Bool(bool),
}

pub type Attrs = Vec<(&'static str, Attr)>;

impl Op {
    pub fn index(&self) -> usize {
        use Op::*;
        match self {
            Neg => 0, Exp => 1, Log => 2, Sqrt => 3, Tanh => 4, Sigmoid => 5, Relu => 6, Abs => 7, Sign => 8,
            PowScalar { .. } => 9, Clip { .. } => 10,
            Add => 11, Sub => 12, Mul => 13, Div => 14, Maximum => 15, Minimum => 16,
            Lt => 17, Le => 18, Gt => 19, Ge => 20, Eq => 21, Ne => 22, Where => 23,
            Sum { .. } => 24, Mean { .. } => 25, Max { .. } => 26,
            Reshape { .. } => 27, Transpose { .. } => 28, BroadcastTo { .. } => 29,
            Slice { .. } => 30, SliceGrad { .. } => 31, Take { .. } => 32, ScatterAdd { .. } => 33,
            Concatenate { .. } => 34, Stack { .. } => 35, MatMul { .. } => 36,
            Softmax { .. } => 37, LogSoftmax { .. } => 38, LogSumExp { .. } => 39,
            SoftmaxXent => 40, SoftmaxXentBackward => 41, ReluGrad => 42, AddRelu => 43,
        }
    }
    pub fn spec(&self) -> &'static OpSpec {
        &TABLE[self.index()]
    }
    pub fn name(&self) -> &'static str {
        self.spec().name
    }

    /// Attributes, named (the inverse of `parse`).
    pub fn attrs(&self) -> Attrs {
        use Op::*;
        let u = |v: &Vec<usize>| Attr::Ints(v.iter().map(|&d| d as i64).collect());
        match self {
            PowScalar { p } => vec![("p", Attr::Float(*p as f64))],
            Clip { lo, hi } => vec![("lo", Attr::Float(*lo as f64)), ("hi", Attr::Float(*hi as f64))],
            Sum { axes, keepdims } | Mean { axes, keepdims } | Max { axes, keepdims } | LogSumExp { axes, keepdims } => {
                vec![("axes", Attr::Ints(axes.clone())), ("keepdims", Attr::Bool(*keepdims))]
            }
            Reshape { shape } => vec![("shape", Attr::Ints(shape.clone()))],
            Transpose { perm } => vec![("perm", Attr::Ints(perm.clone()))],
            BroadcastTo { shape } => vec![("shape", u(shape))],
            Slice { start, step, len } => vec![("start", Attr::Ints(start.clone())), ("step", Attr::Ints(step.clone())), ("len", Attr::Ints(len.clone()))],
            SliceGrad { in_shape, start, step } => vec![("in_shape", u(in_shape)), ("start", Attr::Ints(start.clone())), ("step", Attr::Ints(step.clone()))],
            Take { idx, axis } => vec![("idx", Attr::Ints(idx.to_vec())), ("axis", Attr::Int(*axis))],
            ScatterAdd { idx, axis, dim } => vec![("idx", Attr::Ints(idx.to_vec())), ("axis", Attr::Int(*axis)), ("dim", Attr::Int(*dim as i64))],
            Concatenate { axis } | Stack { axis } | Softmax { axis } | LogSoftmax { axis } => vec![("axis", Attr::Int(*axis))],
            MatMul { ta, tb } => vec![("ta", Attr::Bool(*ta)), ("tb", Attr::Bool(*tb))],
            _ => vec![],
        }
    }

    /// Build an op from its registry name and named attributes.
    pub fn parse(name: &str, attrs: &[(String, Attr)]) -> Result<Op> {
        let get = |k: &str| attrs.iter().find(|(n, _)| n == k).map(|(_, v)| v);
        let int = |k: &str, d: Option<i64>| -> Result<i64> {
            match get(k) {
                Some(Attr::Int(v)) => Ok(*v),
                Some(Attr::Bool(b)) => Ok(*b as i64),
                Some(other) => bail!(Type, "{name}: attribute '{k}' must be an int, got {other:?}"),
                None => d.ok_or_else(|| crate::error::Error::Type(format!("{name}: missing attribute '{k}'"))),
            }
        };
        let ints = |k: &str, d: Option<Vec<i64>>| -> Result<Vec<i64>> {
            match get(k) {
                Some(Attr::Ints(v)) => Ok(v.clone()),
                Some(Attr::Int(v)) => Ok(vec![*v]),
                Some(other) => bail!(Type, "{name}: attribute '{k}' must be a list of ints, got {other:?}"),
                None => d.ok_or_else(|| crate::error::Error::Type(format!("{name}: missing attribute '{k}'"))),
            }
        };
        let uints = |k: &str| -> Result<Vec<usize>> {
            let v = ints(k, None)?;
            if let Some(d) = v.iter().find(|&&d| d < 0) {
                bail!(Value, "{name}: attribute '{k}' must not contain negative sizes, got {d}");
            }
            Ok(v.into_iter().map(|d| d as usize).collect())
        };
        let float = |k: &str| -> Result<f32> {
            match get(k) {
                Some(Attr::Float(v)) => Ok(*v as f32),
                Some(Attr::Int(v)) => Ok(*v as f32),
                Some(other) => bail!(Type, "{name}: attribute '{k}' must be a float, got {other:?}"),
                None => bail!(Type, "{name}: missing attribute '{k}'"),
            }
        };
        let boolean = |k: &str| -> Result<bool> { Ok(int(k, Some(0))? != 0) };
        use Op::*;
        Ok(match name {
            "neg" => Neg, "exp" => Exp, "log" => Log, "sqrt" => Sqrt, "tanh" => Tanh, "sigmoid" => Sigmoid,
            "relu" => Relu, "abs" => Abs, "sign" => Sign,
            "pow_scalar" => PowScalar { p: float("p")? },
            "clip" => Clip { lo: float("lo")?, hi: float("hi")? },
            "add" => Add, "sub" => Sub, "mul" => Mul, "div" => Div, "maximum" => Maximum, "minimum" => Minimum,
            "lt" => Lt, "le" => Le, "gt" => Gt, "ge" => Ge, "eq" => Eq, "ne" => Ne, "where" => Where,
            "sum" => Sum { axes: ints("axes", Some(vec![]))?, keepdims: boolean("keepdims")? },
            "mean" => Mean { axes: ints("axes", Some(vec![]))?, keepdims: boolean("keepdims")? },
            "max" => Max { axes: ints("axes", Some(vec![]))?, keepdims: boolean("keepdims")? },
            "logsumexp" => LogSumExp { axes: ints("axes", Some(vec![]))?, keepdims: boolean("keepdims")? },
            "reshape" => Reshape { shape: ints("shape", None)? },
            "transpose" => Transpose { perm: ints("perm", Some(vec![]))? },
            "broadcast_to" => BroadcastTo { shape: uints("shape")? },
            "slice" => Slice { start: ints("start", None)?, step: ints("step", None)?, len: ints("len", None)? },
            "slice_grad" => SliceGrad { in_shape: uints("in_shape")?, start: ints("start", None)?, step: ints("step", None)? },
            "take" => Take { idx: Arc::new(ints("idx", None)?), axis: int("axis", Some(0))? },
            "scatter_add" => ScatterAdd { idx: Arc::new(ints("idx", None)?), axis: int("axis", Some(0))?, dim: int("dim", None)?.max(0) as usize },
            "concatenate" => Concatenate { axis: int("axis", Some(0))? },
            "stack" => Stack { axis: int("axis", Some(0))? },
            "matmul" => MatMul { ta: boolean("ta")?, tb: boolean("tb")? },
            "softmax" => Softmax { axis: int("axis", Some(-1))? },
            "log_softmax" => LogSoftmax { axis: int("axis", Some(-1))? },
            "softmax_xent" => SoftmaxXent,
            "softmax_xent_backward" => SoftmaxXentBackward,
            "relu_grad" => ReluGrad,
            "add_relu" => AddRelu,
            _ => bail!(Value, "unknown op '{name}' (see batchgrad._core.op_table())"),
        })
    }
}

/// Forward: run the op's CPU kernel on input values.
pub fn forward(op: &Op, ins: &[&Tensor]) -> Result<Tensor> {
    let spec = op.spec();
    if spec.arity >= 0 && ins.len() != spec.arity as usize {
        bail!(Value, "{}: expected {} inputs, got {}", spec.name, spec.arity, ins.len());
    }
    if spec.arity < 0 && ins.is_empty() {
        bail!(Value, "{}: needs at least one input", spec.name);
    }
    // an allocation failure deep in a kernel only knows its element count: name the op and its inputs
    let res = if profile::enabled() { profile::timed(spec.name, ins, || run_forward(op, ins)) } else { run_forward(op, ins) };
    res.map_err(|e| match e {
        Error::Memory(m) => {
            let shapes: Vec<String> = ins.iter().map(|t| format!("{:?}", t.shape)).collect();
            Error::Memory(format!("{}: {m} (inputs of shapes {})", spec.name, shapes.join(", ")))
        }
        e => e,
    })
}

fn run_forward(op: &Op, ins: &[&Tensor]) -> Result<Tensor> {
    use Op::*;
    match op {
        Neg | Exp | Log | Sqrt | Tanh | Sigmoid | Relu | Abs | Sign | PowScalar { .. } | Clip { .. } => unary::forward(op, ins[0]),
        Add | Sub | Mul | Div | Maximum | Minimum | Lt | Le | Gt | Ge | Eq | Ne | ReluGrad | AddRelu => binary::forward(op, ins[0], ins[1]),
        Where => binary::where_forward(ins[0], ins[1], ins[2]),
        Sum { .. } | Mean { .. } | Max { .. } => reduce::forward(op, ins[0]),
        Reshape { .. } | Transpose { .. } | BroadcastTo { .. } | Slice { .. } | SliceGrad { .. } | Take { .. } | ScatterAdd { .. } | Concatenate { .. } | Stack { .. } => {
            movement::forward(op, ins)
        }
        MatMul { ta, tb } => matmul::forward(ins[0], ins[1], *ta, *tb),
        Softmax { .. } | LogSoftmax { .. } | LogSumExp { .. } | SoftmaxXent | SoftmaxXentBackward => nn::forward(op, ins),
    }
}

/// VJP: given the node's inputs, its output `y` and the incoming gradient `g` (shape of `y`),
/// return one gradient per input (None = no gradient flows there). Emits registry ops.
pub fn vjp(op: &Op, ins: &[Var], y: &Var, g: &Var) -> Result<Vec<Option<Var>>> {
    use Op::*;
    match op {
        Neg | Exp | Log | Sqrt | Tanh | Sigmoid | Relu | Abs | Sign | PowScalar { .. } | Clip { .. } => Ok(vec![unary::vjp(op, &ins[0], y, g)?]),
        Add | Sub | Mul | Div | Maximum | Minimum | Lt | Le | Gt | Ge | Eq | Ne | ReluGrad | AddRelu => binary::vjp(op, &ins[0], &ins[1], y, g),
        Where => binary::where_vjp(ins, g),
        Sum { .. } | Mean { .. } | Max { .. } => Ok(vec![Some(reduce::vjp(op, &ins[0], y, g)?)]),
        Reshape { .. } | Transpose { .. } | BroadcastTo { .. } | Slice { .. } | SliceGrad { .. } | Take { .. } | ScatterAdd { .. } | Concatenate { .. } | Stack { .. } => {
            movement::vjp(op, ins, g)
        }
        MatMul { ta, tb } => matmul::vjp(&ins[0], &ins[1], *ta, *tb, g),
        Softmax { .. } | LogSoftmax { .. } | LogSumExp { .. } | SoftmaxXent | SoftmaxXentBackward => nn::vjp(op, ins, y, g),
    }
}
