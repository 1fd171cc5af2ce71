//! Choosing where tensors live: `--device auto|cpu|cuda|mps`.

use crate::{Error, Result};
use std::str::FromStr;
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
/// Each forward pass allocates and frees activations of a few hundred KB to a few MB. glibc
/// serves such blocks with fresh `mmap`s and unmaps them when freed, so every pass pays page
/// faults and page clearing for memory it just gave back (10 % of an embedding run's time
/// here). Raising glibc's mmap threshold to its maximum (32 MB) and never trimming the heap
/// lets those blocks be reused; measured +10–30 % on the encoder workloads of BENCHMARKS.md,
/// for a peak RSS within a few MB. Call it once at start-up; the CLI does. A no-op outside
/// glibc.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes glibc's allocation thresholds; it is called before the
    // caller's threads allocate, and bad values are rejected by glibc (returning 0).
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 * 1024 * 1024);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
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
