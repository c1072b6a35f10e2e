//! A spinning team of threads for short static fork-joins (OpenMP's model).
//!
//! Each of the crate's hand-split products gives every thread one block of tens of microseconds.
//! Through the rayon pool such a fork-join cost 30+ us more than the work on this VM: the
//! caller sleeps on a latch and the workers fall asleep between calls, and waking a thread whose
//! vCPU has halted costs ~50 us (benches/RESULTS.md, section 0). The team instead works like an
//! OpenMP parallel region: the calling thread runs block 0 itself, the `threads - 1` helpers run
//! the others, the caller spins until they are done, and the helpers keep spinning for
//! `BATCHGRAD_SPIN_US` microseconds (default 1000, like OpenMP's blocktime) after each job
//! before they park. While a rayon region of the crate runs, the helpers park at once so that
//! they never take a core from the pool's workers.
//!
//! Blocks are assigned statically (block `i` to member `i % threads`), and every block is the
//! same computation whichever thread runs it, so results do not depend on the team at all: a
//! call that finds the team busy (another thread's job, or a call from inside a job) runs all
//! its blocks on the caller.
use std::cell::UnsafeCell;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::*};
use std::sync::{Arc, Mutex, OnceLock, TryLockError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

type Job = *const (dyn Fn(usize) + Sync);

/// Rayon regions of the crate in flight: the team's helpers park while this is non-zero.
static RAYON_REGIONS: AtomicUsize = AtomicUsize::new(0);

/// Marks a rayon region in flight for as long as it lives (see `super::install`).
pub struct RayonRegion(());

impl RayonRegion {
    pub fn enter() -> RayonRegion {
        RAYON_REGIONS.fetch_add(1, SeqCst);
        RayonRegion(())
    }
}

impl Drop for RayonRegion {
    fn drop(&mut self) {
        RAYON_REGIONS.fetch_sub(1, SeqCst);
    }
}

/// How long a helper spins for the next job before it parks.
fn spin_time() -> Duration {
    static SPIN: OnceLock<Duration> = OnceLock::new();
    *SPIN.get_or_init(|| {
        let us = std::env::var("BATCHGRAD_SPIN_US").ok().and_then(|s| s.trim().parse::<u64>().ok()).unwrap_or(1000);
        Duration::from_micros(us)
    })
}

struct Shared {
    /// Bumped (Release) by the caller once `job` holds the next job.
    epoch: AtomicU64,
    /// The current job and its block count; written only while no helper is between seeing an
    /// epoch and finishing it (the caller waits for `remaining == 0` before it returns).
    job: UnsafeCell<Option<(Job, usize)>>,
    remaining: AtomicUsize,
    panicked: AtomicBool,
    stop: AtomicBool,
    parked: Vec<AtomicBool>,
}

// SAFETY: `job` is written by the caller holding the team lock before the epoch bump (Release)
// and read by helpers after they observe it (Acquire), never concurrently with a write.
unsafe impl Sync for Shared {}
unsafe impl Send for Shared {}

pub struct Team {
    shared: Arc<Shared>,
    helpers: Vec<JoinHandle<()>>,
    lock: Mutex<()>,
}

impl Team {
    /// A team of `threads` members: the caller plus `threads - 1` helper threads.
    pub fn new(threads: usize) -> Team {
        let helpers_n = threads.max(1) - 1;
        let shared = Arc::new(Shared {
            epoch: AtomicU64::new(0),
            job: UnsafeCell::new(None),
            remaining: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            parked: (0..helpers_n).map(|_| AtomicBool::new(false)).collect(),
        });
        let helpers = (1..=helpers_n)
            .map(|member| {
                let sh = shared.clone();
                std::thread::Builder::new()
                    .name(format!("batchgrad-team-{member}"))
                    .spawn(move || helper(sh, member, threads))
                    .expect("failed to start a batchgrad team thread")
            })
            .collect();
        Team { shared, helpers, lock: Mutex::new(()) }
    }

    pub fn threads(&self) -> usize {
        self.helpers.len() + 1
    }

    /// Run `f(i)` for every block `i < blocks`, block `i` on member `i % threads` (the caller is
    /// member 0), and return when all are done. A panic in any block is re-raised here after
    /// every member has finished.
    pub fn run(&self, blocks: usize, f: &(dyn Fn(usize) + Sync)) {
        let serial = || (0..blocks).for_each(f);
        if self.helpers.is_empty() || blocks <= 1 {
            return serial();
        }
        // (a poisoned lock only means an earlier job panicked; the team itself is intact)
        let _guard = match self.lock.try_lock() {
            Ok(g) => g,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return serial(),
        };
        let sh = &*self.shared;
        let threads = self.threads();
        // SAFETY: the lifetime is erased only for the duration of this call: helpers read the
        // job after the epoch bump below and are done with it before `remaining` reaches 0,
        // which this function waits for on every path (including a panic in block 0).
        unsafe {
            *sh.job.get() = Some((std::mem::transmute::<&(dyn Fn(usize) + Sync), Job>(f), blocks));
        }
        sh.panicked.store(false, Relaxed);
        sh.remaining.store(threads - 1, Relaxed);
        sh.epoch.fetch_add(1, SeqCst);
        for (i, h) in self.helpers.iter().enumerate() {
            if sh.parked[i].load(SeqCst) {
                h.thread().unpark();
            }
        }
        let mine = catch_unwind(AssertUnwindSafe(|| (0..blocks).step_by(threads).for_each(f)));
        let t0 = Instant::now();
        let mut spins = 0u32;
        while sh.remaining.load(Acquire) != 0 {
            spins = spins.wrapping_add(1);
            if spins % 256 == 0 && t0.elapsed() > Duration::from_millis(1) {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
        unsafe { *sh.job.get() = None };
        if let Err(p) = mine {
            resume_unwind(p);
        }
        if sh.panicked.load(Acquire) {
            panic!("a batchgrad team thread panicked inside a kernel");
        }
    }
}

impl Drop for Team {
    fn drop(&mut self) {
        self.shared.stop.store(true, SeqCst);
        for h in self.helpers.drain(..) {
            h.thread().unpark();
            let _ = h.join();
        }
    }
}

fn helper(sh: Arc<Shared>, member: usize, threads: usize) {
    let me = member - 1;
    let mut seen = 0u64;
    loop {
        // wait for the next epoch: spin for `spin_time()`, then park
        let t0 = Instant::now();
        let mut spins = 0u32;
        let epoch = loop {
            if sh.stop.load(Relaxed) {
                return;
            }
            let e = sh.epoch.load(Acquire);
            if e != seen {
                break e;
            }
            spins = spins.wrapping_add(1);
            let idle = RAYON_REGIONS.load(Relaxed) != 0 || (spins % 64 == 0 && t0.elapsed() >= spin_time());
            if idle {
                sh.parked[me].store(true, SeqCst);
                if sh.epoch.load(SeqCst) == seen && !sh.stop.load(SeqCst) {
                    std::thread::park();
                }
                sh.parked[me].store(false, SeqCst);
            } else {
                std::hint::spin_loop();
            }
        };
        seen = epoch;
        // SAFETY: see `Shared::job`
        let (job, blocks) = unsafe { (*sh.job.get()).expect("a published team job") };
        let f = unsafe { &*job };
        if catch_unwind(AssertUnwindSafe(|| (member..blocks).step_by(threads).for_each(f))).is_err() {
            sh.panicked.store(true, Release);
        }
        sh.remaining.fetch_sub(1, Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_block_runs_once_and_panics_reach_the_caller() {
        for threads in 1..=3 {
            let team = Team::new(threads);
            for blocks in [0, 1, 2, 3, 7] {
                let hits: Vec<AtomicUsize> = (0..blocks).map(|_| AtomicUsize::new(0)).collect();
                for _ in 0..100 {
                    team.run(blocks, &|i| {
                        hits[i].fetch_add(1, Relaxed);
                    });
                }
                assert!(hits.iter().all(|h| h.load(Relaxed) == 100), "threads {threads} blocks {blocks}");
            }
            for bad in 0..threads {
                let r = catch_unwind(AssertUnwindSafe(|| team.run(threads, &|i| assert!(i != bad, "block {i}"))));
                assert!(r.is_err(), "a panic in block {bad} must reach the caller");
            }
            // the team still works after a panic, and a nested call runs serially
            let sum = AtomicUsize::new(0);
            team.run(threads, &|i| {
                team.run(2, &|j| {
                    sum.fetch_add(10 * i + j + 1, Relaxed);
                })
            });
            assert_eq!(sum.load(Relaxed), (0..threads).map(|i| 20 * i + 3).sum::<usize>());
        }
    }
}
