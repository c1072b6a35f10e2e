//! CPU kernels: pure functions over slices. No tape, no PyO3.
//!
//! Parallel policy: work below `PAR_MIN_LEN` elements runs serially on the caller's thread
//! (for tiny minibatch ops the fork-join costs more than the work); larger work runs on one
//! crate-owned rayon pool sized by `set_num_threads` / `BATCHGRAD_NUM_THREADS`. Reductions use a
//! fixed partition of the data, so results are bit-identical whatever the thread count.
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Once, OnceLock, RwLock};

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

/// Bumped in a child process after `fork()`. Threads do not survive a fork, so a child that
/// used the parent's pool or team would wait forever for workers it does not have; instead
/// both are rebuilt on first use in the child (the parent's copies are leaked, never joined:
/// their threads do not exist there).
static FORK_GEN: AtomicUsize = AtomicUsize::new(0);

extern "C" fn after_fork_in_child() {
    FORK_GEN.fetch_add(1, Ordering::Relaxed);
}

/// One per process: the value and the fork generation it was built in.
struct PerProcess<T> {
    gen: usize,
    value: Arc<T>,
}

impl<T> PerProcess<T> {
    fn new(value: T) -> RwLock<PerProcess<T>> {
        static ATFORK: Once = Once::new();
        // SAFETY: the handler only bumps an atomic (async-signal-safe)
        ATFORK.call_once(|| unsafe {
            libc::pthread_atfork(None, None, Some(after_fork_in_child));
        });
        RwLock::new(PerProcess { gen: FORK_GEN.load(Ordering::Relaxed), value: Arc::new(value) })
    }
}

/// The slot's value, rebuilt with `rebuild(&old)` if it came from before a fork.
fn current<T>(slot: &RwLock<PerProcess<T>>, rebuild: impl FnOnce(&T) -> T) -> Arc<T> {
    let gen = FORK_GEN.load(Ordering::Relaxed);
    {
        let s = slot.read().unwrap_or_else(|e| e.into_inner());
        if s.gen == gen {
            return s.value.clone();
        }
    }
    let mut s = slot.write().unwrap_or_else(|e| e.into_inner());
    if s.gen != gen {
        let fresh = Arc::new(rebuild(&s.value));
        std::mem::forget(std::mem::replace(&mut s.value, fresh));
        s.gen = gen;
    }
    s.value.clone()
}

/// The most threads `set_num_threads` / `BATCHGRAD_NUM_THREADS` accept: a pool and a team of
/// this size start in well under a second; a mistyped 10**9 would try to start a billion threads.
pub const MAX_THREADS: usize = 1024;

/// `BATCHGRAD_NUM_THREADS` when it is an integer in 1..=MAX_THREADS (the Python layer warns
/// about any other value at import); otherwise None (all cores).
pub fn env_threads() -> Option<usize> {
    std::env::var("BATCHGRAD_NUM_THREADS").ok().and_then(|s| s.trim().parse::<usize>().ok()).filter(|&n| (1..=MAX_THREADS).contains(&n))
}

fn pool_slot() -> &'static RwLock<PerProcess<ThreadPool>> {
    static POOL: OnceLock<RwLock<PerProcess<ThreadPool>>> = OnceLock::new();
    POOL.get_or_init(|| {
        let n = env_threads().unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
        PerProcess::new(build_pool(n))
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
    current(pool_slot(), |old| build_pool(old.current_num_threads()))
}

/// Run `f` in the crate's rayon pool as a parallel region: the spinning team's helpers park
/// while it runs, so the two never fight over cores.
pub fn install<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    let _region = team::RayonRegion::enter();
    pool().install(f)
}

fn team_slot() -> &'static RwLock<PerProcess<team::Team>> {
    static TEAM: OnceLock<RwLock<PerProcess<team::Team>>> = OnceLock::new();
    TEAM.get_or_init(|| PerProcess::new(team::Team::new(num_threads())))
}

fn team() -> Arc<team::Team> {
    current(team_slot(), |old| team::Team::new(old.threads()))
}

/// Run `f(i)` for `i < blocks` on the spinning team (the hand-split products: one block per
/// thread), sized like the pool. See `team.rs`.
pub fn run_blocks(blocks: usize, f: impl Fn(usize) + Sync) {
    team().run(blocks, &f)
}

/// Whether a helper of the spinning team is awake: a job started now is shared at once, without
/// waking a parked thread.
pub fn team_awake() -> bool {
    team().awake()
}

/// Number of threads kernels use.
pub fn num_threads() -> usize {
    pool().current_num_threads()
}

/// Resize the crate-owned pool (takes effect for the next kernel call).
pub fn set_num_threads(n: usize) {
    let n = n.max(1);
    if num_threads() != n {
        let mut p = pool_slot().write().unwrap_or_else(|e| e.into_inner());
        p.value = Arc::new(build_pool(n));
    }
    if team().threads() != n {
        let mut t = team_slot().write().unwrap_or_else(|e| e.into_inner());
        t.value = Arc::new(team::Team::new(n));
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

/// The machine's single-precision FMA peak in GFLOP/s on `threads` threads at once: the caller
/// and `threads - 1` threads of their own (not the pool, so nothing else is measured) each run
/// `simd::fma_burn(rounds)`; the best of `repeats` runs. The caller runs one share itself so the
/// clock starts and stops on a thread that is running (a spawned timer thread would wait for a
/// free core). A reference for the benchmarks (GEMM and training-step GFLOP/s as a share of it),
/// measured rather than taken from a data sheet, since the clock and the FMA width per cycle
/// differ between machines (a Zen 4 core runs a 512-bit FMA as two 256-bit halves).
pub fn fma_peak(threads: usize, rounds: usize, repeats: usize) -> f64 {
    let threads = threads.max(1);
    let mut best = 0.0f64;
    let mut sink = 0.0f32;
    for _ in 0..repeats.max(1) {
        let start = std::sync::Barrier::new(threads);
        let (flops, secs) = std::thread::scope(|s| {
            let hs: Vec<_> = (1..threads)
                .map(|_| {
                    s.spawn(|| {
                        start.wait();
                        simd::fma_burn(rounds)
                    })
                })
                .collect();
            start.wait();
            let t = std::time::Instant::now();
            let (mut flops, c) = simd::fma_burn(rounds);
            sink += c;
            for h in hs {
                let (f, c) = h.join().expect("fma_burn thread");
                flops += f;
                sink += c;
            }
            (flops, t.elapsed().as_secs_f64())
        });
        best = best.max(flops / secs / 1e9);
    }
    std::hint::black_box(sink);
    best
}
