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
                "--device cuda: no CUDA device is visible to libtorch (this build links the CPU \
                 runtime unless built with `--features cuda`; run `trident doctor`)"
                    .into(),
            )),
            DeviceChoice::Mps if tch::utils::has_mps() => Ok(Device::Mps),
            DeviceChoice::Mps => Err(Error::Unsupported(
                "--device mps: this libtorch has no MPS support (Apple silicon only)".into(),
            )),
        }
    }
}
