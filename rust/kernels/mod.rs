//! CPU kernels: pure functions over slices. No tape, no PyO3.
//!
//! Parallel policy: work below `PAR_MIN_LEN` elements runs serially on the caller's thread
//! (for tiny minibatch ops the fork-join costs more than the work); larger work runs on one
//! crate-owned rayon pool sized by `set_num_threads` / `BATCHGRAD_NUM_THREADS`. Reductions use a
//! fixed partition of the data, so results are bit-identical whatever the thread count.
use std::sync::{Arc, OnceLock, RwLock};

use rayon::{ThreadPool, ThreadPoolBuilder};

pub mod gemm;
pub mod map;
pub mod movement;
pub mod reduce;
pub mod simd;
pub mod team;
pub mod thin;

/// Below this many elements a kernel runs serially: a fork-join into the pool costs ~10 us here,
/// more than a memory-bound pass over fewer than ~256K floats (benches/RESULTS.md, section 5).
pub const PAR_MIN_LEN: usize = 1 << 18;

fn pool_slot() -> &'static RwLock<Arc<ThreadPool>> {
    static POOL: OnceLock<RwLock<Arc<ThreadPool>>> = OnceLock::new();
    POOL.get_or_init(|| {
        let n = std::env::var("BATCHGRAD_NUM_THREADS")
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok())
            .filter(|&n| n > 0)
            .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
        RwLock::new(Arc::new(build_pool(n)))
    })
}

fn build_pool(n: usize) -> ThreadPool {
    ThreadPoolBuilder::new()
        .num_threads(n)
        .thread_name(|i| format!("batchgrad-{i}"))
        .build()
        .expect("failed to build the batchgrad thread pool")
}

/// The crate-owned pool.
pub fn pool() -> Arc<ThreadPool> {
    pool_slot().read().unwrap().clone()
}

/// Run `f` in the crate's rayon pool as a parallel region: the spinning team's helpers park
/// while it runs, so the two never fight over cores.
pub fn install<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    let _region = team::RayonRegion::enter();
    pool().install(f)
}

fn team_slot() -> &'static RwLock<Arc<team::Team>> {
    static TEAM: OnceLock<RwLock<Arc<team::Team>>> = OnceLock::new();
    TEAM.get_or_init(|| RwLock::new(Arc::new(team::Team::new(num_threads()))))
}

/// Run `f(i)` for `i < blocks` on the spinning team (one static block per thread: the
/// hand-split products), sized like the pool. See `team.rs`.
pub fn run_blocks(blocks: usize, f: impl Fn(usize) + Sync) {
    let t = team_slot().read().unwrap().clone();
    t.run(blocks, &f)
}

/// Number of threads kernels use.
pub fn num_threads() -> usize {
    pool().current_num_threads()
}

/// Resize the crate-owned pool (takes effect for the next kernel call).
pub fn set_num_threads(n: usize) {
    let n = n.max(1);
    if num_threads() != n {
        *pool_slot().write().unwrap() = Arc::new(build_pool(n));
    }
    let mut t = team_slot().write().unwrap();
    if t.threads() != n {
        *t = Arc::new(team::Team::new(n));
    }
}

/// Run `f` in the pool when the work is large and more than one thread is configured;
/// otherwise run it on the caller's thread. `f` receives whether it may go parallel.
#[inline]
pub fn maybe_par<R: Send>(work: usize, f: impl FnOnce(bool) -> R + Send) -> R {
    if work >= PAR_MIN_LEN {
        let p = pool();
        if p.current_num_threads() > 1 {
            let _region = team::RayonRegion::enter();
            return p.install(|| f(true));
        }
    }
    f(false)
}

/// SIMD level detected at run time (for reports; the GEMM crate dispatches on its own).
pub fn simd_level() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return "avx512";
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            return "avx2+fma";
        }
        return "sse2";
    }
    #[allow(unreachable_code)]
    "baseline"
}
