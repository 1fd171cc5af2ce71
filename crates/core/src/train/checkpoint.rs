//! Named f32 tensors to and from safetensors files (a trained model's `model.safetensors`,
//! the optimizer state of a checkpoint), and a directory replaced in one rename.

use crate::weights::Checkpoint;
use crate::{Error, Result};
use std::collections::HashMap;
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// An error writing `path`.
pub fn write_error(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Input(format!("cannot write {}: {e}", path.display()))
}

/// Write `tensors` (float32, any device) into a safetensors file with `{"format": "pt"}`
/// metadata, as PyTorch's `save_file` does, so that transformers loads it.
pub fn save_tensors(path: &Path, tensors: &[(String, Tensor)]) -> Result<()> {
    let mut data: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        if t.kind() != Kind::Float {
            return Err(Error::Unsupported(format!(
                "{name}: saving {:?} tensors (only f32)",
                t.kind()
            )));
        }
        let t = t.f_detach()?.f_to(Device::Cpu)?.f_contiguous()?;
        let values = Vec::<f32>::try_from(&t.f_flatten(0, -1)?)?;
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let shape = t.size().iter().map(|&d| d as usize).collect();
        data.push((name.clone(), shape, bytes));
    }
    let views = data
        .iter()
        .map(|(name, shape, bytes)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes)
                .map(|v| (name.clone(), v))
                .map_err(|e| write_error(path, e))
        })
        .collect::<Result<Vec<_>>>()?;
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize_to_file(views, Some(metadata), path).map_err(|e| write_error(path, e))
}

/// Read every tensor of a safetensors file, by name (on the CPU).
pub fn load_tensors(path: &Path) -> Result<HashMap<String, Tensor>> {
    let checkpoint = Checkpoint::from_file(path)?;
    checkpoint
        .names()
        .into_iter()
        .map(|n| Ok((n.clone(), checkpoint.get(&n)?)))
        .collect()
}

/// Copy saved values into `parameters` (in place, without recording gradients); every
/// parameter must be saved, with its shape.
pub fn restore(
    parameters: &[(String, Tensor)],
    saved: &HashMap<String, Tensor>,
    file: &Path,
) -> Result<()> {
    tch::no_grad(|| {
        for (name, p) in parameters {
            let s = saved
                .get(name)
                .ok_or_else(|| Error::weights(file, format!("tensor {name} is missing")))?;
            if s.size() != p.size() {
                return Err(Error::weights(
                    file,
                    format!(
                        "tensor {name} has shape {:?}, the model {:?}",
                        s.size(),
                        p.size()
                    ),
                ));
            }
            p.shallow_clone().f_copy_(s)?;
        }
        Ok(())
    })
}

/// Replace the directory `dir` by `fill`'s result: `fill` writes into `dir.tmp`, which is
/// then renamed over `dir`, so an interrupted write leaves the previous `dir` intact (or, if
/// the interruption falls between removal and rename, a complete `dir.tmp`).
pub fn replace_dir(dir: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let tmp = dir.with_extension("tmp");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| write_error(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| write_error(&tmp, e))?;
    fill(&tmp)?;
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(|e| write_error(dir, e))?;
    }
    std::fs::rename(&tmp, dir).map_err(|e| write_error(dir, e))
}
