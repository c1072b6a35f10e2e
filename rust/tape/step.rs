//! A compiled training step: the flat program of forward + backward and the optimizer update,
//! replayed in ONE call.
//!
//! The program's outputs are the loss and one gradient per parameter. The update applies each
//! optimizer call's `Rule` (the same code as the eager `optimizer.step()`) to the parameters in
//! place. One fusion is made where the math allows it exactly: with plain SGD (no momentum, no
//! weight decay) a weight gradient produced by a matmul node that nothing else reads is never
//! materialised; the executor writes `W += -lr * op(A) op(B)` straight into the weight (a GEMM
//! epilogue, not a derivative: the matmul node is the one the VJP rule emitted).
//!
//! Buffers: the step owns an arena (see `tensor::with_arena`). The first call fills it; later
//! calls take every intermediate buffer from it, so a step allocates no tensor storage.
//!
//! Split step (data-parallel training): `grads_into` replays forward + backward and puts the
//! gradients into one flat buffer (a weight gradient's matmul writes its slice directly);
//! `update_from` applies the optimizer calls with the gradients read from it, so an all-reduce of
//! the buffer can run in between. Both share `run`'s replay, call checks and update loop.
use std::sync::{Arc, Mutex};

use crate::bail;
use crate::error::Result;
use crate::kernels::{num_threads, pool, PAR_MIN_LEN};
use crate::ops::{self, Op};
use crate::optim::Rule;
use crate::tensor::{with_arena, Tensor};

use super::program::{AtSkip, Program, SlotKind};
use super::{Grad, Var};
use crate::ops::matmul::Outer;

/// One optimizer call: a rule, the parameters it updates (indices into the step's parameter
/// list) and their state buffers by position (`None`: an absent optional buffer).
pub struct Call {
    pub rule: Rule,
    pub params: Vec<usize>,
    pub states: Vec<Option<Vec<Var>>>,
}

/// Eager updates of fewer parameters than this (in all) run on the calling thread (or on the
/// spinning team when it is awake, from `UPDATE_TEAM_MIN`). Handing a
/// memory-bound update to the pool wakes its parked workers (~50 us each on this VM), more than
/// a second thread saves below ~1M floats: the MLP 784-256-256-10 (269k parameters) at 2
/// threads, eager step at batch 1: 236-301 us through the pool, 103-118 us on the caller.
const UPDATE_PAR_MIN: usize = 1 << 20;

/// Apply `rule` to `params` in place with `grads`; state buffers are updated in place too.
/// Small or single-threaded updates run on the calling thread (no pool handoff).
/// A gradient deferred by `backward` (`Grad::Outer`) is computed in small blocks as the update
/// reaches them, never as a whole matrix; each element has the same bits as `Var::grad`'s, so
/// the update is the same as on the computed gradient.
pub fn update_vars(rule: &Rule, params: &[Var], states: &[Option<Vec<Var>>], grads: &[&Grad]) -> Result<()> {
    let src: Vec<Src> = grads
        .iter()
        .map(|g| match g {
            Grad::Dense(t) => Src::Slice(t.data()),
            Grad::Outer(o) => Src::Outer(o),
        })
        .collect();
    let shapes: Vec<Vec<usize>> = grads.iter().map(|g| g.shape()).collect();
    update_src(rule, params, states, &src, &shapes.iter().map(|s| s.as_slice()).collect::<Vec<_>>())
}

/// Where an update reads one parameter's gradient.
#[derive(Clone, Copy)]
enum Src<'a> {
    Slice(&'a [f32]),
    Outer(&'a Outer),
    /// The elementwise sum of equal-length slices, added in list order (`((g0 + g1) + g2) ...`):
    /// the gradients of data-parallel ranks read where each rank wrote them (see
    /// `TrainStep::update_from`).
    Sum(&'a [&'a [f32]]),
}

impl Src<'_> {
    fn len(&self) -> usize {
        match self {
            Src::Slice(g) => g.len(),
            Src::Outer(o) => o.numel(),
            Src::Sum(gs) => gs[0].len(),
        }
    }
}

/// Floats of a deferred gradient computed at a time (64 KiB, in L2) before a rule other than
/// plain SGD applies them. For such rules deferral is about neutral at batch 1 (the product moves
/// from the backward into the update: MLP 784-256-256-10, same process, momentum 96.4 vs 95.7 us
/// per step, Adam 276 vs 272); 2048-float blocks cost Adam more (its per-call constants).
const OUTER_BLOCK: usize = 1 << 14;

/// `rule` on one parameter's elements `start..start + p.len()`, `s` holding the same elements of
/// its state buffers.
fn apply_src(rule: &Rule, p: &mut [f32], g: Src, start: usize, s: &mut [Option<&mut [f32]>]) {
    match g {
        Src::Slice(g) => rule.apply(p, &g[start..start + p.len()], s),
        Src::Outer(o) => match rule.plain_sgd_factor() {
            // plain SGD is `p + (-lr) g` (maximize: `-lr (-g)`, the same number): one pass over
            // the weight, the gradient never stored (the compiled step's fused update does the same)
            Some(beta) => o.axpy(start, p, beta),
            None => apply_outer_blocks(rule, p, o, start, s),
        },
        Src::Sum([g]) => rule.apply(p, &g[start..start + p.len()], s),
        Src::Sum(&[g0, g1]) if rule.plain_sgd_factor().is_some() => {
            // plain SGD on two ranks' gradients: `p + beta (g0 + g1)`, one pass, the sum never stored
            let (beta, n) = (rule.plain_sgd_factor().unwrap(), p.len());
            let (g0, g1) = (&g0[start..start + n], &g1[start..start + n]);
            crate::kernels::simd::dispatch(#[inline(always)] move || {
                for i in 0..n {
                    p[i] += beta * (g0[i] + g1[i]);
                }
            })
        }
        Src::Sum(gs) => apply_blocks(rule, p, s, |off, buf| sum_into(buf, gs, start + off)),
    }
}

/// `buf = ((gs[0] + gs[1]) + gs[2]) ...`, elements `a..a + buf.len()` of each.
fn sum_into(buf: &mut [f32], gs: &[&[f32]], a: usize) {
    let n = buf.len();
    crate::kernels::simd::dispatch(#[inline(always)] move || {
        let (g0, g1) = (&gs[0][a..a + n], &gs[1][a..a + n]);
        for i in 0..n {
            buf[i] = g0[i] + g1[i];
        }
        for g in &gs[2..] {
            let g = &g[a..a + n];
            for i in 0..n {
                buf[i] += g[i];
            }
        }
    })
}

/// `rule` applied block by block (`OUTER_BLOCK` floats, in L2), `fill(off, buf)` writing the
/// gradient's elements `off..off + buf.len()` (relative to `p`) into `buf` just before.
fn apply_blocks(rule: &Rule, p: &mut [f32], s: &mut [Option<&mut [f32]>], mut fill: impl FnMut(usize, &mut [f32])) {
    let mut buf = vec![0f32; OUTER_BLOCK.min(p.len())];
    let ns = s.len().min(4);
    let mut off = 0;
    while off < p.len() {
        let len = OUTER_BLOCK.min(p.len() - off);
        fill(off, &mut buf[..len]);
        let mut sub: [Option<&mut [f32]>; 4] = [None, None, None, None];
        for (d, x) in sub.iter_mut().zip(s.iter_mut()) {
            *d = x.as_deref_mut().map(|x| &mut x[off..off + len]);
        }
        rule.apply(&mut p[off..off + len], &buf[..len], &mut sub[..ns]);
        off += len;
    }
}

/// A rule other than plain SGD on a deferred gradient: its elements `start..` computed block by
/// block (`OUTER_BLOCK`), each block applied as it is made.
fn apply_outer_blocks(rule: &Rule, p: &mut [f32], o: &Outer, start: usize, s: &mut [Option<&mut [f32]>]) {
    apply_blocks(rule, p, s, |off, buf| o.fill(start + off, buf))
}

fn update_src(rule: &Rule, params: &[Var], states: &[Option<Vec<Var>>], grads: &[Src], shapes: &[&[usize]]) -> Result<()> {
    if states.len() > 4 {
        bail!(Value, "optimizer step: {} state buffer lists (at most 4)", states.len());
    }
    if let Some(k) = rule.required_states().iter().find(|&&k| states.get(k).map_or(true, |s| s.is_none())) {
        bail!(Value, "optimizer step: {rule:?} needs state buffer list {k}");
    }
    if grads.len() != params.len() || shapes.len() != params.len() {
        bail!(Value, "optimizer step: {} parameters but {} gradients", params.len(), grads.len());
    }
    for s in states.iter().flatten() {
        if s.len() != params.len() {
            bail!(Value, "optimizer step: {} parameters but {} state buffers", params.len(), s.len());
        }
    }
    for (i, p) in params.iter().enumerate() {
        let ps = p.shape();
        if shapes[i] != ps.as_slice() {
            bail!(Shape, "optimizer step: gradient shape {:?} does not match parameter shape {:?}", shapes[i], ps);
        }
        if grads[i].len() != ps.iter().product::<usize>() {
            bail!(Shape, "optimizer step: a gradient of shape {ps:?} has {} elements", grads[i].len());
        }
        if states.iter().flatten().any(|s| s[i].shape() != ps) {
            bail!(Shape, "optimizer step: a state buffer's shape does not match its parameter's shape {ps:?}");
        }
    }
    let work: usize = params.iter().map(|p| p.shape().iter().product::<usize>()).sum();
    // a mid-size update right after the team's products (an eager backward at batch 8-64) joins
    // the team while its helper still spins: MLP 784-256-256-10, 2 threads, eager step, the same
    // process alternating both ways: batch 8 SGD 179 -> 138 us, momentum 1.23-1.59x faster, Adam
    // 553 -> 316 us, batch 32 SGD 1.12x. With every helper parked (batch 1: no product is split)
    // it stays on the caller: waking a helper for it made the batch-1 step 2x slower.
    if num_threads() > 1 && (UPDATE_TEAM_MIN..UPDATE_PAR_MIN).contains(&work) && crate::kernels::team_awake() {
        if let Some(r) = update_on_team(rule, params, states, grads) {
            return r;
        }
    }
    let run = || {
        for (i, p) in params.iter().enumerate() {
            // update inside the Vars' own storage: no copy unless a buffer is shared
            let mut pv = p.value_mut();
            let mut bufs: Vec<Option<_>> = states.iter().map(|s| s.as_ref().map(|s| s[i].value_mut())).collect();
            let mut slices: Vec<Option<&mut [f32]>> = bufs.iter_mut().map(|b| b.as_mut().map(|b| b.make_mut())).collect();
            apply_src(rule, pv.make_mut(), grads[i], 0, &mut slices);
        }
    };
    if work < UPDATE_PAR_MIN || num_threads() == 1 {
        run()
    } else {
        crate::kernels::install(run)
    }
    Ok(())
}

/// Eager updates of at least this many parameters (in all) and under `UPDATE_PAR_MIN` run on the
/// spinning team (`kernels/team.rs`), in chunks of `UPDATE_CHUNK` claimed by whichever member
/// is free.
const UPDATE_TEAM_MIN: usize = 1 << 16;
const UPDATE_CHUNK: usize = 1 << 15;

/// Updates that `update_on_team` has run (a test checks that the path is taken).
static TEAM_UPDATES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

pub fn team_updates() -> usize {
    TEAM_UPDATES.load(std::sync::atomic::Ordering::Relaxed)
}

/// Raw parts of one parameter's update: the parameter, its gradient and its state buffers.
struct UpdateParts<'a> {
    p: *mut f32,
    g: Src<'a>,
    s: Vec<Option<*mut f32>>,
}
// SAFETY: the pointers are only used for disjoint chunks inside one `run_blocks` call, while the
// caller holds every buffer's write guard (see `update_on_team`); `g` is only read
unsafe impl Send for UpdateParts<'_> {}
unsafe impl Sync for UpdateParts<'_> {}

/// `update_src`'s update split into chunks across the spinning team. Every optimizer rule is
/// elementwise, so each element gets the same arithmetic whichever thread runs its chunk:
/// results do not depend on the thread count. None (the caller updates serially) when a buffer
/// appears twice among the parameters and states, whose write guards could not all be held.
fn update_on_team(rule: &Rule, params: &[Var], states: &[Option<Vec<Var>>], grads: &[Src]) -> Option<Result<()>> {
    let mut ids: Vec<u64> = params.iter().map(|p| p.id()).chain(states.iter().flatten().flatten().map(|v| v.id())).collect();
    let n_ids = ids.len();
    ids.sort_unstable();
    ids.dedup();
    if ids.len() != n_ids {
        return None;
    }
    let mut pg: Vec<_> = params.iter().map(|p| p.value_mut()).collect();
    let mut sg: Vec<Vec<Option<_>>> = (0..params.len()).map(|i| states.iter().map(|s| s.as_ref().map(|s| s[i].value_mut())).collect()).collect();
    let parts: Vec<UpdateParts> = pg
        .iter_mut()
        .zip(sg.iter_mut())
        .zip(grads)
        .map(|((p, s), g)| UpdateParts {
            p: p.make_mut().as_mut_ptr(),
            g: *g,
            s: s.iter_mut().map(|b| b.as_mut().map(|b| b.make_mut().as_mut_ptr())).collect(),
        })
        .collect();
    let mut chunks: Vec<(usize, usize, usize)> = Vec::new();
    for (i, g) in grads.iter().enumerate() {
        let mut a = 0;
        while a < g.len() {
            let b = (a + UPDATE_CHUNK).min(g.len());
            chunks.push((i, a, b));
            a = b;
        }
    }
    TEAM_UPDATES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    crate::kernels::run_blocks(chunks.len(), |c| {
        let (i, a, b) = chunks[c];
        let u = &parts[i];
        // SAFETY: chunk c is the only one touching elements a..b of parameter i and of its
        // buffers; the guards above keep every buffer alive and unaliased for this call
        unsafe {
            let p = std::slice::from_raw_parts_mut(u.p.add(a), b - a);
            let mut s: Vec<Option<&mut [f32]>> = u.s.iter().map(|q| q.map(|q| std::slice::from_raw_parts_mut(q.add(a), b - a))).collect();
            apply_src(rule, p, u.g, a, &mut s);
        }
    });
    drop(sg);
    drop(pg);
    Some(Ok(()))
}

/// A last-use table for one set of deferred nodes.
type Plan = (Vec<bool>, Arc<Vec<usize>>);

pub struct TrainStep {
    prog: Program,
    params: Vec<Var>,
    /// program output index holding each parameter's gradient
    grad_out: Vec<usize>,
    /// for each parameter, the matmul node slot that produces its gradient and that nothing
    /// but the output list reads (a candidate for the fused SGD epilogue)
    fusable: Vec<Option<usize>>,
    /// for each parameter, whether its fused update may run at its gradient node's position
    /// (every node reading the parameter comes earlier), while that product's inputs are still in
    /// cache, instead of after the whole replay
    inline: Vec<bool>,
    /// whether any kernel of the step runs on the rayon pool (then the replay runs on a pool
    /// worker; see `on_pool`)
    parallel: bool,
    /// last-use tables per set of deferred (fused) nodes (a handful at most: a linear scan)
    plans: Mutex<Vec<Plan>>,
    arena: Mutex<Vec<Vec<f32>>>,
}

impl TrainStep {
    /// `prog` outputs the loss (output 0) then one gradient per parameter, in order.
    pub fn new(prog: Program, params: Vec<Var>) -> Result<TrainStep> {
        if prog.outputs.len() != params.len() + 1 {
            bail!(Value, "compiled step: the program has {} outputs, expected the loss and {} gradients", prog.outputs.len(), params.len());
        }
        let grad_out: Vec<usize> = (1..=params.len()).collect();
        let mut readers = vec![0usize; prog.slots.len()];
        for s in &prog.slots {
            if let SlotKind::Node { args, .. } = &s.kind {
                for &a in args {
                    readers[a] += 1;
                }
            }
        }
        for &o in &prog.outputs {
            readers[o] += 1;
        }
        let fusable = params
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let slot = prog.outputs[grad_out[i]];
                let s = &prog.slots[slot];
                match &s.kind {
                    SlotKind::Node { op: Op::MatMul { .. }, .. } if readers[slot] == 1 && s.shape == p.shape() => Some(slot),
                    _ => None,
                }
            })
            .collect();
        let inline = params
            .iter()
            .zip(&fusable)
            .map(|(p, f): (&Var, &Option<usize>)| {
                let Some(at) = *f else { return false };
                // the last node reading the parameter's captured slot must come before `at`
                let cap: Vec<usize> = (0..prog.slots.len()).filter(|&c| matches!(&prog.slots[c].kind, SlotKind::Captured(v) if v.id() == p.id())).collect();
                prog.slots.iter().enumerate().all(|(i, s)| match &s.kind {
                    SlotKind::Node { args, .. } => i < at || !args.iter().any(|a| cap.contains(a)),
                    _ => true,
                })
            })
            .collect();
        let parallel = prog.slots.iter().any(|s| {
            let numel: usize = s.shape.iter().product();
            if numel >= PAR_MIN_LEN {
                return true; // maps and reductions of this size run on the rayon pool
            }
            let SlotKind::Node { op: Op::MatMul { ta, .. }, args } = &s.kind else { return false };
            let a = &prog.slots[args[0]].shape;
            let k = a.len().checked_sub(if *ta { 2 } else { 1 }).map_or(0, |d| a[d]);
            let flops = 2 * numel * k;
            // a single product is split by hand on the spinning team (kernels/gemm.rs), which
            // needs no pool; stacked products and products of a GFLOP and more use the pool
            let stacked = s.shape.len() > 2 && s.shape[..s.shape.len() - 2].iter().product::<usize>() > 1;
            (stacked && flops >= crate::kernels::gemm::PAR_MIN_FLOPS) || flops >= 1 << 30
        });
        Ok(TrainStep { prog, params, grad_out, fusable, inline, parallel, plans: Mutex::new(Vec::new()), arena: Mutex::new(Vec::new()) })
    }

    pub fn program(&self) -> &Program {
        &self.prog
    }

    /// Parameters whose gradient the next `run` with these calls writes straight into the weight.
    pub fn fused(&self, calls: &[Call]) -> Vec<bool> {
        let mut fused = vec![false; self.params.len()];
        for c in calls {
            if c.rule.plain_sgd_factor().is_some() {
                for &i in &c.params {
                    fused[i] = self.fusable[i].is_some();
                }
            }
        }
        fused
    }

    /// Forward, backward and every optimizer call, in one replay; returns the loss.
    pub fn run(&self, inputs: &[Tensor], calls: &[Call]) -> Result<f32> {
        self.on_pool(|| self.run_here(inputs, calls))
    }

    /// Forward and backward only (no fused updates): every parameter's gradient is copied, in
    /// parameter order, contiguously into `flat` (its length: the parameters' elements in all);
    /// returns the loss. With `update_from`, the two halves of `run` for data-parallel training
    /// (the gradients are all-reduced in between). Each gradient is multiplied by `scale` while
    /// it is copied (a rank's weight in the all-reduced sum; 1 copies it unchanged); a weight
    /// gradient computed by a matmul that only the output list reads is not copied: the matmul
    /// writes `scale` times its product straight into the gradient's slice. With a power of two
    /// (equal batches on 1, 2, 4, ... ranks) that is the same number as the copy's; another scale
    /// may round differently in the last bit (the GEMM may apply it to an operand). With
    /// `ready`, each gradient is copied as soon as the node computing it has run, and `ready(i)`
    /// is called right after parameter i's gradient is in `flat` (so an all-reduce of finished
    /// parts can start while the backward goes on); gradients that are no node's result follow
    /// at the end.
    pub fn grads_into(&self, inputs: &[Tensor], flat: &mut [f32], scale: f32, ready: Option<&mut (dyn FnMut(usize) -> Result<()> + Send)>) -> Result<f32> {
        let offsets = self.flat_offsets("grads_into", flat.len())?;
        // program slot -> the parameters whose gradient it holds
        let mut of_slot: std::collections::HashMap<usize, Vec<usize>> = std::collections::HashMap::new();
        for i in 0..self.params.len() {
            of_slot.entry(self.prog.outputs[self.grad_out[i]]).or_default().push(i);
        }
        // a weight gradient that is a matmul only the output list reads is computed straight into
        // its slice of `flat`, times `scale` (no gradient buffer, no copy); skipped by the replay
        let mut skip = vec![false; self.prog.slots.len()];
        for s in self.fusable.iter().flatten() {
            skip[*s] = true;
        }
        self.on_pool(move || {
            let no = vec![false; self.prog.slots.len()];
            // the flat buffer, which gradients are in it, and the callback, shared by the per-node
            // hook (gradients copied as soon as they are final) and the end of the replay
            let state = std::cell::RefCell::new((flat, vec![false; self.params.len()], ready));
            let mut direct = |slot: usize, vals: &mut [Option<Tensor>]| -> Result<()> {
                for i in (0..self.params.len()).filter(|&i| self.fusable[i] == Some(slot)) {
                    let mut st = state.borrow_mut();
                    let (flat, done, ready) = &mut *st;
                    let shape = self.params[i].shape();
                    self.product_into(i, vals, &mut flat[offsets[i]..offsets[i + 1]], &shape, scale, false, "matmul")?;
                    done[i] = true;
                    if let Some(cb) = ready {
                        cb(i)?;
                    }
                }
                Ok(())
            };
            let put = |i: usize, g: &Tensor| -> Result<()> {
                let mut st = state.borrow_mut();
                let (flat, done, ready) = &mut *st;
                let p = &self.params[i];
                if g.shape != p.shape() {
                    bail!(Shape, "compiled step: gradient {i} has shape {:?}, its parameter {:?}", g.shape, p.shape());
                }
                let dst = &mut flat[offsets[i]..offsets[i + 1]];
                if scale == 1.0 {
                    dst.copy_from_slice(g.data());
                } else {
                    dst.iter_mut().zip(g.data()).for_each(|(d, &v)| *d = v * scale);
                }
                done[i] = true;
                match ready {
                    Some(cb) => cb(i),
                    None => Ok(()),
                }
            };
            let mut computed = |slot: usize, t: &Tensor| -> Result<()> {
                if let Some(ps) = of_slot.get(&slot) {
                    for &i in ps {
                        put(i, t)?;
                    }
                }
                Ok(())
            };
            let hook: Option<&mut dyn FnMut(usize, &Tensor) -> Result<()>> = if state.borrow().2.is_some() { Some(&mut computed) } else { None };
            self.replay(inputs, &skip, &no, &mut direct, hook, |loss, vals| {
                for i in 0..self.params.len() {
                    if !state.borrow().1[i] {
                        put(i, vals[self.prog.outputs[self.grad_out[i]]].as_ref().expect("program output missing"))?;
                    }
                }
                Ok(loss)
            })
        })
    }

    /// Every optimizer call, as `run` applies it to a parameter it does not fuse, with each
    /// parameter's gradient read from its slice of `flat` (the layout `grads_into` writes).
    pub fn update_from(&self, flat: &[f32], calls: &[Call]) -> Result<()> {
        self.update_from_sum(&[flat], calls)
    }

    /// `update_from` with the gradient the elementwise sum of `flats` (each in the layout
    /// `grads_into` writes), added in list order as the update reaches each block: the
    /// data-parallel ranks of one machine each write their gradients into shared memory and every
    /// rank updates from all of them, with no all-reduce and no pass writing the sum.
    pub fn update_from_sum(&self, flats: &[&[f32]], calls: &[Call]) -> Result<()> {
        self.check_calls(calls)?;
        if flats.is_empty() {
            bail!(Value, "TrainStep.update_from: no gradient buffer");
        }
        let mut offsets = Vec::new();
        for f in flats {
            offsets = self.flat_offsets("update_from", f.len())?;
        }
        let per: Vec<Vec<&[f32]>> = offsets.windows(2).map(|w| flats.iter().map(|f| &f[w[0]..w[1]]).collect()).collect();
        let grads: Vec<Src> = per.iter().map(|g| if g.len() == 1 { Src::Slice(g[0]) } else { Src::Sum(g) }).collect();
        let shapes: Vec<Vec<usize>> = self.params.iter().map(|p| p.shape()).collect();
        let shapes: Vec<&[usize]> = shapes.iter().map(|s| s.as_slice()).collect();
        self.update_unfused(calls, &vec![false; self.params.len()], &grads, &shapes)
    }

    /// Run `f` on a pool worker when the step has kernels that use the rayon pool (see `run`).
    fn on_pool<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        if self.parallel && num_threads() > 1 {
            // the whole replay on a pool worker: the pool stays awake between the step's rayon
            // kernels instead of being woken (tens of us on a VM) for each one. Not for steps
            // whose only parallel work is single products, which the spinning team splits with
            // the caller taking part: there the hop to a worker only cost time (MLP
            // 784-256-256-10 at 2 threads, the same process alternating both ways, time on the
            // pool / on the caller: batch 16 1.22-1.49, 32 1.01-1.33, 64 1.04-1.10, 128
            // 1.03-1.05, 256 1.02-1.03, 512 1.00). Batch 1: +30 us on the pool.
            return pool().install(f);
        }
        f()
    }

    /// Start offsets of each parameter's gradient in the flat layout (and the total at the
    /// end), after checking that a flat buffer of `len` elements holds them.
    fn flat_offsets(&self, what: &str, len: usize) -> Result<Vec<usize>> {
        let mut offsets = Vec::with_capacity(self.params.len() + 1);
        offsets.push(0);
        for p in &self.params {
            offsets.push(offsets.last().unwrap() + p.shape().iter().product::<usize>());
        }
        let total = *offsets.last().unwrap();
        if len != total {
            bail!(Value, "TrainStep.{what}: flat has {len} elements, the parameters have {total} in all");
        }
        Ok(offsets)
    }

    /// The update calls' checks: state lists complete and of the calls' lengths, parameter
    /// indices in range and each updated at most once.
    fn check_calls(&self, calls: &[Call]) -> Result<()> {
        let mut seen = vec![false; self.params.len()];
        for c in calls {
            for (k, st) in c.states.iter().enumerate() {
                match st {
                    Some(s) if s.len() != c.params.len() => {
                        bail!(Value, "compiled step: state list {k} has {} buffers for {} parameters", s.len(), c.params.len())
                    }
                    None if c.rule.required_states().contains(&k) => bail!(Value, "compiled step: {:?} needs state list {k}", c.rule),
                    _ => {}
                }
            }
            if let Some(k) = c.rule.required_states().iter().find(|&&k| k >= c.states.len()) {
                bail!(Value, "compiled step: {:?} needs state list {k}", c.rule);
            }
            for &i in &c.params {
                if i >= self.params.len() || std::mem::replace(&mut seen[i], true) {
                    bail!(Value, "compiled step: parameter index {i} is out of range or updated twice");
                }
            }
        }
        Ok(())
    }

    /// Apply every call's rule to its parameters that are not `fused`, parameter `i`'s gradient
    /// being `grads[i]` of shape `shapes[i]` (indexed by parameter; fused entries are unused).
    fn update_unfused(&self, calls: &[Call], fused: &[bool], grads: &[Src], shapes: &[&[usize]]) -> Result<()> {
        for c in calls {
            let plain: Vec<usize> = c.params.iter().copied().filter(|&i| !fused[i]).collect();
            if plain.is_empty() {
                continue;
            }
            let ps: Vec<Var> = plain.iter().map(|&i| self.params[i].clone()).collect();
            let pos: Vec<usize> = plain.iter().map(|&i| c.params.iter().position(|&j| j == i).unwrap()).collect();
            let states: Vec<Option<Vec<Var>>> = c.states.iter().map(|s| s.as_ref().map(|s| pos.iter().map(|&k| s[k].clone()).collect())).collect();
            let gs: Vec<Src> = plain.iter().map(|&i| grads[i]).collect();
            let ss: Vec<&[usize]> = plain.iter().map(|&i| shapes[i]).collect();
            if ops::profile::enabled() {
                ops::profile::timed_shapes("optimizer_update", &ss, || update_src(&c.rule, &ps, &states, &gs, &ss))
            } else {
                update_src(&c.rule, &ps, &states, &gs, &ss)
            }?;
        }
        Ok(())
    }

    /// Replay the program inside the step's arena without the `skip` nodes (`deferred`: those
    /// whose inputs are kept to the end), calling `at_skip(slot, values)` at each skipped node's
    /// position instead (a fused product there); checks that the loss is a scalar and returns
    /// `finish(loss, slot values)`, run before the values go back to the arena.
    fn replay<R>(
        &self,
        inputs: &[Tensor],
        skip: &[bool],
        deferred: &[bool],
        at_skip: AtSkip<'_>,
        computed: Option<&mut dyn FnMut(usize, &Tensor) -> Result<()>>,
        finish: impl FnOnce(f32, &[Option<Tensor>]) -> Result<R>,
    ) -> Result<R> {
        let last_use = {
            let mut plans = self.plans.lock().unwrap();
            match plans.iter().find(|(k, _)| k.as_slice() == deferred) {
                Some((_, p)) => p.clone(),
                None => {
                    let p = Arc::new(self.prog.last_use_skipping(deferred));
                    plans.push((deferred.to_vec(), p.clone()));
                    p
                }
            }
        };
        let mut arena = self.arena.lock().unwrap();
        with_arena(&mut arena, || -> Result<R> {
            let vals = self.prog.run_slots(inputs, &last_use, skip, at_skip, computed)?;
            let loss = vals[self.prog.outputs[0]].as_ref().expect("program output missing");
            if loss.data().len() != 1 {
                bail!(Shape, "compiled step: the loss must be a scalar, got shape {:?}", loss.shape);
            }
            let loss = loss.data()[0];
            let r = finish(loss, &vals);
            drop(vals);
            r
        })
    }

    fn run_here(&self, inputs: &[Tensor], calls: &[Call]) -> Result<f32> {
        self.check_calls(calls)?;
        let fused = self.fused(calls);
        // every fused node is skipped by the replay; those that cannot run inline are deferred
        // to the end (their inputs are kept alive until then)
        let mut skip = vec![false; self.prog.slots.len()];
        let mut deferred = vec![false; self.prog.slots.len()];
        // a fused node's slot -> (parameter, SGD factor) for the updates made inline
        let mut at_node: Vec<(usize, usize, f32)> = Vec::new();
        let mut at_end: Vec<(usize, f32)> = Vec::new();
        for c in calls {
            let beta = c.rule.plain_sgd_factor().unwrap_or(0.0);
            for &i in &c.params {
                if fused[i] {
                    let slot = self.fusable[i].unwrap();
                    skip[slot] = true;
                    if self.inline[i] {
                        at_node.push((slot, i, beta));
                    } else {
                        deferred[slot] = true;
                        at_end.push((i, beta));
                    }
                }
            }
        }
        let mut inline_update = |slot: usize, vals: &mut [Option<Tensor>]| -> Result<()> {
            match at_node.iter().find(|u| u.0 == slot) {
                Some(&(_, i, beta)) => self.fused_update(i, beta, vals),
                None => Ok(()),
            }
        };
        self.replay(inputs, &skip, &deferred, &mut inline_update, None, |loss, vals| {
            let (mut grads, mut shapes): (Vec<Src>, Vec<&[usize]>) = (Vec::new(), Vec::new());
            for i in 0..self.params.len() {
                let g = if fused[i] { None } else { Some(vals[self.prog.outputs[self.grad_out[i]]].as_ref().expect("program output missing")) };
                grads.push(Src::Slice(g.map_or(&[][..], |g| g.data())));
                shapes.push(g.map_or(&[][..], |g| g.shape.as_slice()));
            }
            self.update_unfused(calls, &fused, &grads, &shapes)?;
            for (i, beta) in at_end {
                self.fused_update(i, beta, vals)?;
            }
            Ok(loss)
        })
    }

    /// Parameter `i` += beta * (its gradient's matmul), the product's inputs taken from `vals`.
    fn fused_update(&self, i: usize, beta: f32, vals: &[Option<Tensor>]) -> Result<()> {
        let mut w = self.params[i].value_mut();
        let shape = w.shape.clone();
        self.product_into(i, vals, w.make_mut(), &shape, beta, true, "matmul+sgd_update")
    }

    /// `dst (+)= beta * (parameter i's gradient matmul)` (added to `dst` with `accumulate`), the
    /// product's inputs taken from `vals`.
    #[allow(clippy::too_many_arguments)]
    fn product_into(&self, i: usize, vals: &[Option<Tensor>], dst: &mut [f32], shape: &[usize], beta: f32, accumulate: bool, name: &'static str) -> Result<()> {
        let slot = self.fusable[i].unwrap();
        let SlotKind::Node { op: Op::MatMul { ta, tb }, args } = &self.prog.slots[slot].kind else { unreachable!() };
        let (a, b) = (vals[args[0]].as_ref().expect("fused product input freed"), vals[args[1]].as_ref().expect("fused product input freed"));
        let mut go = || ops::matmul::product_into(a, b, *ta, *tb, dst, shape, beta, accumulate);
        if ops::profile::enabled() { ops::profile::timed(name, &[a, b], go) } else { go() }
    }
}
