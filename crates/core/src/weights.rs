//! The one weight loader: safetensors files (single or sharded) into a `VarStore`.
//!
//! Models declare their parameters with Hugging Face's names (`bert.encoder.layer.0...`);
//! [`load`] then fills every declared parameter from the checkpoint, looking each name up
//! through [`QUIRKS`], the single table of the ways checkpoints spell names differently.
//! A parameter that is absent or has the wrong shape is an error naming it.

use crate::files::ModelFiles;
use crate::{Error, Result};
use memmap2::Mmap;
use safetensors::tensor::{Dtype, Metadata, TensorInfo};
use safetensors::SafeTensors;
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use tch::nn::VarStore;
use tch::{Kind, Tensor};

/// A name rewrite: a parameter we call `…ours` may be stored as `…theirs`.
pub struct Quirk {
    /// The end of our (HF-standard) name.
    pub ours: &'static str,
    /// The end of the name some checkpoints use instead.
    pub theirs: &'static str,
    /// Which checkpoints do it, and why.
    pub why: &'static str,
}

/// The one table of checkpoint naming quirks. Every model goes through it.
pub const QUIRKS: &[Quirk] = &[
    Quirk {
        ours: "LayerNorm.weight",
        theirs: "LayerNorm.gamma",
        why: "older BERT checkpoints (TF-converted) name LayerNorm params gamma/beta",
    },
    Quirk {
        ours: "LayerNorm.bias",
        theirs: "LayerNorm.beta",
        why: "older BERT checkpoints (TF-converted) name LayerNorm params gamma/beta",
    },
    Quirk {
        ours: "shared.weight",
        theirs: "encoder.embed_tokens.weight",
        why:
            "T5: `shared` is tied to the encoder's embed_tokens; some exports keep only the latter",
    },
    Quirk {
        ours: "shared.weight",
        theirs: "decoder.embed_tokens.weight",
        why: "T5: `shared` is tied to the decoder's embed_tokens",
    },
];

/// Base-model prefixes that a checkpoint may carry or omit (`bert.embeddings…` vs `embeddings…`;
/// the original gpt2 repository stores `h.0…` where GPT2LMHeadModel saves `transformer.h.0…`).
pub const OPTIONAL_PREFIXES: &[&str] =
    &["bert.", "distilbert.", "roberta.", "transformer.", "model."];

/// Checkpoint tensors that are buffers, not parameters, and are never loaded.
pub const IGNORED_SUFFIXES: &[&str] = &[
    "attn.bias",        // GPT-2 causal-mask buffer
    "attn.masked_bias", // GPT-2 mask fill value
    "position_ids",     // BERT/RoBERTa position-id buffer
];

/// Every name under which the parameter `name` may be stored, most likely first.
pub fn candidate_names(name: &str) -> Vec<String> {
    let mut bases = vec![name.to_string()];
    if let Some(stripped) = OPTIONAL_PREFIXES.iter().find_map(|p| name.strip_prefix(p)) {
        bases.push(stripped.to_string());
    } else {
        bases.extend(OPTIONAL_PREFIXES.iter().map(|p| format!("{p}{name}")));
    }
    let mut out = Vec::new();
    for base in &bases {
        out.push(base.clone());
        for q in QUIRKS {
            if let Some(stem) = base.strip_suffix(q.ours) {
                out.push(format!("{stem}{}", q.theirs));
            }
        }
    }
    out
}

/// One memory-mapped safetensors file with its parsed header.
struct Shard {
    path: PathBuf,
    file: std::fs::File,
    mmap: Mmap,
    header_len: usize,
    metadata: Metadata,
}

impl Shard {
    fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: the file is opened read-only and we never hand out references that outlive
        // the map; a concurrent writer truncating it is the one case mmap cannot guard against.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let (header_len, metadata) = SafeTensors::read_metadata(&mmap).map_err(|e| {
            Error::weights(
                path,
                format!("not a valid safetensors file ({e}); the file may be truncated or corrupt: download it again"),
            )
        })?;
        Ok(Shard {
            path: path.to_path_buf(),
            file,
            mmap,
            header_len,
            metadata,
        })
    }

    /// Read a tensor's bytes straight into `dst` when it is a contiguous CPU tensor of the
    /// stored dtype and size, so that loading neither pages in the mapped file (peak memory
    /// stays at the model's size) nor makes an intermediate copy. Returns whether it did.
    #[cfg(unix)]
    fn read_into(&self, info: &TensorInfo, dst: &Tensor) -> Result<bool> {
        use std::os::unix::fs::FileExt;
        let (start, end) = (info.data_offsets.0, info.data_offsets.1);
        let fits = kind_of(info.dtype) == Some(dst.kind())
            && dst.device() == tch::Device::Cpu
            && dst.is_contiguous()
            && dst.numel() * dst.kind().elt_size_in_bytes() == end - start;
        if !fits || end == start {
            return Ok(false);
        }
        // SAFETY: `dst` is a contiguous CPU tensor of exactly `end - start` bytes (checked
        // above) that nothing else reads or writes while we fill it.
        let bytes =
            unsafe { std::slice::from_raw_parts_mut(dst.data_ptr() as *mut u8, end - start) };
        let offset = (8 + self.header_len + start) as u64;
        self.file
            .read_exact_at(bytes, offset)
            .map_err(|e| Error::io(&self.path, e))?;
        Ok(true)
    }

    #[cfg(not(unix))]
    fn read_into(&self, _info: &TensorInfo, _dst: &Tensor) -> Result<bool> {
        Ok(false)
    }

    fn info(&self, name: &str) -> Option<&TensorInfo> {
        self.metadata.info(name)
    }

    fn names(&self) -> Vec<String> {
        self.metadata.tensors().into_keys().collect()
    }

    fn tensor(&self, name: &str, info: &TensorInfo) -> Result<Tensor> {
        let kind = kind_of(info.dtype).ok_or_else(|| {
            Error::weights(
                &self.path,
                format!(
                    "tensor {name} has dtype {:?}, which Trident cannot load",
                    info.dtype
                ),
            )
        })?;
        let start = 8 + self.header_len + info.data_offsets.0;
        let end = 8 + self.header_len + info.data_offsets.1;
        let bytes = self.mmap.get(start..end).ok_or_else(|| {
            Error::weights(
                &self.path,
                format!("tensor {name} lies outside the file: the file is truncated"),
            )
        })?;
        let shape: Vec<i64> = info.shape.iter().map(|&d| d as i64).collect();
        Ok(Tensor::f_from_data_size(bytes, &shape, kind)?)
    }
}

fn kind_of(dtype: Dtype) -> Option<Kind> {
    Some(match dtype {
        Dtype::F32 => Kind::Float,
        Dtype::F16 => Kind::Half,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::F64 => Kind::Double,
        Dtype::I64 => Kind::Int64,
        Dtype::I32 => Kind::Int,
        Dtype::I16 => Kind::Int16,
        Dtype::I8 => Kind::Int8,
        Dtype::U8 => Kind::Uint8,
        Dtype::BOOL => Kind::Bool,
        _ => return None,
    })
}

/// A checkpoint: one or several safetensors files, memory-mapped.
pub struct Checkpoint {
    location: PathBuf,
    shards: Vec<Shard>,
}

#[derive(serde::Deserialize)]
struct ShardIndex {
    weight_map: BTreeMap<String, String>,
}

impl Checkpoint {
    /// Open the model's weights: `model.safetensors`, or the shards that
    /// `model.safetensors.index.json` lists. A checkpoint with only `pytorch_model.bin`
    /// gets an error that says how to convert it.
    pub fn open(files: &ModelFiles) -> Result<Self> {
        if let Some(path) = files.get_optional("model.safetensors")? {
            let shard = Shard::open(&path)?;
            return Ok(Checkpoint {
                location: path,
                shards: vec![shard],
            });
        }
        if let Some(index) = files.get_optional("model.safetensors.index.json")? {
            let idx: ShardIndex = crate::config::read_json(&index)?;
            let mut names: Vec<&String> = idx.weight_map.values().collect();
            names.sort();
            names.dedup();
            let shards = names
                .into_iter()
                .map(|n| Shard::open(&files.get(n)?))
                .collect::<Result<Vec<_>>>()?;
            return Ok(Checkpoint {
                location: index,
                shards,
            });
        }
        if files.get_optional("pytorch_model.bin")?.is_some() {
            return Err(Error::Unsupported(format!(
                "{}: only pytorch_model.bin (a Python pickle) is present, which Trident does not execute. \
                 Convert it once with Python: `from transformers import AutoModel; \
                 AutoModel.from_pretrained(DIR).save_pretrained(DIR, safe_serialization=True)`, \
                 or use a revision of the repository that has model.safetensors",
                files.name()
            )));
        }
        Err(files.missing("model.safetensors"))
    }

    /// Open a single safetensors file.
    pub fn from_file(path: &Path) -> Result<Self> {
        Ok(Checkpoint {
            location: path.to_path_buf(),
            shards: vec![Shard::open(path)?],
        })
    }

    /// The file (or index) the weights come from.
    pub fn location(&self) -> &Path {
        &self.location
    }

    /// Whether the checkpoint stores `name` (exactly, or under a quirk spelling).
    pub fn contains(&self, name: &str) -> bool {
        self.find(name).is_some()
    }

    /// All tensor names in the checkpoint.
    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.shards.iter().flat_map(|s| s.names()).collect();
        v.sort();
        v
    }

    fn find(&self, name: &str) -> Option<(&Shard, String, &TensorInfo)> {
        candidate_names(name).into_iter().find_map(|cand| {
            self.shards
                .iter()
                .find_map(|s| s.info(&cand).map(|info| (s, cand.clone(), info)))
        })
    }

    /// Read the tensor our model calls `name` (through the quirk table), on the CPU.
    pub fn get(&self, name: &str) -> Result<Tensor> {
        let (shard, stored, info) = self
            .find(name)
            .ok_or_else(|| Error::weights(&self.location, format!("tensor {name} is missing")))?;
        shard.tensor(&stored, info)
    }
}

/// Build a model's modules on `device` with `build` (which declares parameters under the
/// path it is given, with HF names), then fill them from the model's checkpoint.
/// Returns the store that owns the parameters along with the model.
pub fn build_and_load<T>(
    files: &ModelFiles,
    device: tch::Device,
    build: impl FnOnce(&tch::nn::Path) -> Result<T>,
) -> Result<(VarStore, T)> {
    let ckpt = Checkpoint::open(files)?;
    let vs = VarStore::new(device);
    let model = build(&vs.root())?;
    load(&vs, &ckpt)?;
    Ok((vs, model))
}

/// What [`load`] did, for logs and tests.
#[derive(Debug, Default)]
pub struct LoadReport {
    /// Parameters filled.
    pub loaded: usize,
    /// Checkpoint tensors no parameter asked for (other heads, buffers).
    pub unused: Vec<String>,
}

/// Fill every parameter of `vs` from `ckpt`, converting dtype and device as needed.
pub fn load(vs: &VarStore, ckpt: &Checkpoint) -> Result<LoadReport> {
    let mut missing = Vec::new();
    let mut used = HashSet::new();
    let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, var) in &vars {
        let Some((shard, stored, info)) = ckpt.find(name) else {
            missing.push(name.clone());
            continue;
        };
        let expected = var.size();
        let found: Vec<i64> = info.shape.iter().map(|&d| d as i64).collect();
        if expected != found {
            return Err(Error::weights(
                &shard.path,
                format!(
                    "tensor {stored} has shape {found:?} but the model (built from config.json) expects {expected:?}: \
                     config.json and the weights do not belong together"
                ),
            ));
        }
        if !shard.read_into(info, var)? {
            // Another dtype or device: read, then convert while copying.
            let src = shard.tensor(&stored, info)?;
            let mut dst = var.shallow_clone();
            tch::no_grad(|| dst.f_copy_(&src))?;
        }
        used.insert(stored);
    }
    if !missing.is_empty() {
        let shown: Vec<&str> = missing.iter().take(8).map(String::as_str).collect();
        return Err(Error::weights(
            &ckpt.location,
            format!(
                "{} tensor(s) the model needs are missing: {}{}. Is this checkpoint of the architecture config.json names?",
                missing.len(),
                shown.join(", "),
                if missing.len() > shown.len() { ", …" } else { "" }
            ),
        ));
    }
    let unused = ckpt
        .names()
        .into_iter()
        .filter(|n| !used.contains(n) && !IGNORED_SUFFIXES.iter().any(|s| n.ends_with(s)))
        .collect::<Vec<_>>();
    if !unused.is_empty() {
        tracing::debug!(count = unused.len(), first = ?unused.first(), "checkpoint tensors not used by this model");
    }
    Ok(LoadReport {
        loaded: vars.len(),
        unused,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_cover_prefix_and_layernorm_spellings() {
        let c = candidate_names("bert.encoder.layer.0.output.LayerNorm.weight");
        assert!(c.contains(&"encoder.layer.0.output.LayerNorm.weight".to_string()));
        assert!(c.contains(&"bert.encoder.layer.0.output.LayerNorm.gamma".to_string()));
        assert!(c.contains(&"encoder.layer.0.output.LayerNorm.gamma".to_string()));
        let c = candidate_names("h.0.attn.c_attn.weight");
        assert!(c.contains(&"transformer.h.0.attn.c_attn.weight".to_string()));
        let c = candidate_names("shared.weight");
        assert!(c.contains(&"encoder.embed_tokens.weight".to_string()));
    }

    fn write_safetensors(path: &Path, tensors: &[(&str, Vec<f32>, Vec<usize>)]) {
        let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
            .iter()
            .map(|(n, data, shape)| {
                let bytes: &[u8] = unsafe {
                    std::slice::from_raw_parts(data.as_ptr() as *const u8, data.len() * 4)
                };
                (
                    n.to_string(),
                    safetensors::tensor::TensorView::new(Dtype::F32, shape.clone(), bytes).unwrap(),
                )
            })
            .collect();
        safetensors::serialize_to_file(views, None, path).unwrap();
    }

    #[test]
    fn loads_with_quirks_and_names_what_is_wrong() {
        let dir = std::env::temp_dir().join(format!("trident-weights-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("model.safetensors");
        write_safetensors(
            &file,
            &[
                ("encoder.LayerNorm.gamma", vec![1.0, 2.0], vec![2]),
                (
                    "encoder.dense.weight",
                    vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
                    vec![2, 3],
                ),
                ("h.0.attn.bias", vec![0.0], vec![1]),
            ],
        );
        let ckpt = Checkpoint::from_file(&file).unwrap();

        let vs = VarStore::new(tch::Device::Cpu);
        let p = vs.root() / "bert" / "encoder";
        let ln = (&p / "LayerNorm").zeros_no_train("weight", &[2]);
        let dense = (&p / "dense").zeros_no_train("weight", &[2, 3]);
        let report = load(&vs, &ckpt).unwrap();
        assert_eq!(report.loaded, 2);
        assert_eq!(Vec::<f32>::try_from(&ln).unwrap(), vec![1.0, 2.0]);
        assert_eq!(
            Vec::<f32>::try_from(&dense.flatten(0, -1)).unwrap(),
            vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
        );
        assert!(report.unused.is_empty(), "{:?}", report.unused);

        let vs = VarStore::new(tch::Device::Cpu);
        let _ = (vs.root() / "encoder" / "dense").zeros_no_train("weight", &[3, 2]);
        let err = load(&vs, &ckpt).unwrap_err().to_string();
        assert!(
            err.contains("encoder.dense.weight")
                && err.contains("[2, 3]")
                && err.contains("[3, 2]"),
            "{err}"
        );

        let vs = VarStore::new(tch::Device::Cpu);
        let _ = (vs.root() / "pooler").zeros_no_train("weight", &[2]);
        let err = load(&vs, &ckpt).unwrap_err().to_string();
        assert!(
            err.contains("pooler.weight") && err.contains("missing"),
            "{err}"
        );

        // A truncated file is refused with a message, not a panic.
        let bytes = std::fs::read(&file).unwrap();
        let cut = dir.join("cut.safetensors");
        std::fs::write(&cut, &bytes[..bytes.len() - 5]).unwrap();
        let err = Checkpoint::from_file(&cut).err().unwrap().to_string();
        assert!(err.contains("truncated or corrupt"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
