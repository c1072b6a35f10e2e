//! The tape: every op applied to a `Var` that requires grad records a node (op + input Vars).
//! Nodes are created in execution order, so ids are a topological order; `backward` walks the
//! recorded subgraph in reverse and calls each op's VJP rule from the registry (`ops::vjp`),
//! which itself emits registry ops (recorded too when `create_graph` is on).
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use crate::error::Result;
use crate::ops::{self, Op};
use crate::shape::Shape;
use crate::tensor::Tensor;

mod backward;
pub mod program;
pub mod step;
pub use backward::{backward, grad, set_deferred_grads};

/// A leaf's accumulated gradient. `backward` keeps the gradient of a weight multiplied by one
/// row (a Linear layer at batch 1) as the two vectors of its outer product until something reads
/// it: `Var::grad` computes it then, while the eager optimizer computes it block by block as it
/// updates the weight (plain SGD: in the same pass), so the gradient matrix is never written and
/// read back. Both compute each element the same way (the same bits).
#[derive(Clone, Debug)]
pub enum Grad {
    Dense(Tensor),
    Outer(ops::matmul::Outer),
}

impl Grad {
    pub fn shape(&self) -> Vec<usize> {
        match self {
            Grad::Dense(t) => t.shape.to_vec(),
            Grad::Outer(o) => o.shape(),
        }
    }
    pub fn to_tensor(&self) -> Result<Tensor> {
        match self {
            Grad::Dense(t) => Ok(t.clone()),
            Grad::Outer(o) => o.materialize(),
        }
    }
}

thread_local! {
    static GRAD_ENABLED: Cell<bool> = const { Cell::new(true) };
}

/// Is recording on for this thread?
pub fn is_grad_enabled() -> bool {
    GRAD_ENABLED.with(|g| g.get())
}

/// Turn recording on/off for this thread; returns the previous setting.
pub fn set_grad_enabled(on: bool) -> bool {
    GRAD_ENABLED.with(|g| g.replace(on))
}

/// Run `f` with recording off (restored afterwards, also on error).
pub fn no_grad<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            set_grad_enabled(self.0);
        }
    }
    let _r = Restore(set_grad_enabled(false));
    f()
}

fn freed(op: &str) -> crate::error::Error {
    crate::error::Error::Runtime(format!(
        "trying to backward through the graph a second time (the graph of '{op}' was freed by an earlier backward; pass retain_graph=True to keep it)"
    ))
}

pub(crate) enum Node {
    Leaf,
    Op { op: Op, inputs: Vec<Var> },
    /// An op node whose graph was released by `backward` (op name kept for the error message).
    Freed(&'static str),
}

pub struct VarInner {
    pub id: u64,
    value: RwLock<Tensor>,
    requires_grad: AtomicBool,
    /// made by a recorded op (has history, even when not differentiable, e.g. a comparison)
    tracked: bool,
    grad: Mutex<Option<Grad>>,
    pub(crate) node: Mutex<Node>,
}

/// A tensor on the tape: a value plus, for op results, the node that made it.
#[derive(Clone)]
pub struct Var(pub Arc<VarInner>);

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

impl Drop for VarInner {
    // Iterative drop: a long chain of nodes must not recurse once per node.
    fn drop(&mut self) {
        let mut stack: Vec<Var> = match std::mem::replace(self.node.get_mut().unwrap(), Node::Leaf) {
            Node::Op { inputs, .. } => inputs,
            _ => return,
        };
        while let Some(v) = stack.pop() {
            if let Ok(mut inner) = Arc::try_unwrap(v.0) {
                if let Node::Op { inputs, .. } = std::mem::replace(inner.node.get_mut().unwrap(), Node::Leaf) {
                    stack.extend(inputs);
                }
            }
        }
    }
}

impl Var {
    fn make(value: Tensor, requires_grad: bool, node: Node) -> Var {
        Var(Arc::new(VarInner {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            value: RwLock::new(value),
            requires_grad: AtomicBool::new(requires_grad),
            tracked: matches!(node, Node::Op { .. }),
            grad: Mutex::new(None),
            node: Mutex::new(node),
        }))
    }
    /// A leaf (user data or a parameter).
    pub fn leaf(value: Tensor, requires_grad: bool) -> Var {
        Var::make(value, requires_grad, Node::Leaf)
    }
    /// A 0-d constant.
    pub fn scalar(v: f32) -> Var {
        Var::leaf(Tensor::scalar(v), false)
    }
    /// A 0-d constant for an operand that is a number (`x * 0.5`): the same immutable Var for
    /// the same value while it is among this thread's last few constants, so a loop of
    /// `y = y * c` allocates no Var for `c`. Nothing can change such a Var: it is a leaf
    /// without grad that only the nodes holding it can reach.
    pub fn constant(v: f32) -> Var {
        const N: usize = 8;
        thread_local! {
            static RECENT: std::cell::RefCell<(usize, Vec<(u32, Var)>)> = const { std::cell::RefCell::new((0, Vec::new())) };
        }
        let bits = v.to_bits();
        RECENT.with(|r| {
            let mut r = r.borrow_mut();
            if let Some((_, var)) = r.1.iter().find(|(b, _)| *b == bits) {
                return var.clone();
            }
            let var = Var::scalar(v);
            let (next, list) = &mut *r;
            if list.len() < N {
                list.push((bits, var.clone()));
            } else {
                list[*next] = (bits, var.clone());
                *next = (*next + 1) % N;
            }
            var
        })
    }
    pub fn id(&self) -> u64 {
        self.0.id
    }
    /// The current value (a cheap `Arc` clone).
    pub fn value(&self) -> Tensor {
        self.0.value.read().unwrap().clone()
    }
    pub fn shape(&self) -> Shape {
        self.0.value.read().unwrap().shape.clone()
    }
    /// Number of dimensions of the current value.
    pub fn ndim(&self) -> usize {
        self.0.value.read().unwrap().shape.len()
    }
    /// Number of elements of the current value.
    pub fn numel(&self) -> usize {
        self.0.value.read().unwrap().shape.iter().product()
    }
    /// Replace a leaf's value in place (optimizer updates). Shape must match.
    pub fn set_value(&self, t: Tensor) {
        *self.0.value.write().unwrap() = t;
    }
    /// Write access to the value, for in-place updates (`Tensor::make_mut` copies first only if
    /// the buffer is shared, e.g. by a numpy view).
    pub fn value_mut(&self) -> std::sync::RwLockWriteGuard<'_, Tensor> {
        self.0.value.write().unwrap()
    }
    pub fn is_leaf(&self) -> bool {
        matches!(*self.0.node.lock().unwrap(), Node::Leaf)
    }
    /// Leaves: the flag set by the user. Op results: true while they have a (possibly freed) node.
    pub fn requires_grad(&self) -> bool {
        self.0.requires_grad.load(Ordering::Relaxed)
    }
    pub fn set_requires_grad(&self, on: bool) -> Result<()> {
        if !self.is_leaf() {
            crate::bail!(Runtime, "requires_grad can only be changed on leaf tensors (this one was produced by an op; use .detach())");
        }
        self.0.requires_grad.store(on, Ordering::Relaxed);
        Ok(())
    }
    /// The accumulated gradient as a tensor. A deferred one (`Grad::Outer`) is computed now and
    /// kept in its place, so later reads and the optimizer see these same values; the error is
    /// a `Memory` one when its matrix cannot be allocated (the deferred form stays).
    pub fn grad(&self) -> Result<Option<Tensor>> {
        let mut slot = self.0.grad.lock().unwrap();
        let t = match slot.as_ref() {
            None => return Ok(None),
            Some(Grad::Dense(t)) => return Ok(Some(t.clone())),
            Some(Grad::Outer(o)) => o.materialize()?,
        };
        *slot = Some(Grad::Dense(t.clone()));
        Ok(Some(t))
    }
    pub fn set_grad(&self, g: Option<Tensor>) {
        *self.0.grad.lock().unwrap() = g.map(Grad::Dense);
    }
    /// The gradient as stored, deferred or not (the eager optimizer reads it this way).
    pub fn grad_state(&self) -> Option<Grad> {
        self.0.grad.lock().unwrap().clone()
    }
    pub fn set_grad_state(&self, g: Option<Grad>) {
        *self.0.grad.lock().unwrap() = g;
    }
    pub fn has_grad(&self) -> bool {
        self.0.grad.lock().unwrap().is_some()
    }
    /// Name of the op that produced this Var (None for leaves).
    pub fn op_name(&self) -> Option<&'static str> {
        match &*self.0.node.lock().unwrap() {
            Node::Leaf => None,
            Node::Op { op, .. } => Some(op.name()),
            Node::Freed(n) => Some(n),
        }
    }
    /// The op and inputs of a recorded node (None for leaves; error if freed).
    pub fn node(&self) -> Result<Option<(Op, Vec<Var>)>> {
        match &*self.0.node.lock().unwrap() {
            Node::Leaf => Ok(None),
            Node::Op { op, inputs } => Ok(Some((op.clone(), inputs.clone()))),
            Node::Freed(n) => Err(freed(n)),
        }
    }
    /// The node moved out, leaving `Freed` (a backward without `retain_graph` frees the graph
    /// this way); error if already freed.
    pub(crate) fn take_node(&self) -> Result<Option<(Op, Vec<Var>)>> {
        let mut n = self.0.node.lock().unwrap();
        match &*n {
            Node::Leaf => Ok(None),
            Node::Freed(name) => Err(freed(name)),
            Node::Op { op, .. } => {
                let name = op.name();
                match std::mem::replace(&mut *n, Node::Freed(name)) {
                    Node::Op { op, inputs } => Ok(Some((op, inputs))),
                    _ => unreachable!(),
                }
            }
        }
    }
    /// Undo `take_node`.
    pub(crate) fn restore_node(&self, op: Op, inputs: Vec<Var>) {
        *self.0.node.lock().unwrap() = Node::Op { op, inputs };
    }
    /// Same value, no history.
    pub fn detach(&self) -> Var {
        Var::leaf(self.value(), false)
    }

    /// Has history on the tape (requires grad, or made by a recorded op).
    pub fn is_tracked(&self) -> bool {
        self.0.tracked || self.requires_grad()
    }

    /// Apply a registry op: run its forward kernel and, when recording is on and some input is
    /// tracked, record a node. The result requires grad when the op is differentiable and some
    /// input requires grad; non-differentiable results (comparisons) are still recorded, so a
    /// traced program keeps the masks that depend on its inputs.
    pub fn apply(op: Op, inputs: &[Var]) -> Result<Var> {
        Var::apply_owned(op, inputs.to_vec())
    }

    /// `apply` taking the input list, which a recorded node keeps (no second copy of it).
    pub fn apply_owned(op: Op, inputs: Vec<Var>) -> Result<Var> {
        // the inputs' values on the stack for the common arities: no vectors allocated per op
        let out = match inputs.as_slice() {
            [a] => ops::forward(&op, &[&a.value()])?,
            [a, b] => ops::forward(&op, &[&a.value(), &b.value()])?,
            _ => {
                let vals: Vec<Tensor> = inputs.iter().map(|v| v.value()).collect();
                let refs: Vec<&Tensor> = vals.iter().collect();
                ops::forward(&op, &refs)?
            }
        };
        if !is_grad_enabled() || !inputs.iter().any(|v| v.is_tracked()) {
            return Ok(Var::leaf(out, false));
        }
        let rg = op.spec().differentiable && inputs.iter().any(|v| v.requires_grad());
        Ok(Var::make(out, rg, Node::Op { op, inputs }))
    }
}

/// Short helpers used by VJP rules (each is one registry op).
pub mod build {
    use super::Var;
    use crate::error::Result;
    use crate::ops::Op;

    pub fn add(a: &Var, b: &Var) -> Result<Var> { Var::apply(Op::Add, &[a.clone(), b.clone()]) }
    pub fn sub(a: &Var, b: &Var) -> Result<Var> { Var::apply(Op::Sub, &[a.clone(), b.clone()]) }
    pub fn mul(a: &Var, b: &Var) -> Result<Var> { Var::apply(Op::Mul, &[a.clone(), b.clone()]) }
    pub fn relu_grad(g: &Var, y: &Var) -> Result<Var> { Var::apply(Op::ReluGrad, &[g.clone(), y.clone()]) }
    pub fn div(a: &Var, b: &Var) -> Result<Var> { Var::apply(Op::Div, &[a.clone(), b.clone()]) }
    pub fn neg(a: &Var) -> Result<Var> { Var::apply(Op::Neg, &[a.clone()]) }
    pub fn exp(a: &Var) -> Result<Var> { Var::apply(Op::Exp, &[a.clone()]) }
    /// a * c for a constant c
    pub fn scale(a: &Var, c: f32) -> Result<Var> { mul(a, &Var::scalar(c)) }
    /// c - a for a constant c
    pub fn rsub(c: f32, a: &Var) -> Result<Var> { sub(&Var::scalar(c), a) }
    pub fn cmp(op: Op, a: &Var, b: &Var) -> Result<Var> { Var::apply(op, &[a.clone(), b.clone()]) }
    pub fn reshape(a: &Var, shape: &[usize]) -> Result<Var> {
        if crate::shape::same(&a.shape(), shape) {
            return Ok(a.clone());
        }
        Var::apply(Op::Reshape { shape: shape.iter().map(|&d| d as i64).collect() }, &[a.clone()])
    }
    pub fn broadcast_to(a: &Var, shape: &[usize]) -> Result<Var> {
        if crate::shape::same(&a.shape(), shape) {
            return Ok(a.clone());
        }
        Var::apply(Op::BroadcastTo { shape: shape.to_vec() }, &[a.clone()])
    }
    pub fn sum(a: &Var, axes: Vec<i64>, keepdims: bool) -> Result<Var> {
        Var::apply(Op::Sum { axes, keepdims }, &[a.clone()])
    }
    /// Sum a gradient back to an input's shape (the adjoint of broadcasting).
    pub fn sum_to(g: &Var, shape: &[usize]) -> Result<Var> {
        let gs = g.shape();
        if crate::shape::same(&gs, shape) {
            return Ok(g.clone());
        }
        let lead = gs.len() - shape.len();
        let mut axes: Vec<i64> = (0..lead as i64).collect();
        for (i, &d) in shape.iter().enumerate() {
            if d == 1 && gs[lead + i] != 1 {
                axes.push((lead + i) as i64);
            }
        }
        let s = if axes.is_empty() { g.clone() } else { sum(g, axes, true)? };
        reshape(&s, shape)
    }
    pub fn matmul(a: &Var, b: &Var, ta: bool, tb: bool) -> Result<Var> {
        Var::apply(Op::MatMul { ta, tb }, &[a.clone(), b.clone()])
    }
}
