//! Choosing where tensors live: `--device auto|cpu|cuda|mps`.

use crate::{Error, Result};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use tch::Device;

/// The user's device choice, before it is checked against the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    /// CUDA when present, else MPS when present, else CPU.
    #[default]
    Auto,
    /// The CPU.
    Cpu,
    /// The first CUDA GPU.
    Cuda,
    /// Apple's Metal backend.
    Mps,
}

impl FromStr for DeviceChoice {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(DeviceChoice::Auto),
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" | "gpu" => Ok(DeviceChoice::Cuda),
            "mps" => Ok(DeviceChoice::Mps),
            other => Err(Error::Input(format!(
                "unknown device '{other}': use auto, cpu, cuda or mps"
            ))),
        }
    }
}

impl DeviceChoice {
    /// The libtorch device for this choice, or an error when it is not available here.
    pub fn resolve(self) -> Result<Device> {
        match self {
            DeviceChoice::Cpu => Ok(Device::Cpu),
            DeviceChoice::Auto => Ok(if tch::Cuda::is_available() {
                Device::Cuda(0)
            } else if tch::utils::has_mps() {
                Device::Mps
            } else {
                Device::Cpu
            }),
            DeviceChoice::Cuda if tch::Cuda::is_available() => Ok(Device::Cuda(0)),
            DeviceChoice::Cuda => Err(Error::Unsupported(
                "device cuda: no CUDA device is visible to libtorch (this build links the CPU \
                 runtime unless built with the `cuda` cargo feature)"
                    .into(),
            )),
            DeviceChoice::Mps if tch::utils::has_mps() => Ok(Device::Mps),
            DeviceChoice::Mps => Err(Error::Unsupported(
                "device mps: this libtorch has no MPS support (Apple silicon only)".into(),
            )),
        }
    }
}

/// Give memory freed since the last call back to the OS (after a model's weights were
/// converted, whose f32 originals [`tune_allocator`] would otherwise keep). A no-op outside
/// glibc.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns unused heap pages to the OS.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Keep freed tensor memory in the process for reuse instead of returning it to the OS.
///
/// Each forward pass allocates and frees activations of a few hundred KB to tens of MB.
/// glibc serves large blocks with fresh `mmap`s and unmaps them when freed, so every pass
/// pays page faults and page clearing for memory it just gave back (10 % of an embedding
/// run's time; 14 % of OPUS-MT beam search's, whose `[256, 58101]` logits are 60 MB a step).
/// glibc's mmap threshold stops at 32 MB, so it is raised to that, larger blocks are kept in
/// the heap by turning glibc's mmaps off while no model is loading, and the heap is never
/// trimmed. Freed blocks are then reused. While weights load ([`Loading`]), mmaps are on:
/// a conversion's large temporaries go straight back (with them off, TinyLlama's bf16 → int8
/// load peaked 88 MB higher). Measured on the workloads of BENCHMARKS.md: +10–30 % on the
/// encoders (the threshold), Marian beam 4 1.3–1.6×, BART beam 4 f32 1.14×, T5 int8
/// 1.06–1.10× (no mmaps), the rest level. Call it once at start-up; the CLI (and so the
/// server) does. A no-op outside glibc.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes glibc's allocation thresholds, and bad values are rejected
    // by glibc (returning 0).
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 * 1024 * 1024);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
    let loads = LOADS.lock().unwrap_or_else(|e| e.into_inner());
    TUNED.store(true, Ordering::SeqCst);
    large_blocks_in_heap(*loads == 0);
}

/// Whether [`tune_allocator`] was called.
static TUNED: AtomicBool = AtomicBool::new(false);
/// How many models are loading now.
static LOADS: Mutex<usize> = Mutex::new(0);

/// glibc's mmaps off (`true`: every block from the heap) or back on (its default count).
fn large_blocks_in_heap(on: bool) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: as in `tune_allocator`: a threshold, no memory is touched.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, if on { 0 } else { 65536 });
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = on;
}

/// Held while a model's weights load: glibc's mmaps are on meanwhile (see [`tune_allocator`]),
/// and off again once the last load in progress ends.
pub struct Loading(());

impl Loading {
    /// A load begins.
    pub fn begin() -> Self {
        let mut loads = LOADS.lock().unwrap_or_else(|e| e.into_inner());
        *loads += 1;
        if TUNED.load(Ordering::SeqCst) {
            large_blocks_in_heap(false);
        }
        Loading(())
    }
}

impl Drop for Loading {
    fn drop(&mut self) {
        let mut loads = LOADS.lock().unwrap_or_else(|e| e.into_inner());
        *loads = loads.saturating_sub(1);
        if *loads == 0 && TUNED.load(Ordering::SeqCst) {
            large_blocks_in_heap(true);
        }
    }
}

/// How a model is loaded: what stays fixed for the life of a loaded model. Everything that
/// may change from one call to the next is a request option of the pipeline's `run`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LoadOptions {
    /// Where the model runs (`Auto`: CUDA when present).
    pub device: DeviceChoice,
    /// The numeric format the model computes in.
    pub dtype: crate::Dtype,
}
