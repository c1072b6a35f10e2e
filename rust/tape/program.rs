//! Export a recorded graph as a flat program of registry ops, and replay it.
//!
//! Slots are numbered in topological (creation) order. Placeholders are the Vars the caller names
//! as inputs; every other leaf is a captured Var whose *current* value is read at replay time
//! (so parameters updated in place by an optimizer are seen by the next replay).
use std::collections::HashMap;

use crate::bail;
use crate::error::Result;
use crate::ops::{self, Op};
use crate::shape::Shape;
use crate::tensor::Tensor;

use super::Var;

/// What `run_slots` does at a skipped node's position: (slot, the values so far).
pub type AtSkip<'a> = &'a mut dyn FnMut(usize, &mut [Option<Tensor>]) -> Result<()>;

#[derive(Clone)]
pub enum SlotKind {
    Input(usize),
    Captured(Var),
    Node { op: Op, args: Vec<usize> },
}

#[derive(Clone)]
pub struct Slot {
    pub kind: SlotKind,
    pub shape: Shape,
}

#[derive(Clone)]
pub struct Program {
    pub slots: Vec<Slot>,
    pub outputs: Vec<usize>,
    /// For each slot, the index of the last instruction that reads it (for freeing buffers).
    last_use: Vec<usize>,
}

impl Program {
    /// Trace back from `outputs` to `inputs` (placeholders) through recorded nodes.
    pub fn from_graph(inputs: &[Var], outputs: &[Var]) -> Result<Program> {
        // ops on an untracked input are not recorded: their trace-time values would be replayed as constants
        if let Some((i, v)) = inputs.iter().enumerate().find(|(_, v)| !v.is_tracked()) {
            bail!(
                Value,
                "program: input {i} (shape {:?}) is not on the tape, so ops on it were not recorded and would replay \
                 stale values; make placeholders with requires_grad=True",
                v.shape()
            );
        }
        let mut seen: HashMap<u64, Var> = HashMap::new();
        let mut nodes: HashMap<u64, Option<(Op, Vec<Var>)>> = HashMap::new();
        let placeholder: HashMap<u64, usize> = inputs.iter().enumerate().map(|(i, v)| (v.id(), i)).collect();
        let mut stack: Vec<Var> = outputs.to_vec();
        while let Some(v) = stack.pop() {
            if seen.contains_key(&v.id()) {
                continue;
            }
            let node = if placeholder.contains_key(&v.id()) { None } else { v.node()? };
            if let Some((_, ins)) = &node {
                stack.extend(ins.iter().cloned());
            }
            nodes.insert(v.id(), node);
            seen.insert(v.id(), v);
        }
        let mut ids: Vec<u64> = seen.keys().copied().collect();
        // placeholders first (in argument order), then everything in creation order
        ids.sort_by_key(|id| (placeholder.get(id).map(|&i| i as i64 - inputs.len() as i64).unwrap_or(0), *id));
        let mut slot_of: HashMap<u64, usize> = HashMap::new();
        let mut slots = Vec::with_capacity(ids.len());
        for id in ids {
            let v = &seen[&id];
            let kind = if let Some(&i) = placeholder.get(&id) {
                SlotKind::Input(i)
            } else {
                match nodes.remove(&id).unwrap() {
                    None => SlotKind::Captured(v.clone()),
                    Some((op, ins)) => SlotKind::Node { op, args: ins.iter().map(|i| slot_of[&i.id()]).collect() },
                }
            };
            slot_of.insert(id, slots.len());
            slots.push(Slot { kind, shape: v.shape() });
        }
        let missing: Vec<usize> = (0..inputs.len()).filter(|i| !slots.iter().any(|s| matches!(s.kind, SlotKind::Input(j) if j == *i))).collect();
        let mut prog = Program { slots, outputs: outputs.iter().map(|o| slot_of[&o.id()]).collect(), last_use: vec![] };
        // inputs that the outputs do not depend on still get a slot, so arity is preserved
        for i in missing {
            prog.slots.insert(0, Slot { kind: SlotKind::Input(i), shape: inputs[i].shape() });
            prog.outputs.iter_mut().for_each(|o| *o += 1);
            for s in prog.slots.iter_mut().skip(1) {
                if let SlotKind::Node { args, .. } = &mut s.kind {
                    args.iter_mut().for_each(|a| *a += 1);
                }
            }
        }
        prog.compute_last_use();
        Ok(prog)
    }

    /// Build a program directly from slots (used by graph transforms).
    pub fn from_slots(slots: Vec<Slot>, outputs: Vec<usize>) -> Result<Program> {
        for (i, s) in slots.iter().enumerate() {
            if let SlotKind::Node { args, .. } = &s.kind {
                if let Some(a) = args.iter().find(|&&a| a >= i) {
                    bail!(Value, "program: slot {i} reads slot {a}, which is not computed before it");
                }
            }
        }
        if let Some(o) = outputs.iter().find(|&&o| o >= slots.len()) {
            bail!(Value, "program: output slot {o} does not exist");
        }
        let mut p = Program { slots, outputs, last_use: vec![] };
        p.compute_last_use();
        Ok(p)
    }

    fn compute_last_use(&mut self) {
        self.last_use = self.last_use_skipping(&[]);
    }

    /// For each slot, the last instruction that reads it; `skip[i]` nodes are not executed by the
    /// replay, so their arguments (and the outputs) are kept to the end (`usize::MAX`).
    pub fn last_use_skipping(&self, skip: &[bool]) -> Vec<usize> {
        let mut last = vec![0usize; self.slots.len()];
        for (i, s) in self.slots.iter().enumerate() {
            if let SlotKind::Node { args, .. } = &s.kind {
                let at = if skip.get(i).copied().unwrap_or(false) { usize::MAX } else { i };
                for &a in args {
                    last[a] = last[a].max(at);
                }
            }
        }
        for &o in &self.outputs {
            last[o] = usize::MAX;
        }
        last
    }

    pub fn num_inputs(&self) -> usize {
        self.slots.iter().filter(|s| matches!(s.kind, SlotKind::Input(_))).count()
    }

    /// Replay on the CPU executor: each node calls its op's forward kernel; buffers are freed
    /// after their last reader.
    pub fn run(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>> {
        let vals = self.run_slots(inputs, &self.last_use, &[], &mut |_, _| Ok(()), None)?;
        Ok(self.outputs.iter().map(|&o| vals[o].clone().unwrap()).collect())
    }

    /// Replay without executing the `skip` nodes, freeing each slot after `last_use` (from
    /// `last_use_skipping`); returns every slot value still held at the end (the outputs and the
    /// arguments of skipped nodes whose last use is the end). At a skipped node's position
    /// `at_skip(i, vals)` runs instead (the compiled step applies fused updates there).
    #[allow(clippy::type_complexity)]
    pub fn run_slots(
        &self,
        inputs: &[Tensor],
        last_use: &[usize],
        skip: &[bool],
        at_skip: AtSkip<'_>,
        mut computed: Option<&mut dyn FnMut(usize, &Tensor) -> Result<()>>,
    ) -> Result<Vec<Option<Tensor>>> {
        if inputs.len() != self.num_inputs() {
            bail!(Value, "program expects {} inputs, got {}", self.num_inputs(), inputs.len());
        }
        let mut vals: Vec<Option<Tensor>> = vec![None; self.slots.len()];
        for (i, s) in self.slots.iter().enumerate() {
            let t = match &s.kind {
                SlotKind::Input(k) => {
                    let t = &inputs[*k];
                    if t.shape != s.shape {
                        bail!(Shape, "program input {k}: expected shape {:?}, got {:?}", s.shape, t.shape);
                    }
                    t.clone()
                }
                SlotKind::Captured(v) => v.value(),
                SlotKind::Node { args, .. } if skip.get(i).copied().unwrap_or(false) => {
                    at_skip(i, &mut vals)?;
                    for &a in args {
                        if last_use[a] == i {
                            vals[a] = None;
                        }
                    }
                    continue;
                }
                SlotKind::Node { op, args } => {
                    let arg = |a: usize| vals[a].as_ref().expect("slot freed too early");
                    // up to 3 inputs on the stack (every op but concatenate / stack): no allocation per node
                    let out = match args.len() {
                        1 => ops::forward(op, &[arg(args[0])])?,
                        2 => ops::forward(op, &[arg(args[0]), arg(args[1])])?,
                        3 => ops::forward(op, &[arg(args[0]), arg(args[1]), arg(args[2])])?,
                        _ => ops::forward(op, &args.iter().map(|&a| arg(a)).collect::<Vec<_>>())?,
                    };
                    for &a in args {
                        if last_use[a] == i {
                            vals[a] = None;
                        }
                    }
                    if let Some(f) = computed.as_mut() {
                        f(i, &out)?;
                    }
                    out
                }
            };
            vals[i] = Some(t);
        }
        Ok(vals)
    }
}
