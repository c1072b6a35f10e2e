//! Reverse sweep. Var ids grow in creation order and an op's result is created after its inputs,
//! so sorting the reachable subgraph by id (descending) is a reverse topological order: the
//! tape is a Wengert list, and backward is a loop over it calling each op's VJP rule.
use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

use super::{build, no_grad, set_grad_enabled, Grad, Var};
use crate::bail;
use crate::error::Result;
use crate::ops::{self, matmul::Outer};
use crate::tensor::Tensor;

/// Var ids are unique integers: hashed by one multiply (Fibonacci hashing) instead of SipHash,
/// which was 3% of a backward over 10,000 scalar ops.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0.wrapping_mul(0x9E37_79B9_7F4A_7C15)
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | b as u64;
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type IdMap<V> = HashMap<u64, V, BuildHasherDefault<IdHasher>>;
type IdSet = HashSet<u64, BuildHasherDefault<IdHasher>>;

/// The recorded subgraph in reverse topological order: each Var with its op and inputs.
type Order = Vec<(Var, Option<(ops::Op, Vec<Var>)>)>;

/// Reachable recorded subgraph from `roots` (only Vars that require grad), reverse topological
/// order. With `take` (a backward that frees the graph) each node is moved out of its Var, left
/// `Freed`, instead of copied and freed after the sweep; an error puts every taken node back.
fn reverse_topo(roots: &[Var], take: bool) -> Result<Order> {
    let mut seen = IdSet::default();
    let mut stack: Vec<Var> = roots.iter().filter(|v| v.requires_grad()).cloned().collect();
    let mut out = Vec::new();
    while let Some(v) = stack.pop() {
        if !seen.insert(v.id()) {
            continue;
        }
        // errors on a freed graph before anything is changed (taken nodes are put back)
        let node = match if take { v.take_node() } else { v.node() } {
            Ok(n) => n,
            Err(e) => {
                restore(out);
                return Err(e);
            }
        };
        if let Some((_, inputs)) = &node {
            stack.extend(inputs.iter().filter(|i| i.requires_grad() && !seen.contains(&i.id())).cloned());
        }
        out.push((v, node));
    }
    out.sort_by(|a, b| b.0.id().cmp(&a.0.id()));
    Ok(out)
}

/// Put nodes taken by `reverse_topo(.., take = true)` back into their Vars.
fn restore(order: Order) {
    for (v, node) in order {
        if let Some((op, inputs)) = node {
            v.restore_node(op, inputs);
        }
    }
}

/// Run the VJP sweep from `roots` seeded with `seeds`; returns the gradient of every Var for
/// which `keep(var, is_leaf)` is true, and the subgraph swept (with `take`, the nodes taken out
/// of the graph: the caller drops them on success or `restore`s them on a later error).
///
/// With `defer` (`backward`, which never records), the gradient of a kept leaf that is the right
/// operand of a product with one row (`ops::matmul::vjp_b_outer`) is kept unevaluated, as
/// `Grad::Outer`, unless a second contribution arrives for it; the third map returns those.
#[allow(clippy::type_complexity)]
fn sweep(roots: &[Var], seeds: Vec<Var>, create_graph: bool, take: bool, defer: bool, keep: impl Fn(&Var, bool) -> bool) -> Result<(IdMap<(Var, Var)>, IdMap<(Var, Outer)>, Order)> {
    let order = reverse_topo(roots, take)?;
    let mut grads: IdMap<Var> = IdMap::default();
    let mut lazy: IdMap<Outer> = IdMap::default();
    let prev = set_grad_enabled(create_graph);
    let result = (|| {
        for (r, s) in roots.iter().zip(seeds) {
            accumulate(&mut grads, &mut lazy, r.id(), s)?;
        }
        let (mut kept, mut kept_lazy) = (IdMap::default(), IdMap::default());
        for (v, node) in &order {
            if node.is_none() {
                if let Some(o) = lazy.remove(&v.id()) {
                    if keep(v, true) {
                        kept_lazy.insert(v.id(), (v.clone(), o));
                    }
                    continue;
                }
            }
            let Some(g) = grads.remove(&v.id()) else { continue };
            if let Some((op, inputs)) = node {
                let mut gi = None;
                if let (true, ops::Op::MatMul { ta, tb }) = (defer, op) {
                    let (a, b) = (&inputs[0], &inputs[1]);
                    let id = b.id();
                    if b.requires_grad() && !grads.contains_key(&id) && !lazy.contains_key(&id) && b.is_leaf() && keep(b, true) {
                        if let Some(o) = ops::matmul::vjp_b_outer(a, b, *ta, *tb, &g) {
                            lazy.insert(id, o);
                            gi = Some(ops::matmul::vjp_some(a, b, *ta, *tb, &g, a.requires_grad(), false)?);
                        }
                    }
                }
                let gi = match gi {
                    Some(gi) => gi,
                    None => ops::vjp(op, inputs, v, &g)?,
                };
                for (inp, gi) in inputs.iter().zip(gi) {
                    if let (Some(gi), true) = (gi, inp.requires_grad()) {
                        accumulate(&mut grads, &mut lazy, inp.id(), gi)?;
                    }
                }
                if keep(v, false) {
                    kept.insert(v.id(), (v.clone(), g));
                }
            } else if keep(v, true) {
                kept.insert(v.id(), (v.clone(), g));
            }
        }
        Ok((kept, kept_lazy))
    })();
    set_grad_enabled(prev);
    match result {
        Ok((kept, kept_lazy)) => Ok((kept, kept_lazy, order)),
        Err(e) => {
            if take {
                restore(order);
            }
            Err(e)
        }
    }
}

fn accumulate(grads: &mut IdMap<Var>, lazy: &mut IdMap<Outer>, id: u64, g: Var) -> Result<()> {
    if let Some(o) = lazy.remove(&id) {
        // a second contribution to a deferred gradient: it is computed and summed as usual
        grads.insert(id, Var::leaf(o.materialize()?, false));
    }
    let new = match grads.remove(&id) {
        Some(old) => build::add(&old, &g)?,
        None => g,
    };
    grads.insert(id, new);
    Ok(())
}

fn check_seed(root: &Var, seed: Option<Tensor>) -> Result<Var> {
    let shape = root.shape();
    match seed {
        None => {
            if shape.iter().product::<usize>() != 1 {
                bail!(Runtime, "grad can be implicitly created only for scalar outputs; this output has shape {shape:?}: pass a gradient of the same shape to backward(grad)");
            }
            Ok(Var::leaf(Tensor::full(&shape, 1.0)?, false))
        }
        Some(t) => {
            if t.shape != shape {
                bail!(Shape, "backward: gradient of shape {:?} does not match the output's shape {shape:?}", t.shape);
            }
            Ok(Var::leaf(t, false))
        }
    }
}

/// Whether `backward` defers small-batch weight gradients (`Grad::Outer`); on unless turned off
/// (`_core.set_deferred_grads`, for tests and same-process benchmarks).
static DEFER: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

pub fn set_deferred_grads(on: bool) -> bool {
    DEFER.swap(on, std::sync::atomic::Ordering::Relaxed)
}

/// `root.backward(seed)`: accumulate d root / d leaf into every leaf's `.grad`.
pub fn backward(root: &Var, seed: Option<Tensor>, retain_graph: bool) -> Result<()> {
    if !root.requires_grad() {
        bail!(Runtime, "backward: this tensor does not require grad and has no recorded history (did you forget requires_grad=True, or compute it under no_grad()?)");
    }
    let seed = check_seed(root, seed)?;
    let take = !retain_graph;
    let (kept, kept_lazy, order) = sweep(std::slice::from_ref(root), vec![seed], false, take, DEFER.load(std::sync::atomic::Ordering::Relaxed), |_, leaf| leaf)?;
    let res = no_grad(|| -> Result<()> {
        // compute every sum first, then assign: nothing is half-updated on error
        let mut updates = Vec::with_capacity(kept.len() + kept_lazy.len());
        let new_grads = kept.into_values().map(|(leaf, g)| (leaf, Grad::Dense(g.value()))).chain(kept_lazy.into_values().map(|(leaf, o)| (leaf, Grad::Outer(o))));
        for (leaf, g) in new_grads {
            let new = match leaf.grad_state() {
                Some(old) => Grad::Dense(build::add(&Var::leaf(old.to_tensor()?, false), &Var::leaf(g.to_tensor()?, false))?.value()),
                None => g,
            };
            updates.push((leaf, new));
        }
        for (leaf, new) in updates {
            leaf.set_grad_state(Some(new));
        }
        Ok(())
    });
    if let Err(e) = res {
        if take {
            restore(order);
        }
        return Err(e);
    }
    Ok(())
}

/// Functional gradients (torch.autograd.grad): d(sum of seeds . outputs)/d inputs, returned as
/// Vars (recorded on the tape when `create_graph`, so they can be differentiated again).
pub fn grad(outputs: &[Var], seeds: Vec<Option<Tensor>>, inputs: &[Var], retain_graph: bool, create_graph: bool) -> Result<Vec<Option<Var>>> {
    if outputs.len() != seeds.len() {
        bail!(Value, "grad: {} outputs but {} output gradients", outputs.len(), seeds.len());
    }
    let seeds = outputs.iter().zip(seeds).map(|(o, s)| check_seed(o, s)).collect::<Result<Vec<_>>>()?;
    let want: IdSet = inputs.iter().map(|v| v.id()).collect();
    let take = !retain_graph && !create_graph;
    let (mut kept, _lazy, _order) = sweep(outputs, seeds, create_graph, take, false, |v, _| want.contains(&v.id()))?;
    Ok(inputs.iter().map(|v| kept.remove(&v.id()).map(|(_, g)| g)).collect())
}
