//! Opt-in per-op timing (`bg.profile()`): while enabled, every kernel run through
//! `ops::forward` (eager ops, backward replays and compiled steps alike) adds its wall time to a
//! table keyed by op name and input shapes. Disabled, the cost is one relaxed atomic load per op.
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use crate::tensor::Tensor;

static ENABLED: AtomicBool = AtomicBool::new(false);
/// (op, input shapes) -> (calls, seconds)
type Table = HashMap<(&'static str, String), (u64, f64)>;
static TABLE: Mutex<Option<Table>> = Mutex::new(None);

/// One profiled entry: op name, input shapes, number of calls, total seconds.
pub type Entry = (String, String, u64, f64);

pub fn set_enabled(on: bool) {
    if on {
        TABLE.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert_with(HashMap::new).clear();
    }
    ENABLED.store(on, Ordering::Relaxed);
}

#[inline]
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Time `f` and charge it to (name, shapes of `ins`).
pub fn timed<T>(name: &'static str, ins: &[&Tensor], f: impl FnOnce() -> T) -> T {
    let shapes: Vec<&[usize]> = ins.iter().map(|t| t.shape.as_slice()).collect();
    timed_shapes(name, &shapes, f)
}

/// `timed` for inputs known only by their shapes (a compiled step's flat gradient slices).
pub fn timed_shapes<T>(name: &'static str, shapes: &[&[usize]], f: impl FnOnce() -> T) -> T {
    let t0 = Instant::now();
    let out = f();
    let dt = t0.elapsed().as_secs_f64();
    let shapes: Vec<String> = shapes.iter().map(|s| format!("{s:?}")).collect();
    let mut g = TABLE.lock().unwrap_or_else(|e| e.into_inner());
    let e = g.get_or_insert_with(HashMap::new).entry((name, shapes.join(", "))).or_insert((0, 0.0));
    e.0 += 1;
    e.1 += dt;
    out
}

/// The table so far, most expensive first.
pub fn report() -> Vec<Entry> {
    let g = TABLE.lock().unwrap_or_else(|e| e.into_inner());
    let mut v: Vec<Entry> = g.iter().flatten().map(|((n, s), (c, t))| (n.to_string(), s.clone(), *c, *t)).collect();
    v.sort_by(|a, b| b.3.total_cmp(&a.3).then_with(|| a.0.cmp(&b.0)).then_with(|| a.1.cmp(&b.1)));
    v
}
