//! A spinning team of threads for short fork-joins (OpenMP's model).
//!
//! Each of the crate's hand-split products gives every thread one block of tens of microseconds.
//! Through the rayon pool such a fork-join cost 10-14 us more than the work on this VM (criterion
//! `fork_join`): the caller sleeps on a latch and the workers fall asleep between calls, and
//! waking a thread whose vCPU has halted costs ~50 us (benches/RESULTS.md, section 0). The team
//! instead works like an OpenMP parallel region: the calling thread takes part in the work, the
//! `threads - 1` helpers take the rest, the caller spins until they are done, and the helpers keep
//! spinning for `BATCHGRAD_SPIN_US` microseconds (default 300, OpenMP's blocktime) after each
//! job before they park. They park at once while a rayon region of the crate runs (so they never
//! take a core from the pool's workers) and when a helper finds itself on the caller's CPU.
//!
//! The default spin is 300 us, not OpenMP's usual longer one: with 1000 us, 40% of processes
//! running an eager MLP step at batch 8 on 2 threads settled into a mode where the step took
//! 3.5x as long (700 vs 190 us) for the rest of the run; at 100-300 us all 20 processes tried
//! ran at a median of 186-196 us (one had a slower stretch: 90th percentile 523 us).
//!
//! Blocks are claimed dynamically (an atomic counter), so a caller whose helper has not started
//! yet (descheduled, or sharing the caller's core) runs the remaining blocks itself instead of
//! waiting; each block is the same computation whichever thread runs it, so results do not
//! depend on the team at all. A call that finds the team busy (another thread's job, or a call
//! from inside a job) runs all its blocks on the caller. Waiting threads yield to the scheduler
//! every 32 spins, so a spinning thread does not starve one that shares its core.
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::*};
use std::sync::{Arc, Mutex, OnceLock, TryLockError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The current job: a type-erased `&dyn Fn(usize)` and its block count.
#[derive(Clone, Copy)]
struct Job(*const (dyn Fn(usize) + Sync), usize);
// SAFETY: the pointee is `Sync`, and it outlives every use: see `Team::run`.
unsafe impl Send for Job {}

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
        let us = std::env::var("BATCHGRAD_SPIN_US").ok().and_then(|s| s.trim().parse::<u64>().ok()).unwrap_or(300);
        Duration::from_micros(us)
    })
}

/// One step of a wait loop: a pause, and every 32nd time a yield to the scheduler (so a thread
/// that shares this core, such as the caller or a helper, gets to run).
#[inline]
fn relax(spins: &mut u32) {
    *spins = spins.wrapping_add(1);
    if *spins % 32 == 0 {
        std::thread::yield_now();
    } else {
        std::hint::spin_loop();
    }
}

struct Shared {
    /// Bumped by the caller after it publishes a job.
    epoch: AtomicU64,
    /// The open job; the caller takes it back (None) once every block is claimed, and only
    /// then waits for `active` to drain, so no helper can touch a job after `run` returns.
    job: Mutex<Option<Job>>,
    /// Next block to claim.
    next: AtomicUsize,
    /// Helpers that took the open job and have not finished with it.
    active: AtomicUsize,
    panicked: AtomicBool,
    stop: AtomicBool,
    parked: Vec<AtomicBool>,
    /// The CPU the caller ran on when it last published a job (`usize::MAX`: unknown).
    caller_cpu: AtomicUsize,
}

/// The CPU this thread runs on now (`usize::MAX` where unknown); a vDSO call, ~20 ns.
fn current_cpu() -> usize {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: no arguments, no memory
        let c = unsafe { libc::sched_getcpu() };
        if c >= 0 {
            return c as usize;
        }
    }
    usize::MAX
}

pub struct Team {
    shared: Arc<Shared>,
    helpers: Vec<JoinHandle<()>>,
    lock: Mutex<()>,
}

/// Claim and run blocks of `job` until none are left.
fn claim_all(sh: &Shared, job: Job) {
    // SAFETY: see `Job`
    let f = unsafe { &*job.0 };
    loop {
        let i = sh.next.fetch_add(1, Relaxed);
        if i >= job.1 {
            return;
        }
        f(i);
    }
}

impl Team {
    /// A team of `threads` members: the caller plus `threads - 1` helper threads.
    pub fn new(threads: usize) -> Team {
        let helpers_n = threads.max(1) - 1;
        let shared = Arc::new(Shared {
            epoch: AtomicU64::new(0),
            job: Mutex::new(None),
            next: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            parked: (0..helpers_n).map(|_| AtomicBool::new(false)).collect(),
            caller_cpu: AtomicUsize::new(usize::MAX),
        });
        let helpers = (0..helpers_n)
            .map(|me| {
                let sh = shared.clone();
                std::thread::Builder::new()
                    .name(format!("batchgrad-team-{}", me + 1))
                    .spawn(move || helper(sh, me))
                    .expect("failed to start a batchgrad team thread")
            })
            .collect();
        Team { shared, helpers, lock: Mutex::new(()) }
    }

    pub fn threads(&self) -> usize {
        self.helpers.len() + 1
    }

    /// Whether some helper is awake (spinning for the next job, or inside one) rather than parked.
    pub fn awake(&self) -> bool {
        self.shared.parked.iter().any(|p| !p.load(Relaxed))
    }

    /// Run `f(i)` for every block `i < blocks`, on the caller and the helpers, and return when
    /// all are done. A panic in any block is re-raised here after every member has finished.
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
        // SAFETY: the lifetime is erased only for the duration of this call: the job is taken
        // back below before this function returns on every path (a panic in a block is caught),
        // and helpers that took it are waited for.
        let job = Job(unsafe { std::mem::transmute::<&(dyn Fn(usize) + Sync), *const (dyn Fn(usize) + Sync)>(f) }, blocks);
        sh.panicked.store(false, Relaxed);
        sh.next.store(0, Relaxed);
        sh.caller_cpu.store(current_cpu(), Relaxed);
        *sh.job.lock().unwrap_or_else(|e| e.into_inner()) = Some(job);
        sh.epoch.fetch_add(1, SeqCst);
        for (i, h) in self.helpers.iter().enumerate() {
            if sh.parked[i].load(SeqCst) {
                h.thread().unpark();
            }
        }
        let mine = catch_unwind(AssertUnwindSafe(|| claim_all(sh, job)));
        if mine.is_err() {
            // let nobody claim the blocks that are left
            sh.next.store(usize::MAX / 2, SeqCst);
        }
        // close the job, then wait for the helpers that took it
        *sh.job.lock().unwrap_or_else(|e| e.into_inner()) = None;
        let mut spins = 0u32;
        while sh.active.load(Acquire) != 0 {
            relax(&mut spins);
        }
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

fn helper(sh: Arc<Shared>, me: usize) {
    let mut seen = 0u64;
    loop {
        // wait for the next epoch: spin (yielding now and then) for `spin_time()`, then park
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
            // park at once during a rayon region, after `spin_time()`, and when this helper finds
            // itself on the caller's CPU: spinning there would take turns with the caller (3.5x
            // slower eager steps at batch 8 on this VM); a woken thread is placed on an idle CPU
            if RAYON_REGIONS.load(Relaxed) != 0
                || (spins % 64 == 63 && (t0.elapsed() >= spin_time() || current_cpu() == sh.caller_cpu.load(Relaxed)))
            {
                sh.parked[me].store(true, SeqCst);
                if sh.epoch.load(SeqCst) == seen && !sh.stop.load(SeqCst) {
                    std::thread::park();
                }
                sh.parked[me].store(false, SeqCst);
            }
            relax(&mut spins);
        };
        seen = epoch;
        // take the job if it is still open (registering as active under the same lock, so the
        // caller cannot close it and return while this helper is about to use it)
        let job = {
            let slot = sh.job.lock().unwrap_or_else(|e| e.into_inner());
            let job = *slot;
            if job.is_some() {
                sh.active.fetch_add(1, SeqCst);
            }
            job
        };
        if let Some(job) = job {
            if catch_unwind(AssertUnwindSafe(|| claim_all(&sh, job))).is_err() {
                sh.panicked.store(true, Release);
                sh.next.store(usize::MAX / 2, SeqCst);
            }
            sh.active.fetch_sub(1, Release);
        }
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

    #[test]
    fn concurrent_callers_each_get_every_block() {
        // callers race for the team; the ones that find it busy run their blocks themselves
        let team = Team::new(2);
        std::thread::scope(|s| {
            for c in 0..4usize {
                let team = &team;
                s.spawn(move || {
                    for round in 0..300usize {
                        let blocks = 1 + (c + round) % 5;
                        let hits: Vec<AtomicUsize> = (0..blocks).map(|_| AtomicUsize::new(0)).collect();
                        team.run(blocks, &|i| {
                            hits[i].fetch_add(1, Relaxed);
                        });
                        assert!(hits.iter().all(|h| h.load(Relaxed) == 1), "caller {c} round {round}");
                    }
                });
            }
        });
    }
}
