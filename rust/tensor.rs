//! `Tensor`: an immutable, contiguous, row-major float32 buffer and its shape.
//! It knows nothing about gradients; the tape wraps it in `Var`.
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex, OnceLock};

use crate::bail;
use crate::error::Result;
use crate::shape::{numel, Shape};

#[derive(Clone, Debug)]
pub struct Tensor {
    pub data: Arc<Buffer>,
    pub shape: Shape,
}

/// A tensor's storage. Large buffers go back to a small pool when dropped and are reused by the
/// next allocation of the same size: a training step allocates the same sizes every step, and a
/// fresh large allocation costs a page fault per 4 KiB on first touch.
#[derive(Debug, Default)]
pub struct Buffer(Vec<f32>);

impl Buffer {
    pub fn into_vec(mut self) -> Vec<f32> {
        std::mem::take(&mut self.0)
    }
}

impl Deref for Buffer {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        &self.0
    }
}

impl DerefMut for Buffer {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.0
    }
}

impl Clone for Buffer {
    fn clone(&self) -> Buffer {
        let mut v = take_pooled(self.0.len()).unwrap_or_else(|| self.0.clone());
        v.copy_from_slice(&self.0);
        Buffer(v)
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        let v = std::mem::take(&mut self.0);
        if v.is_empty() || v.len() != v.capacity() {
            return;
        }
        // inside a compiled step: back to that step's arena, whatever the size
        let rest = ARENA
            .try_with(move |a| match a.try_borrow_mut() {
                Ok(mut a) => match a.as_mut() {
                    Some(ar) => {
                        ar.push(v);
                        None
                    }
                    None => Some(v),
                },
                Err(_) => Some(v),
            })
            .ok()
            .flatten();
        if let Some(v) = rest {
            if v.len() >= POOL_MIN {
                give_pooled(v);
            }
        }
    }
}

thread_local! {
    /// The buffers of the compiled step running on this thread (see `with_arena`).
    static ARENA: std::cell::RefCell<Option<Vec<Vec<f32>>>> = const { std::cell::RefCell::new(None) };
}

/// Drop a kernel's temporary buffer the way a tensor's is dropped (back to the pool or the
/// running compiled step's arena) instead of freeing it.
pub fn recycle(v: Vec<f32>) {
    drop(Buffer(v));
}

/// Allocations that were not served by the pool or an arena (a test counts them per step).
static FRESH: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

pub fn fresh_allocations() -> usize {
    FRESH.load(std::sync::atomic::Ordering::Relaxed)
}

/// Run `f` with `arena` as this thread's buffer arena: every tensor buffer dropped on this thread
/// goes into it and every allocation first takes an exact-size buffer from it. A compiled step
/// keeps its arena between calls, so after the first step its buffers are reused and a step
/// allocates no tensor storage.
pub fn with_arena<R>(arena: &mut Vec<Vec<f32>>, f: impl FnOnce() -> R) -> R {
    struct Restore<'a>(&'a mut Vec<Vec<f32>>, Option<Vec<Vec<f32>>>);
    impl Drop for Restore<'_> {
        fn drop(&mut self) {
            let back = ARENA.with(|a| std::mem::replace(&mut *a.borrow_mut(), self.1.take()));
            *self.0 = back.unwrap_or_default();
        }
    }
    let prev = ARENA.with(|a| std::mem::replace(&mut *a.borrow_mut(), Some(std::mem::take(arena))));
    let _restore = Restore(arena, prev);
    f()
}

fn take_arena(n: usize) -> Option<Vec<f32>> {
    ARENA
        .try_with(|a| {
            let mut a = a.try_borrow_mut().ok()?;
            let ar = a.as_mut()?;
            let i = ar.iter().rposition(|v| v.len() == n)?;
            Some(ar.swap_remove(i))
        })
        .ok()
        .flatten()
}

/// Buffers at least this many floats (256 KiB) are pooled.
const POOL_MIN: usize = 1 << 16;

struct Pool {
    free: Vec<Vec<f32>>,
    bytes: usize,
}

fn pool() -> &'static Mutex<Pool> {
    static P: OnceLock<Mutex<Pool>> = OnceLock::new();
    P.get_or_init(|| Mutex::new(Pool { free: Vec::new(), bytes: 0 }))
}

fn pool_cap() -> usize {
    (total_memory_bytes() / 16).min(1 << 30)
}

fn take_pooled(n: usize) -> Option<Vec<f32>> {
    if n == 0 {
        return None;
    }
    if let Some(v) = take_arena(n) {
        return Some(v);
    }
    if n < POOL_MIN {
        return None;
    }
    let mut p = pool().lock().ok()?;
    let i = p.free.iter().rposition(|v| v.len() == n)?;
    let v = p.free.swap_remove(i);
    p.bytes -= n * 4;
    Some(v)
}

fn give_pooled(v: Vec<f32>) {
    let Ok(mut p) = pool().lock() else { return };
    let cap = pool_cap();
    if v.len() * 4 > cap {
        return;
    }
    p.bytes += v.len() * 4;
    p.free.push(v);
    while p.bytes > cap {
        let old = p.free.remove(0); // oldest first
        p.bytes -= old.len() * 4;
    }
}

/// Allocate `n` floats whose contents the caller overwrites completely (a reused buffer holds
/// stale values): for kernels that write every element.
pub fn alloc_for_overwrite(n: usize) -> Result<Vec<f32>> {
    match take_pooled(n) {
        Some(v) => Ok(v),
        None => alloc(n),
    }
}

fn total_memory_bytes() -> usize {
    static MEM: OnceLock<usize> = OnceLock::new();
    *MEM.get_or_init(|| {
        std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("MemTotal:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|kb| kb.parse::<usize>().ok())
            })
            .map(|kb| kb * 1024)
            .unwrap_or(usize::MAX / 2)
    })
}

/// Allocate `n` zeroed floats, or a `Memory` error (never an abort) when the request cannot fit.
pub fn alloc(n: usize) -> Result<Vec<f32>> {
    if let Some(mut v) = take_pooled(n) {
        v.iter_mut().for_each(|x| *x = 0.0);
        return Ok(v);
    }
    let bytes = n.checked_mul(4).filter(|&b| b <= isize::MAX as usize);
    match bytes {
        Some(b) if b <= total_memory_bytes() => {}
        _ => bail!(Memory, "cannot allocate a tensor of {n} float32 elements ({:.1} GiB): not enough memory", n as f64 * 4.0 / (1u64 << 30) as f64),
    }
    if n == 0 {
        return Ok(Vec::new());
    }
    FRESH.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    // alloc_zeroed: large buffers come as fresh zero pages from the OS (no explicit zeroing pass)
    let layout = std::alloc::Layout::array::<f32>(n).map_err(|_| crate::Error::Memory(format!("cannot allocate {n} float32 elements")))?;
    // SAFETY: layout has non-zero size; a null result is handled; all-zero bits are valid f32 (0.0),
    // and the Vec takes ownership with the same layout (capacity n, global allocator).
    unsafe {
        let p = std::alloc::alloc_zeroed(layout) as *mut f32;
        if p.is_null() {
            bail!(Memory, "cannot allocate a tensor of {n} float32 elements: out of memory");
        }
        advise_huge(p as *mut u8, n * 4);
        Ok(Vec::from_raw_parts(p, n, n))
    }
}

/// Ask for transparent huge pages on the 2 MiB-aligned interior of a large, untouched buffer:
/// first-touch page faults dominate the cost of big fresh tensors (e.g. per-example gradients),
/// and a huge page takes one fault instead of 512.
fn advise_huge(p: *mut u8, bytes: usize) {
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 << 20;
        if bytes >= 4 * HUGE {
            let start = (p as usize).div_ceil(HUGE) * HUGE;
            let end = (p as usize + bytes) / HUGE * HUGE;
            if end > start {
                // SAFETY: the range lies inside our own live allocation; madvise only changes paging.
                unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE) };
            }
        }
    }
    let _ = (p, bytes);
}

/// Checked element count of a shape (overflow is a Memory error).
pub fn checked_numel(shape: &[usize]) -> Result<usize> {
    let mut n = 1usize;
    for &d in shape {
        n = match n.checked_mul(d) {
            Some(v) => v,
            None => bail!(Memory, "shape {shape:?} has more elements than can be addressed"),
        };
    }
    Ok(n)
}

impl Tensor {
    pub fn new(data: Vec<f32>, shape: Shape) -> Result<Tensor> {
        if data.len() != checked_numel(&shape)? {
            bail!(Shape, "data of length {} does not fit shape {shape:?}", data.len());
        }
        Ok(Tensor { data: Arc::new(Buffer(data)), shape })
    }
    pub fn zeros(shape: &[usize]) -> Result<Tensor> {
        Ok(Tensor { data: Arc::new(Buffer(alloc(checked_numel(shape)?)?)), shape: shape.to_vec() })
    }
    pub fn full(shape: &[usize], v: f32) -> Result<Tensor> {
        let mut d = alloc(checked_numel(shape)?)?;
        d.iter_mut().for_each(|x| *x = v);
        Ok(Tensor { data: Arc::new(Buffer(d)), shape: shape.to_vec() })
    }
    pub fn scalar(v: f32) -> Tensor {
        Tensor { data: Arc::new(Buffer(vec![v])), shape: vec![] }
    }
    pub fn numel(&self) -> usize {
        numel(&self.shape)
    }
    pub fn ndim(&self) -> usize {
        self.shape.len()
    }
    pub fn data(&self) -> &[f32] {
        &self.data
    }
    /// Same buffer, new shape (caller checked the element count).
    pub fn reshaped(&self, shape: Shape) -> Tensor {
        debug_assert_eq!(numel(&shape), self.numel());
        Tensor { data: self.data.clone(), shape }
    }
    /// Mutable access, copying first if the buffer is shared (copy-on-write).
    pub fn make_mut(&mut self) -> &mut [f32] {
        &mut Arc::make_mut(&mut self.data).0
    }
}
