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
use std::ffi::c_void;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

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

/// Whether [`for_each_task`] runs on the OpenMP runtime's threads (else on rayon's).
pub fn on_openmp() -> bool {
    gomp_parallel().is_some()
}

/// What the threads of one parallel region share.
struct Region<'a> {
    task: &'a (dyn Fn(usize) + Sync),
    tasks: usize,
    next: AtomicUsize,
    panic: Mutex<Option<Box<dyn Any + Send>>>,
}

/// Each thread of the region: take the next task until none is left.
extern "C" fn region_body(data: *mut c_void) {
    // SAFETY: `data` is the `Region` that `for_each_task` passed, alive until
    // `GOMP_parallel` returns, which is after every thread has left this function.
    let region = unsafe { &*(data as *const Region) };
    let run = catch_unwind(AssertUnwindSafe(|| loop {
        let i = region.next.fetch_add(1, Ordering::Relaxed);
        if i >= region.tasks {
            break;
        }
        (region.task)(i);
    }));
    if let Err(panic) = run {
        // Stop handing out tasks, and let the caller re-raise it (a panic must not unwind
        // through the C runtime).
        region.next.store(region.tasks, Ordering::Relaxed);
        if let Ok(mut slot) = region.panic.lock() {
            slot.get_or_insert(panic);
        }
    }
}

/// Run `task(i)` for every `i` in `0..tasks`, in parallel over libtorch's threads (see the
/// module docs), and return when all are done. One task runs on this thread. A panic in a
/// task is raised again here once the others have finished.
pub fn for_each_task(tasks: usize, task: &(dyn Fn(usize) + Sync)) {
    if tasks <= 1 {
        (0..tasks).for_each(task);
        return;
    }
    let threads = (tch::get_num_threads().max(1) as usize).min(tasks);
    match gomp_parallel() {
        Some(parallel) if threads > 1 => {
            let region = Region {
                task,
                tasks,
                next: AtomicUsize::new(0),
                panic: Mutex::new(None),
            };
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
            let panic = region.panic.into_inner().ok().flatten();
            if let Some(panic) = panic {
                resume_unwind(panic);
            }
        }
        Some(_) => (0..tasks).for_each(task),
        None => {
            use rayon::prelude::*;
            (0..tasks).into_par_iter().for_each(task);
        }
    }
}

/// Bytes of weight each task of a streamed product reads, for a product over `total` bytes:
/// about two tasks per thread, within 64 KB–512 KB.
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
}
