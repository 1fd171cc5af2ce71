//! Trident's own CPU kernels run their parallel loops on libtorch's OpenMP threads.
//!
//! A decoding step alternates libtorch operations (run by libtorch's OpenMP team) with
//! Trident's own kernels (the streamed products, int8 quantization). Had those kernels their
//! own thread pool (rayon's), each would start while libtorch's threads still spin waiting
//! for their next parallel region (GNU OpenMP spins for a while before it sleeps): on a
//! 2-core machine, two pools then fight over two cores. Measured on a 2-core AMD EPYC
//! (Zen 5), TinyLlama-1.1B int8 decoding with the streamed int8 product on rayon took 6.0 s
//! for 128 tokens, against 3.8 s with libtorch's threads told to sleep at once
//! (`OMP_WAIT_POLICY=passive`) — which in turn slows libtorch's own operations.
//!
//! So [`for_each_task`] runs its tasks inside an OpenMP parallel region of the very runtime
//! libtorch uses: it looks up `GOMP_parallel`, the entry point compilers call for
//! `#pragma omp parallel` (GNU libgomp's, also provided by LLVM's and Intel's runtimes), in
//! the process's loaded libraries, and starts a region of libtorch's thread count in which
//! the threads take tasks from a shared counter. The threads that just finished libtorch's
//! work take Trident's at once, and nobody else competes for the cores. Where no OpenMP
//! runtime is loaded, rayon runs the tasks.

use std::any::Any;
use std::cell::{Cell, UnsafeCell};
use std::collections::HashSet;
use std::ffi::c_void;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::thread::ThreadId;

/// `void GOMP_parallel(void (*fn)(void *), void *data, unsigned num_threads, unsigned flags)`.
type GompParallel = unsafe extern "C" fn(extern "C" fn(*mut c_void), *mut c_void, u32, u32);

/// The OpenMP runtime's `GOMP_parallel`, when the process has one loaded (libtorch links it).
fn gomp_parallel() -> Option<GompParallel> {
    static FOUND: OnceLock<Option<GompParallel>> = OnceLock::new();
    *FOUND.get_or_init(|| {
        // SAFETY: dlsym with RTLD_DEFAULT searches the libraries loaded with the program; the
        // name is a NUL-terminated string. A non-null result is the address of the function
        // of that name, whose C signature is GompParallel's (libgomp's ABI, stable since GCC
        // 4.9 and implemented under that name by LLVM's and Intel's OpenMP runtimes).
        unsafe {
            let f = libc::dlsym(libc::RTLD_DEFAULT, c"GOMP_parallel".as_ptr());
            (!f.is_null()).then(|| std::mem::transmute::<*mut c_void, GompParallel>(f))
        }
    })
}

/// The OpenMP runtime's `omp_get_num_threads` (the size of the current team).
fn omp_team_size() -> Option<unsafe extern "C" fn() -> i32> {
    static FOUND: OnceLock<Option<unsafe extern "C" fn() -> i32>> = OnceLock::new();
    *FOUND.get_or_init(|| {
        // SAFETY: as in `gomp_parallel`; `int omp_get_num_threads(void)` is the OpenMP API.
        unsafe {
            let f = libc::dlsym(libc::RTLD_DEFAULT, c"omp_get_num_threads".as_ptr());
            (!f.is_null())
                .then(|| std::mem::transmute::<*mut c_void, unsafe extern "C" fn() -> i32>(f))
        }
    })
}

/// Whether [`for_each_task`] runs on the OpenMP runtime's threads (else on rayon's).
pub fn on_openmp() -> bool {
    gomp_parallel().is_some()
}

/// What the threads of one parallel pass share.
struct Region<'a> {
    task: &'a (dyn Fn(usize) + Sync),
    tasks: usize,
    next: AtomicUsize,
    panic: Mutex<Option<Box<dyn Any + Send>>>,
}

impl<'a> Region<'a> {
    fn new(tasks: usize, task: &'a (dyn Fn(usize) + Sync)) -> Self {
        Region {
            task,
            tasks,
            next: AtomicUsize::new(0),
            panic: Mutex::new(None),
        }
    }

    /// One thread's part: take the next task until none is left. A panic stops the handing
    /// out and is kept for the caller to raise again (it must not unwind through the C
    /// runtime).
    fn work(&self) {
        let run = catch_unwind(AssertUnwindSafe(|| loop {
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            if i >= self.tasks {
                break;
            }
            (self.task)(i);
        }));
        if let Err(panic) = run {
            self.next.store(self.tasks, Ordering::Relaxed);
            if let Ok(mut slot) = self.panic.lock() {
                slot.get_or_insert(panic);
            }
        }
    }

    /// Raise again a panic of one of the tasks.
    fn raise(&self) {
        let panic = self.panic.lock().ok().and_then(|mut p| p.take());
        if let Some(panic) = panic {
            resume_unwind(panic);
        }
    }
}

/// Each thread of the region: take the next task until none is left.
extern "C" fn region_body(data: *mut c_void) {
    // SAFETY: `data` is the `Region` that `for_each_task` passed, alive until
    // `GOMP_parallel` returns, which is after every thread has left this function.
    unsafe { &*(data as *const Region) }.work();
}

/// Run `task(i)` for every `i` in `0..tasks`, in parallel over libtorch's threads (see the
/// module docs), and return when all are done. One task runs on this thread. A panic in a
/// task is raised again here once the others have finished. Inside a [`decoding_step`] run
/// with helpers, they take the tasks.
pub fn for_each_task(tasks: usize, task: &(dyn Fn(usize) + Sync)) {
    if tasks <= 1 {
        (0..tasks).for_each(task);
        return;
    }
    let session = SESSION.with(Cell::get);
    if !session.is_null() {
        // SAFETY: set by `session_body` on this thread for the duration of the step's body,
        // during which the session lives on `with_helpers`'s stack.
        return unsafe { &*session }.run(tasks, task);
    }
    let threads = (tch::get_num_threads().max(1) as usize).min(tasks);
    match gomp_parallel() {
        Some(parallel) if threads > 1 => {
            let region = Region::new(tasks, task);
            // SAFETY: `GOMP_parallel` runs `region_body` on `threads` threads (this one among
            // them) with the pointer given, and returns after all of them have finished, so
            // `region` outlives every use; `region_body` never unwinds.
            unsafe {
                parallel(
                    region_body,
                    &region as *const Region as *mut c_void,
                    threads as u32,
                    0,
                )
            };
            region.raise();
        }
        Some(_) => (0..tasks).for_each(task),
        None => {
            use rayon::prelude::*;
            (0..tasks).into_par_iter().for_each(task);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Decoding steps with helpers
// ---------------------------------------------------------------------------------------
//
// A batch-1 decoding step is some 130 passes over weights (SmolLM2-360M: four per layer and
// the head), each a parallel region of its own, with short single-threaded stretches between
// them (a norm, the rotary turn, attention over the cache). Each region costs a start and an
// end: waking the other threads, and a barrier in the OpenMP runtime. A step run by
// [`decoding_step`] opens one region for the whole step instead: this thread runs the model,
// and the others ("helpers") wait in a loop of ours for its passes, which it hands them
// through two atomics. Measured on a 2-core Zen 5 (alternating A/B, medians of 7 runs):
// batch-1 decoding at f32 1.01–1.09× (GPT-2, SmolLM2, TinyLlama), at int8 0.97–1.05×, that
// is level (an A/A pair of the same runs spread 0.985–1.002).
//
// Inside the region libtorch's own operations run on this thread alone (a nested region is
// serial); so a step runs this way only where its previous run with as many rows did no work
// that libtorch spreads over its threads (see `note_library_product`): a step whose products
// all run a streamed kernel and whose other operations are `fused`'s.

thread_local! {
    /// The session whose step runs on this thread, if any.
    static SESSION: Cell<*const Session> = const { Cell::new(std::ptr::null()) };
}

/// What the threads of a step's region share.
struct Session {
    /// The thread that runs the step.
    owner: ThreadId,
    /// Helpers in the team (set by the owner before any pass is posted).
    helpers: AtomicUsize,
    /// Number of the latest pass (0: none yet); pass `g` lives in `slots[g % 2]`.
    posted: AtomicUsize,
    /// Helpers done with the latest pass.
    done: AtomicUsize,
    quit: AtomicBool,
    /// Written by the owner only while no helper reads that slot: pass `g + 1` is posted
    /// after every helper is done with pass `g`, so none still reads pass `g - 1`'s slot.
    /// (The passes' tasks, their lifetimes erased: each is valid until every helper has said
    /// it is done with its pass, which the owner waits for.)
    slots: [UnsafeCell<Option<Region<'static>>>; 2],
}

// SAFETY: `slots` is written under the posting protocol above; the rest is atomics.
unsafe impl Sync for Session {}

impl Session {
    /// Run a pass's tasks with the helpers (the owner's side of [`for_each_task`]).
    fn run(&self, tasks: usize, task: &(dyn Fn(usize) + Sync)) {
        let helpers = self.helpers.load(Ordering::Relaxed);
        let g = self.posted.load(Ordering::Relaxed) + 1;
        // SAFETY: the task outlives this call, and the helpers use it only until they report
        // done with this pass, which this call waits for.
        let task = unsafe {
            std::mem::transmute::<&(dyn Fn(usize) + Sync), &'static (dyn Fn(usize) + Sync)>(task)
        };
        // SAFETY: see `slots`: every helper is done with pass g - 1 (the owner waited for
        // that in its `run`), so none reads pass g - 2's slot, this one.
        let slot = unsafe { &mut *self.slots[g % 2].get() };
        let region: &Region = slot.insert(Region::new(tasks, task));
        self.done.store(0, Ordering::Relaxed);
        self.posted.store(g, Ordering::Release);
        region.work();
        while self.done.load(Ordering::Acquire) < helpers {
            std::hint::spin_loop();
        }
        region.raise();
    }

    /// A helper's side: take part in each pass posted until the step is over.
    fn help(&self) {
        let mut seen = 0;
        loop {
            let g = self.posted.load(Ordering::Acquire);
            if g != seen {
                seen = g;
                // SAFETY: pass g was written before it was posted, and is not written again
                // before this helper reports done with it.
                if let Some(region) = unsafe { &*self.slots[g % 2].get() } {
                    region.work();
                }
                self.done.fetch_add(1, Ordering::Release);
            } else if self.quit.load(Ordering::Acquire) {
                return;
            } else {
                std::hint::spin_loop();
            }
        }
    }
}

/// What the step's region runs with.
struct Start<F, R> {
    session: Session,
    body: Cell<Option<F>>,
    result: Cell<Option<std::thread::Result<R>>>,
}

/// Each thread of a step's region: the owner runs the step, the others help.
extern "C" fn session_body<F: FnOnce() -> R, R>(data: *mut c_void) {
    // SAFETY: `data` is the `Start` that `with_helpers` passed, alive until `GOMP_parallel`
    // returns, after every thread has left this function; its cells are touched by the owner
    // thread alone.
    let start = unsafe { &*(data as *const Start<F, R>) };
    let session = &start.session;
    if std::thread::current().id() != session.owner {
        session.help();
        return;
    }
    // SAFETY: the OpenMP API, called inside the region.
    let team = omp_team_size().map_or(1, |f| unsafe { f() }).max(1) as usize;
    session.helpers.store(team - 1, Ordering::Relaxed);
    let result = start.body.take().map(|body| {
        SESSION.with(|s| s.set(session));
        let result = catch_unwind(AssertUnwindSafe(body));
        SESSION.with(|s| s.set(std::ptr::null()));
        result
    });
    session.quit.store(true, Ordering::Release);
    start.result.set(result);
}

/// Run `body` on this thread with `threads - 1` of the OpenMP runtime's threads held as
/// helpers for its parallel passes (see the section's comment); a panic in it is raised
/// again here.
fn with_helpers<R>(threads: usize, parallel: GompParallel, body: impl FnOnce() -> R) -> R {
    let start = Start {
        session: Session {
            owner: std::thread::current().id(),
            helpers: AtomicUsize::new(0),
            posted: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            quit: AtomicBool::new(false),
            slots: [UnsafeCell::new(None), UnsafeCell::new(None)],
        },
        body: Cell::new(Some(body)),
        result: Cell::new(None),
    };
    fn body_of<F: FnOnce() -> R, R>(_: &Start<F, R>) -> extern "C" fn(*mut c_void) {
        session_body::<F, R>
    }
    // SAFETY: as in `for_each_task`: `start` outlives the region, and `session_body` never
    // unwinds.
    unsafe {
        parallel(
            body_of(&start),
            &start as *const _ as *mut c_void,
            threads as u32,
            0,
        )
    };
    match start.result.into_inner() {
        Some(Ok(r)) => r,
        Some(Err(panic)) => resume_unwind(panic),
        // (The runtime runs the region on the calling thread; this is it failing to.)
        None => panic!("the OpenMP runtime did not run the decoding step on its caller"),
    }
}

thread_local! {
    /// Work that libtorch spreads over its threads, noted on this thread (where a step's
    /// model code runs, helped or not): a step that does some must not run inside a region,
    /// where it would run on one thread.
    static LIBRARY_PRODUCTS: Cell<usize> = const { Cell::new(0) };
}

/// Note that a step does work libtorch spreads over its threads: a product on the library's
/// kernel (or one being measured), or attention in libtorch's kernels (whose sums follow the
/// thread count: run on one thread, a step's probabilities moved in the last bits). A bf16
/// step's norms and element-wise operations are libtorch's too, but on a few rows they run
/// on one thread anyway, and give the same bits on one (`crates/gpt/tests/step_helpers.rs`).
pub(crate) fn note_library_product() {
    LIBRARY_PRODUCTS.with(|n| n.set(n.get() + 1));
}

/// Input rows up to which a decoding step may run with helpers: with more, each pass is long
/// beside its start and end (GPT-2 at batch 8 was level or 0.99× with helpers).
const STEP_MAX_ROWS: i64 = 4;

/// Whether decoding steps may run with helpers: 0 not read yet, 1 yes, 2 no.
static STEP_HELPERS: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// Whether decoding steps may run with helpers: yes unless `TRIDENT_STEP_HELPERS` is `off`
/// (or `0`, `false`), read once, or [`set_step_helpers`] said otherwise.
pub fn step_helpers_enabled() -> bool {
    match STEP_HELPERS.load(Ordering::Relaxed) {
        0 => {
            let off = matches!(
                std::env::var("TRIDENT_STEP_HELPERS").as_deref(),
                Ok("off" | "0" | "false")
            );
            let _ = STEP_HELPERS.compare_exchange(
                0,
                if off { 2 } else { 1 },
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
            STEP_HELPERS.load(Ordering::Relaxed) == 1
        }
        state => state == 1,
    }
}

/// Let decoding steps run with helpers (`true`, the default) or not, for this process from
/// now on, whatever `TRIDENT_STEP_HELPERS` says.
pub fn set_step_helpers(on: bool) {
    STEP_HELPERS.store(if on { 1 } else { 2 }, Ordering::Relaxed);
}

/// Decoding steps run with helpers in this process so far.
pub fn helped_steps() -> usize {
    HELPED_STEPS.load(Ordering::Relaxed)
}

static HELPED_STEPS: AtomicUsize = AtomicUsize::new(0);

/// Run one decoding step of `rows` rows (one new token each) of the model at `site` (any
/// address that identifies it): with helpers (see the section's comment) where the same
/// step's last run made no library product, else as it is. The result is the same either
/// way: the kernels, their tasks and each task's arithmetic do not change, only which thread
/// runs a task.
pub fn decoding_step<R>(
    site: usize,
    rows: i64,
    step: impl FnOnce() -> crate::Result<R>,
) -> crate::Result<R> {
    static CLEAN: OnceLock<Mutex<HashSet<(usize, i64)>>> = OnceLock::new();
    let clean = CLEAN.get_or_init(Default::default);
    let threads = tch::get_num_threads().max(1) as usize;
    let parallel = match gomp_parallel() {
        Some(p)
            if threads > 1
                && rows <= STEP_MAX_ROWS
                && step_helpers_enabled()
                && SESSION.with(Cell::get).is_null() =>
        {
            p
        }
        _ => return step(),
    };
    let key = (site, rows);
    let helped = clean.lock().is_ok_and(|c| c.contains(&key));
    let before = LIBRARY_PRODUCTS.with(Cell::get);
    let result = if helped {
        HELPED_STEPS.fetch_add(1, Ordering::Relaxed);
        with_helpers(threads, parallel, step)
    } else {
        step()
    };
    let unshared = LIBRARY_PRODUCTS.with(Cell::get) == before && result.is_ok();
    if let Ok(mut c) = clean.lock() {
        if unshared {
            c.insert(key);
        } else {
            c.remove(&key);
        }
    }
    result
}

/// Weight rows each thread takes in a streamed product of up to 4 input rows: one run of
/// consecutive rows per thread, `rows` over the thread count rounded up (one long stream
/// per thread reads faster than tasks handed out in turn: see `streamed::stream`).
pub fn rows_per_thread(rows: usize) -> usize {
    rows.div_ceil(tch::get_num_threads().max(1) as usize)
}

/// Bytes of weight each task of a streamed product of 5–8 input rows reads, for a product
/// over `total` bytes: about two tasks per thread, within 64 KB–512 KB. (Up to 4 rows each
/// thread reads one run of consecutive rows instead: see `streamed::stream`.)
///
/// Long runs through memory stream faster: on a 2-core Zen 5, tasks of 256 KB rather than
/// 64 KB made int8 and bf16 decoding up to 1.2× faster, and 512 KB rather than 256 KB
/// another 1.03–1.06× on most batch-1 workloads (alternating A/B; GPT-2 bf16 0.99×; 1 MB and
/// 4 MB were slower for int8 in isolation). Two tasks per thread at least keep every thread
/// busy where there are many (16 threads on a 1 MB weight still get 16 tasks), and let a
/// thread that starts late take fewer.
pub fn task_bytes(total: usize) -> usize {
    let threads = tch::get_num_threads().max(1) as usize;
    (total / (2 * threads)).clamp(1 << 16, 1 << 19)
}

/// A raw pointer that tasks share to write disjoint parts of one buffer.
#[derive(Clone, Copy)]
pub(crate) struct SharedMut<T>(pub(crate) *mut T);
// SAFETY: users write only disjoint elements from different tasks (each documents why) and
// the buffer outlives the parallel loop, which `for_each_task` waits for.
unsafe impl<T> Send for SharedMut<T> {}
unsafe impl<T> Sync for SharedMut<T> {}

impl<T> SharedMut<T> {
    /// The pointer (a method, so that closures capture the whole `Sync` wrapper).
    pub(crate) fn get(self) -> *mut T {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tasks_are_two_per_thread_within_64_to_512_kb() {
        let threads = tch::get_num_threads().max(1) as usize;
        assert_eq!(task_bytes(0), 1 << 16);
        assert_eq!(task_bytes(usize::MAX / 2), 1 << 19);
        let total = 2 * threads * 100_000;
        assert_eq!(task_bytes(total), 100_000);
    }

    #[test]
    fn every_task_runs_once() {
        for tasks in [0usize, 1, 2, 3, 17, 1000] {
            let counts: Vec<AtomicUsize> = (0..tasks).map(|_| AtomicUsize::new(0)).collect();
            for_each_task(tasks, &|i| {
                counts[i].fetch_add(1, Ordering::Relaxed);
            });
            assert!(
                counts.iter().all(|c| c.load(Ordering::Relaxed) == 1),
                "{tasks}"
            );
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn libtorchs_openmp_runtime_is_found() {
        // libtorch's CPU build links an OpenMP runtime; the tests link libtorch.
        assert!(on_openmp());
    }

    #[test]
    fn a_panicking_task_panics_the_caller_after_the_region() {
        let done = AtomicUsize::new(0);
        let result = catch_unwind(AssertUnwindSafe(|| {
            for_each_task(8, &|i| {
                if i == 3 {
                    panic!("task 3");
                }
                done.fetch_add(1, Ordering::Relaxed);
            })
        }));
        let panic = result.unwrap_err();
        assert_eq!(panic.downcast_ref::<&str>(), Some(&"task 3"));
        assert!(done.load(Ordering::Relaxed) <= 7);
    }

    /// Whether this thread runs a step's body with helpers right now.
    fn helped() -> bool {
        !SESSION.with(Cell::get).is_null()
    }

    #[test]
    fn a_helped_step_runs_every_task_once() {
        let Some(parallel) = gomp_parallel() else {
            return; // (no OpenMP runtime: steps are never helped)
        };
        for threads in [2, 3] {
            let out = with_helpers(threads, parallel, || {
                assert!(helped());
                let mut total = 0;
                for tasks in [7, 1, 0, 16, 2] {
                    let counts: Vec<AtomicUsize> =
                        (0..tasks).map(|_| AtomicUsize::new(0)).collect();
                    for_each_task(tasks, &|t| {
                        counts[t].fetch_add(1, Ordering::Relaxed);
                    });
                    assert!(counts.iter().all(|c| c.load(Ordering::Relaxed) == 1));
                    total += tasks;
                }
                total
            });
            assert_eq!(out, 26);
            assert!(!helped());
        }
    }

    #[test]
    fn a_panic_in_a_helped_task_reaches_the_steps_caller() {
        let Some(parallel) = gomp_parallel() else {
            return;
        };
        let result = catch_unwind(AssertUnwindSafe(|| {
            with_helpers(2, parallel, || {
                for_each_task(8, &|i| {
                    if i == 1 {
                        panic!("task 1");
                    }
                })
            })
        }));
        assert_eq!(result.unwrap_err().downcast_ref::<&str>(), Some(&"task 1"));
        // The threads are free again.
        let ran = AtomicUsize::new(0);
        for_each_task(4, &|_| {
            ran.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(ran.load(Ordering::Relaxed), 4);
    }

    #[test]
    fn a_step_is_helped_only_after_a_run_without_library_work() {
        if gomp_parallel().is_none() || tch::get_num_threads() < 2 || !step_helpers_enabled() {
            return;
        }
        let site = &0u8 as *const u8 as usize;
        let step = |library: bool| {
            decoding_step(site, 1, || {
                if library {
                    note_library_product();
                }
                Ok(helped())
            })
            .unwrap()
        };
        assert!(!step(true), "the first run is never helped");
        assert!(!step(false), "the run before did library work");
        assert!(step(false));
        assert!(step(true), "the run before was clean");
        assert!(!step(false), "the run before did library work");
        // Too many rows: not helped. An error is never clean.
        assert!(!decoding_step(site, STEP_MAX_ROWS + 1, || Ok(helped())).unwrap());
        assert!(decoding_step(site, 1, || Err::<(), _>(crate::Error::Input("x".into()))).is_err());
        assert!(!step(false));
    }
}
