//! The one weight loader: safetensors checkpoints (single or sharded) read straight into the
//! model's own tensors.
//!
//! Models declare their parameters with Hugging Face's names through [`Weights::root`]
//! (`bert.encoder.layer.0...`); each is read from the checkpoint as it is declared, its name
//! looked up through [`QUIRKS`], the single table of the ways checkpoints spell names
//! differently, and converted to the model's kind (or quantized) on the way. Parameters that
//! are absent or have the wrong shape are collected, and [`Weights::finish`] names them all.

use crate::files::ModelFiles;
use crate::{Error, Result};
use memmap2::Mmap;
use safetensors::tensor::{Dtype, Metadata, TensorInfo};
use safetensors::SafeTensors;
use std::cell::RefCell;
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
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

    /// Copy a tensor's stored bytes into `dst`: all of them, or with `skip`, the `dst.len()`
    /// bytes that follow the first `skip` (a block of rows).
    fn read_bytes(&self, info: &TensorInfo, skip: usize, dst: &mut [u8]) -> Result<()> {
        let (start, end) = (info.data_offsets.0, info.data_offsets.1);
        if skip + dst.len() > end - start {
            return Err(Error::weights(
                &self.path,
                "a tensor's byte range does not match its shape and dtype: the file is corrupt",
            ));
        }
        let offset = 8 + self.header_len + start + skip;
        #[cfg(unix)]
        {
            use std::os::unix::fs::FileExt;
            self.file
                .read_exact_at(dst, offset as u64)
                .map_err(|e| Error::io(&self.path, e))
        }
        #[cfg(not(unix))]
        {
            let src = self.mmap.get(offset..offset + dst.len()).ok_or_else(|| {
                Error::weights(
                    &self.path,
                    "a tensor lies outside the file: the file is truncated",
                )
            })?;
            dst.copy_from_slice(src);
            Ok(())
        }
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
            // The checkpoint's own class keeps its head (AutoModel would drop it).
            let class = files
                .get_optional("config.json")?
                .and_then(|p| crate::config::read_json::<crate::config::CommonConfig>(&p).ok())
                .and_then(|c| c.architectures.into_iter().next())
                .unwrap_or_else(|| "AutoModel".to_string());
            return Err(Error::Unsupported(format!(
                "{}: only pytorch_model.bin (a Python pickle) is present, which Trident does not execute. \
                 Convert it once with Python: `from transformers import {class}; \
                 {class}.from_pretrained(DIR).save_pretrained(DIR, safe_serialization=True)`, \
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

/// Where a parameter of a model built for training ([`Weights::for_training`]) comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fresh {
    /// From the checkpoint; absent, it is an error (the base model's parameters).
    No,
    /// From the checkpoint when it holds the parameter with this shape; otherwise created
    /// (a task head that a base model lacks, or holds for another number of labels).
    IfAbsent,
    /// Created whatever the checkpoint holds (a head trained for another task).
    Always,
}

/// What [`Weights::for_training`] adds to a load: the rule for new parameters, and every
/// parameter read or created, by name.
struct Training {
    fresh: Box<dyn Fn(&str) -> Fresh>,
    parameters: Vec<(String, Tensor)>,
    created: Vec<String>,
}

/// What a parameter becomes when it is read: the model's float format, or an int8 projection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    /// A float parameter (norms, embeddings, biases, projections outside int8).
    Float,
    /// A projection weight `[out, in]` quantized to int8 with one scale per output row.
    Int8,
}

/// The one weight loader: reads each parameter from the checkpoint when a module declares
/// it, straight into the format the model computes in, so that no full-precision copy of the
/// model ever exists (peak memory while loading ≈ the loaded model plus one tensor).
///
/// Models declare parameters through [`WeightPath`]s with Hugging Face's names
/// (`weights.root() / "encoder" / "layer" / 0`); names are looked up through [`QUIRKS`] and
/// [`OPTIONAL_PREFIXES`]. A missing parameter does not stop the build: [`Weights::finish`]
/// then names every one that was missing at once.
pub struct Weights {
    checkpoint: Checkpoint,
    device: tch::Device,
    dtype: crate::Dtype,
    used: RefCell<HashSet<String>>,
    missing: RefCell<Vec<String>>,
    /// Stored bytes of the tensor being converted, reused from one tensor to the next.
    scratch: RefCell<Vec<u64>>,
    /// Its rows as f32 `[out, in]`, for int8 quantization of transposed or non-f32 weights.
    staging: RefCell<Vec<f32>>,
    /// Set for a model being trained: the parameters by name, and which may be created.
    training: RefCell<Option<Training>>,
    /// glibc's large blocks are mapped while this load lasts (see `device::tune_allocator`).
    _loading: crate::device::Loading,
    /// This load's kernel-choice scope ([`Weights::scope`]).
    scope: u32,
}

impl Weights {
    /// Open the checkpoint of `files` to load it onto `device`, computing in `dtype`.
    pub fn open(files: &ModelFiles, device: tch::Device, dtype: crate::Dtype) -> Result<Self> {
        Self::from_checkpoint(Checkpoint::open(files)?, device, dtype)
    }

    /// Load from an opened checkpoint.
    pub fn from_checkpoint(
        checkpoint: Checkpoint,
        device: tch::Device,
        dtype: crate::Dtype,
    ) -> Result<Self> {
        if dtype == crate::Dtype::Int8 && device != tch::Device::Cpu {
            // libtorch's integer products take ≥ 17 rows on CUDA (a decoding step has one) and
            // do not exist on MPS.
            return Err(Error::Unsupported(format!(
                "dtype int8 runs on the CPU only, not on {device:?}: use dtype bf16 on a GPU, \
                 or the CPU device"
            )));
        }
        Ok(Weights {
            checkpoint,
            device,
            dtype,
            used: RefCell::default(),
            missing: RefCell::default(),
            scratch: RefCell::default(),
            staging: RefCell::default(),
            training: RefCell::default(),
            _loading: crate::device::Loading::begin(),
            scope: crate::nn::kernels::new_scope(),
        })
    }

    /// The kernel-choice scope of the model this loader builds: every projection it loads
    /// shares one, and no other model's ([`crate::nn::kernels`] decides per model, because
    /// two models' shapes in one process are not one workload).
    pub fn scope(&self) -> u32 {
        self.scope
    }

    /// Load a model to train it: in f32, every parameter kept by name (for the optimizer and
    /// for saving, [`LoadReport::parameters`]), and the parameters `fresh` names created as
    /// zeros when the checkpoint lacks them ([`Fresh`]; listed in [`LoadReport::created`] for
    /// the caller to initialize) rather than reported missing.
    pub fn for_training(self, fresh: impl Fn(&str) -> Fresh + 'static) -> Result<Self> {
        if self.dtype != crate::Dtype::F32 {
            return Err(Error::Unsupported(format!(
                "training runs in f32, not {:?}",
                self.dtype
            )));
        }
        *self.training.borrow_mut() = Some(Training {
            fresh: Box::new(fresh),
            parameters: Vec::new(),
            created: Vec::new(),
        });
        Ok(self)
    }

    /// Whether the model is being loaded for training ([`Weights::for_training`]).
    pub fn is_training(&self) -> bool {
        self.training.borrow().is_some()
    }

    /// The path under which the model's top-level names are declared.
    pub fn root(&self) -> WeightPath<'_> {
        WeightPath {
            weights: self,
            prefix: String::new(),
        }
    }

    /// The numeric format the model computes in.
    pub fn dtype(&self) -> crate::Dtype {
        self.dtype
    }

    /// Where parameters are placed.
    pub fn device(&self) -> tch::Device {
        self.device
    }

    /// The kind float parameters get: bfloat16 for [`crate::Dtype::Bf16`], f32 otherwise.
    pub fn float_kind(&self) -> Kind {
        match self.dtype {
            crate::Dtype::Bf16 => Kind::BFloat16,
            _ => Kind::Float,
        }
    }

    /// The checkpoint being read.
    pub fn checkpoint(&self) -> &Checkpoint {
        &self.checkpoint
    }

    /// End the load: an error naming every parameter the model asked for and the checkpoint
    /// lacks; otherwise what was read and what was left unused.
    pub fn finish(self) -> Result<LoadReport> {
        let converted = !self.scratch.borrow().is_empty();
        drop((self.scratch, self.staging));
        if converted {
            // The scratch buffers are free now; keep them out of the process's memory.
            crate::device::release_free_memory();
        }
        let missing = self.missing.into_inner();
        if !missing.is_empty() {
            let shown: Vec<&str> = missing.iter().take(8).map(String::as_str).collect();
            return Err(Error::weights(
                &self.checkpoint.location,
                format!(
                    "{} tensor(s) the model needs are missing: {}{}. Is this checkpoint of the \
                     architecture config.json names?",
                    missing.len(),
                    shown.join(", "),
                    if missing.len() > shown.len() {
                        ", …"
                    } else {
                        ""
                    }
                ),
            ));
        }
        let (parameters, created) = match self.training.into_inner() {
            Some(t) => (t.parameters, t.created),
            None => (Vec::new(), Vec::new()),
        };
        let used = self.used.into_inner();
        let unused = self
            .checkpoint
            .names()
            .into_iter()
            .filter(|n| !used.contains(n) && !IGNORED_SUFFIXES.iter().any(|s| n.ends_with(s)))
            .collect::<Vec<_>>();
        if !unused.is_empty() {
            tracing::debug!(count = unused.len(), first = ?unused.first(), "checkpoint tensors not used by this model");
        }
        Ok(LoadReport {
            loaded: used.len(),
            unused,
            parameters,
            created,
        })
    }

    /// For a model being trained: `name`'s rule, or `None` for an ordinary load.
    fn fresh(&self, name: &str) -> Option<Fresh> {
        self.training.borrow().as_ref().map(|t| (t.fresh)(name))
    }

    /// For a model being trained: keep the parameter `name` (and whether it was created).
    fn keep(&self, name: &str, tensor: &Tensor, created: bool) {
        if let Some(t) = self.training.borrow_mut().as_mut() {
            t.parameters
                .push((name.to_string(), tensor.shallow_clone()));
            if created {
                t.created.push(name.to_string());
            }
        }
    }

    /// A created parameter of a model being trained: zeros of `shape`, kept by name.
    fn create(&self, name: &str, shape: &[i64]) -> Result<(Tensor, Option<Tensor>)> {
        let t = Tensor::f_zeros(shape, (self.float_kind(), self.device))?;
        self.keep(name, &t, true);
        Ok((t, None))
    }

    /// Read `name` with the model's `shape` (`transposed`: stored `[in, out]` for a
    /// `[out, in]` parameter, GPT-2's Conv1D) and convert it to `target`. Returns the tensor
    /// and, for int8, its `[out]` f32 scales.
    fn read(
        &self,
        name: &str,
        shape: &[i64],
        transposed: bool,
        target: Target,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let kind = match target {
            Target::Float => self.float_kind(),
            Target::Int8 => Kind::Int8,
        };
        let fresh = self.fresh(name);
        if fresh == Some(Fresh::Always) {
            return self.create(name, shape);
        }
        let found_here = self.checkpoint.find(name).filter(|(_, _, info)| {
            // A head stored with another shape (another number of labels) is made anew.
            let stored: Vec<i64> = info.shape.iter().map(|&d| d as i64).collect();
            let wanted: Vec<i64> = if transposed {
                shape.iter().rev().copied().collect()
            } else {
                shape.to_vec()
            };
            fresh != Some(Fresh::IfAbsent) || stored == wanted
        });
        if found_here.is_none() && fresh == Some(Fresh::IfAbsent) {
            return self.create(name, shape);
        }
        let Some((shard, stored, info)) = found_here else {
            self.missing.borrow_mut().push(name.to_string());
            let placeholder = Tensor::f_empty(shape, (kind, self.device))?;
            let scales = (target == Target::Int8)
                .then(|| Tensor::f_empty([shape[0]], (Kind::Float, self.device)))
                .transpose()?;
            return Ok((placeholder, scales));
        };
        let found: Vec<i64> = info.shape.iter().map(|&d| d as i64).collect();
        let expected: Vec<i64> = if transposed {
            shape.iter().rev().copied().collect()
        } else {
            shape.to_vec()
        };
        if expected != found {
            return Err(Error::weights(
                &shard.path,
                format!(
                    "tensor {stored} has shape {found:?} but the model (built from config.json) \
                     expects {expected:?}: config.json and the weights do not belong together"
                ),
            ));
        }
        self.used.borrow_mut().insert(stored.clone());
        let stored_kind = kind_of(info.dtype).ok_or_else(|| {
            Error::weights(
                &shard.path,
                format!(
                    "tensor {stored} has dtype {:?}, which Trident cannot load",
                    info.dtype
                ),
            )
        })?;
        let (tensor, scales) = if !transposed && target == Target::Float && stored_kind == kind {
            // Stored as it will be used: read straight into the parameter's memory (no page
            // of the mapped file is touched, so the file does not count twice in memory).
            // Zeroed first because libtorch fills on every thread, taking the page faults in
            // parallel; `pread` into fresh memory takes them on one (measured: BERT 6×768
            // loads in 0.12 s instead of 0.15 s).
            let t = Tensor::f_zeros(found.as_slice(), (kind, tch::Device::Cpu))?;
            if !shard.read_into(info, &t)? {
                t.shallow_clone().f_copy_(&shard.tensor(&stored, info)?)?;
            }
            (t, None)
        } else {
            self.read_converted(shard, info, &found, shape, transposed, target, kind)?
        };
        let tensor = tensor.f_to(self.device)?;
        self.keep(name, &tensor, false);
        Ok((tensor, scales.map(|s| s.f_to(self.device)).transpose()?))
    }

    /// [`Weights::read`] for a tensor that changes on the way: the stored bytes go into a
    /// scratch buffer reused from one tensor to the next, and only the converted tensor is
    /// allocated. (A fresh temporary per tensor leaves the heap fragmented: GPT-2's 48
    /// Conv1D transpositions cost 1.3× the model in peak memory that way.)
    #[allow(clippy::too_many_arguments)]
    fn read_converted(
        &self,
        shard: &Shard,
        info: &TensorInfo,
        found: &[i64],
        shape: &[i64],
        transposed: bool,
        target: Target,
        kind: Kind,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let stored_kind = kind_of(info.dtype).unwrap_or(Kind::Float);
        let numel: i64 = found.iter().product();
        let nbytes = info.data_offsets.1 - info.data_offsets.0;
        if numel * stored_kind.elt_size_in_bytes() as i64 != nbytes as i64 {
            return Err(Error::weights(
                &shard.path,
                format!("tensor {found:?} does not fill its byte range: the file is corrupt"),
            ));
        }
        if let (Target::Int8, false, &[rows, cols]) = (target, transposed, found) {
            let (q, scales) = self.read_quantized(shard, info, rows, cols, stored_kind)?;
            return Ok((q, Some(scales)));
        }
        if let (Target::Float, false) = (target, transposed) {
            return Ok((self.read_cast(shard, info, shape, stored_kind, kind)?, None));
        }
        let mut scratch = self.scratch.borrow_mut();
        let bytes = read_stored(&mut scratch, shard, info, 0, nbytes)?;
        let strides = contiguous_strides(found);
        // SAFETY: a view of `nbytes` bytes of the scratch buffer, in the stored layout; it is
        // only read, and dropped before this function returns (before the buffer is reused).
        let raw = unsafe {
            Tensor::f_from_blob(
                bytes.as_ptr(),
                found,
                &strides,
                stored_kind,
                tch::Device::Cpu,
            )?
        };
        let raw = if transposed { raw.f_tr()? } else { raw }; // a view: [out, in]
        match target {
            Target::Float => {
                let t = Tensor::f_empty(shape, (kind, tch::Device::Cpu))?;
                t.shallow_clone().f_copy_(&raw)?; // converts dtype and layout in one pass
                Ok((t, None))
            }
            Target::Int8 => {
                // A transposed (Conv1D) weight: quantization reads contiguous f32 rows of the
                // transpose, so stage them in a second buffer.
                let mut staging = self.staging.borrow_mut();
                let n = numel as usize;
                if staging.len() < n {
                    staging.resize(n, 0.0);
                }
                let strides = contiguous_strides(shape);
                // SAFETY: as above, over the staging buffer's first `n` floats.
                let rows = unsafe {
                    Tensor::f_from_blob(
                        staging.as_mut_ptr() as *const u8,
                        shape,
                        &strides,
                        Kind::Float,
                        tch::Device::Cpu,
                    )?
                };
                rows.shallow_clone().f_copy_(&raw)?;
                let (q, scales) = crate::nn::linear::quantize_rows(&rows)?;
                Ok((q, Some(scales)))
            }
        }
    }

    /// A tensor stored untransposed in `stored_kind`, read into a new `kind` tensor of `shape`
    /// one block of [`QUANTIZE_BLOCK_BYTES`] at a time: the stored bytes never sit in memory
    /// whole beside the converted tensor (GPT-2's f32 token table is 154 MB, which loading it
    /// in bf16 otherwise held next to the 77 MB result).
    fn read_cast(
        &self,
        shard: &Shard,
        info: &TensorInfo,
        shape: &[i64],
        stored_kind: Kind,
        kind: Kind,
    ) -> Result<Tensor> {
        let t = Tensor::f_empty(shape, (kind, tch::Device::Cpu))?;
        let numel = t.numel();
        if numel == 0 {
            return Ok(t);
        }
        let flat = t.f_view([numel as i64])?; // the same memory, as one row
        let elt = stored_kind.elt_size_in_bytes();
        let block = (QUANTIZE_BLOCK_BYTES / elt).max(1);
        let mut scratch = self.scratch.borrow_mut();
        let mut at = 0;
        while at < numel {
            let n = block.min(numel - at);
            let bytes = read_stored(&mut scratch, shard, info, at * elt, n * elt)?;
            // SAFETY: a view of the block's bytes in the stored kind, only read, and dropped
            // before the buffer is refilled.
            let raw = unsafe {
                Tensor::f_from_blob(
                    bytes.as_ptr(),
                    &[n as i64],
                    &[1],
                    stored_kind,
                    tch::Device::Cpu,
                )?
            };
            flat.f_narrow(0, at as i64, n as i64)?.f_copy_(&raw)?; // converts the kind
            at += n;
        }
        Ok(t)
    }

    /// An int8 `[rows, cols]` projection stored untransposed, read and quantized one block of
    /// rows at a time: only a block of the stored rows (≤ [`QUANTIZE_BLOCK_BYTES`]) is in
    /// memory at once, never the whole float tensor (a 50 257-row token table is 154 MB in
    /// f32, which would be the load's peak for a model of 85 MB int8 blocks).
    fn read_quantized(
        &self,
        shard: &Shard,
        info: &TensorInfo,
        rows: i64,
        cols: i64,
        stored_kind: Kind,
    ) -> Result<(Tensor, Tensor)> {
        let q = Tensor::f_empty([rows, cols], (Kind::Int8, tch::Device::Cpu))?;
        let scales = Tensor::f_empty([rows], (Kind::Float, tch::Device::Cpu))?;
        if rows * cols == 0 {
            return Ok((q, scales)); // (an empty tensor's data pointer may be null)
        }
        // SAFETY: fresh contiguous CPU tensors of rows × cols int8 values and rows f32
        // scales, written only through these slices until they are returned.
        let (q_all, scales_all) = unsafe {
            (
                std::slice::from_raw_parts_mut(q.data_ptr() as *mut i8, (rows * cols) as usize),
                std::slice::from_raw_parts_mut(scales.data_ptr() as *mut f32, rows as usize),
            )
        };
        let row_bytes = cols as usize * stored_kind.elt_size_in_bytes();
        let block = (QUANTIZE_BLOCK_BYTES / row_bytes.max(1)).max(1) as i64;
        let mut scratch = self.scratch.borrow_mut();
        // Each block widened to f32 in a buffer reused from block to block and tensor to
        // tensor, then quantized straight into `q`: no allocation per block. (Per-block
        // temporaries, 28 MB for an 8 MB block of bf16, freed between the model's own
        // tensors, left the heap fragmented: TinyLlama-1.1B's int8 load peaked ~200 MB above
        // the loaded model.)
        let mut staging = self.staging.borrow_mut();
        let mut r0 = 0;
        while r0 < rows {
            let n = block.min(rows - r0);
            let nbytes = n as usize * row_bytes;
            let bytes = read_stored(&mut scratch, shard, info, r0 as usize * row_bytes, nbytes)?;
            // SAFETY: a view of the block's bytes in the stored layout, only read, and dropped
            // before the buffer is refilled.
            let raw = unsafe {
                Tensor::f_from_blob(
                    bytes.as_ptr(),
                    &[n, cols],
                    &[cols, 1],
                    stored_kind,
                    tch::Device::Cpu,
                )?
            };
            let values = (n * cols) as usize;
            if staging.len() < values {
                staging.resize(values, 0.0);
            }
            // SAFETY: the staging buffer's first `values` floats as an [n, cols] tensor,
            // written by the copy below and then only read here.
            let widened = unsafe {
                Tensor::f_from_blob(
                    staging.as_mut_ptr() as *const u8,
                    &[n, cols],
                    &[cols, 1],
                    Kind::Float,
                    tch::Device::Cpu,
                )?
            };
            widened.shallow_clone().f_copy_(&raw)?; // stored kind → f32, into the buffer
            drop(widened);
            let (first, count) = (r0 as usize, n as usize);
            crate::nn::linear::quantize_rows_into(
                &staging[..values],
                &mut q_all[first * cols as usize..(first + count) * cols as usize],
                &mut scales_all[first..first + count],
                cols as usize,
            );
            r0 += n;
        }
        Ok((q, scales))
    }
}

/// Bytes of stored rows read and quantized (or converted) at once by
/// [`Weights::read_quantized`] and [`Weights::read_cast`]. (Unit tests use blocks of a few
/// rows, so that their small tensors take several.)
const QUANTIZE_BLOCK_BYTES: usize = if cfg!(test) { 64 } else { 8 << 20 };

/// `nbytes` of `info`'s stored bytes, from byte `skip` on, read into `scratch` (grown as
/// needed, and reused from block to block and tensor to tensor). u64 words: the buffer is
/// aligned for every element type.
fn read_stored<'a>(
    scratch: &'a mut Vec<u64>,
    shard: &Shard,
    info: &TensorInfo,
    skip: usize,
    nbytes: usize,
) -> Result<&'a [u8]> {
    let words = nbytes.div_ceil(8);
    if scratch.len() < words {
        scratch.resize(words, 0);
    }
    // SAFETY: the buffer holds at least `nbytes` bytes, and `scratch` is borrowed mutably for
    // as long as the slice lives.
    let bytes = unsafe { std::slice::from_raw_parts_mut(scratch.as_mut_ptr() as *mut u8, nbytes) };
    shard.read_bytes(info, skip, bytes)?;
    Ok(bytes)
}

/// Row-major strides of `shape`, in elements.
fn contiguous_strides(shape: &[i64]) -> Vec<i64> {
    let mut strides = vec![1i64; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        strides[i] = strides[i + 1] * shape[i + 1];
    }
    strides
}

/// A place in the model's name tree (`encoder.layer.0.attention`); `path / "self"` goes one
/// level down, as with PyTorch module names.
#[derive(Clone)]
pub struct WeightPath<'w> {
    weights: &'w Weights,
    prefix: String,
}

impl<'w> WeightPath<'w> {
    /// The full name of `leaf` under this path.
    pub fn name(&self, leaf: &str) -> String {
        if self.prefix.is_empty() {
            leaf.to_string()
        } else {
            format!("{}.{leaf}", self.prefix)
        }
    }

    /// The loader this path reads from.
    pub fn weights(&self) -> &'w Weights {
        self.weights
    }

    /// Whether the checkpoint stores `leaf` under this path (for optional parameters).
    pub fn contains(&self, leaf: &str) -> bool {
        self.weights.checkpoint.contains(&self.name(leaf))
    }

    /// The float parameter `leaf` of `shape`, in the model's float format.
    pub fn param(&self, leaf: &str, shape: &[i64]) -> Result<Tensor> {
        Ok(self
            .weights
            .read(&self.name(leaf), shape, false, Target::Float)?
            .0)
    }

    /// A projection weight `leaf` of shape `[out, in]` (stored `[in, out]` when
    /// `transposed`): float, or int8 with its `[out]` scales when the model computes in int8.
    pub fn projection(
        &self,
        leaf: &str,
        out_dim: i64,
        in_dim: i64,
        transposed: bool,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let target = match self.weights.dtype {
            crate::Dtype::Int8 => Target::Int8,
            _ => Target::Float,
        };
        self.weights
            .read(&self.name(leaf), &[out_dim, in_dim], transposed, target)
    }
}

impl<'w, T: std::fmt::Display> std::ops::Div<T> for &WeightPath<'w> {
    type Output = WeightPath<'w>;

    fn div(self, rhs: T) -> WeightPath<'w> {
        WeightPath {
            weights: self.weights,
            prefix: self.name(&rhs.to_string()),
        }
    }
}

impl<'w, T: std::fmt::Display> std::ops::Div<T> for WeightPath<'w> {
    type Output = WeightPath<'w>;

    fn div(self, rhs: T) -> WeightPath<'w> {
        &self / rhs
    }
}

/// What a load did, for logs and tests.
#[derive(Debug, Default)]
pub struct LoadReport {
    /// Checkpoint tensors read.
    pub loaded: usize,
    /// Checkpoint tensors no parameter asked for (other heads, buffers).
    pub unused: Vec<String>,
    /// A model built for training ([`Weights::for_training`]): every parameter under its
    /// Hugging Face name, in the order the model declared them (the same tensors as the
    /// model's); empty otherwise.
    pub parameters: Vec<(String, Tensor)>,
    /// The parameters created rather than read (zeros, for the caller to initialize).
    pub created: Vec<String>,
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

    /// An int8 projection read block by block of rows gives exactly what quantizing the
    /// whole float tensor gives (the unit-test block is 64 bytes: several blocks here, the
    /// last one short), transposed or not.
    #[test]
    fn int8_reads_in_row_blocks_equal_whole_tensor_quantization() {
        let dir = std::env::temp_dir().join(format!("trident-int8-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("model.safetensors");
        let (rows, cols) = (13usize, 7usize); // 28-byte rows: two per block, a short last one
        let values: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        write_safetensors(&file, &[("w.weight", values.clone(), vec![rows, cols])]);
        let weights = Weights::from_checkpoint(
            Checkpoint::from_file(&file).unwrap(),
            tch::Device::Cpu,
            crate::Dtype::Int8,
        )
        .unwrap();
        let w = Tensor::from_slice(&values).view([rows as i64, cols as i64]);
        let (q, scales) = (weights.root() / "w")
            .projection("weight", rows as i64, cols as i64, false)
            .unwrap();
        let (q_ref, s_ref) = crate::nn::linear::quantize_rows(&w).unwrap();
        assert!(q.equal(&q_ref), "int8 values differ");
        assert!(scales.unwrap().equal(&s_ref), "scales differ");
        // Transposed (a Conv1D stored [in, out]) goes through the staged path: same rule.
        let (qt, st) = (weights.root() / "w")
            .projection("weight", cols as i64, rows as i64, true)
            .unwrap();
        let (qt_ref, st_ref) = crate::nn::linear::quantize_rows(&w.tr().contiguous()).unwrap();
        assert!(qt.equal(&qt_ref) && st.unwrap().equal(&st_ref));
        std::fs::remove_dir_all(&dir).ok();
    }

    /// A float tensor converted to another kind block by block (64 bytes in unit tests:
    /// several blocks, the last one short) equals converting it whole; a Conv1D (transposed)
    /// and a tensor already in the model's kind take their own paths to the same values.
    #[test]
    fn float_reads_in_blocks_equal_whole_tensor_conversion() {
        let dir = std::env::temp_dir().join(format!("trident-cast-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("model.safetensors");
        let (rows, cols) = (13usize, 7usize);
        let values: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.3)
            .collect();
        write_safetensors(&file, &[("w.weight", values.clone(), vec![rows, cols])]);
        let w = Tensor::from_slice(&values).view([rows as i64, cols as i64]);
        // The same values stored in bf16 (each f32's top half), as Llama checkpoints are.
        let bf16_file = dir.join("bf16.safetensors");
        let halves: Vec<u8> = values
            .iter()
            .flat_map(|v| ((v.to_bits() >> 16) as u16).to_le_bytes())
            .collect();
        let view =
            safetensors::tensor::TensorView::new(Dtype::BF16, vec![rows, cols], &halves).unwrap();
        safetensors::serialize_to_file([("w.weight", view)], None, &bf16_file).unwrap();
        for (path, stored, dtype) in [
            (&file, w.shallow_clone(), crate::Dtype::Bf16),
            (&file, w.shallow_clone(), crate::Dtype::F32),
            (&bf16_file, Tensor::from_slice(&halves), crate::Dtype::F32),
            (&bf16_file, Tensor::from_slice(&halves), crate::Dtype::Bf16),
        ] {
            // What is stored, as a tensor of its own kind.
            let stored = if path == &bf16_file {
                stored
                    .view_dtype(Kind::BFloat16)
                    .view([rows as i64, cols as i64])
            } else {
                stored
            };
            let weights = Weights::from_checkpoint(
                Checkpoint::from_file(path).unwrap(),
                tch::Device::Cpu,
                dtype,
            )
            .unwrap();
            let kind = weights.float_kind();
            let (t, _) = (weights.root() / "w")
                .projection("weight", rows as i64, cols as i64, false)
                .unwrap();
            assert_eq!(t.kind(), kind);
            assert!(t.equal(&stored.to_kind(kind)), "{path:?} as {dtype:?}");
            let (tt, _) = (weights.root() / "w")
                .projection("weight", cols as i64, rows as i64, true)
                .unwrap();
            assert!(
                tt.equal(&stored.tr().to_kind(kind)),
                "{path:?} as {dtype:?}, transposed"
            );
        }
        std::fs::remove_dir_all(&dir).ok();
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
        let open = || {
            Weights::from_checkpoint(
                Checkpoint::from_file(&file).unwrap(),
                tch::Device::Cpu,
                crate::Dtype::F32,
            )
            .unwrap()
        };

        let weights = open();
        let p = weights.root() / "bert" / "encoder";
        let ln = (&p / "LayerNorm").param("weight", &[2]).unwrap();
        let dense = (&p / "dense").param("weight", &[2, 3]).unwrap();
        let report = weights.finish().unwrap();
        assert_eq!(report.loaded, 2);
        assert_eq!(Vec::<f32>::try_from(&ln).unwrap(), vec![1.0, 2.0]);
        assert_eq!(
            Vec::<f32>::try_from(&dense.flatten(0, -1)).unwrap(),
            vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
        );
        assert!(report.unused.is_empty(), "{:?}", report.unused);

        // Stored [in, out] (a Conv1D), asked for [out, in]: transposed while reading.
        let weights = open();
        let (t, _) = (weights.root() / "encoder" / "dense")
            .projection("weight", 3, 2, true)
            .unwrap();
        assert_eq!(
            Vec::<f32>::try_from(&t.flatten(0, -1)).unwrap(),
            vec![1.0, 4.0, 2.0, 5.0, 3.0, 6.0]
        );

        let weights = open();
        let err = (weights.root() / "encoder" / "dense")
            .param("weight", &[3, 2])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("encoder.dense.weight")
                && err.contains("[2, 3]")
                && err.contains("[3, 2]"),
            "{err}"
        );

        let weights = open();
        let _pooler = (weights.root() / "pooler").param("weight", &[2]).unwrap();
        let err = weights.finish().unwrap_err().to_string();
        assert!(
            err.contains("pooler.weight") && err.contains("missing"),
            "{err}"
        );

        // bf16: read straight into bfloat16.
        let weights = Weights::from_checkpoint(
            Checkpoint::from_file(&file).unwrap(),
            tch::Device::Cpu,
            crate::Dtype::Bf16,
        )
        .unwrap();
        let t = (weights.root() / "encoder" / "LayerNorm")
            .param("weight", &[2])
            .unwrap();
        assert_eq!(t.kind(), Kind::BFloat16);

        // A truncated file is refused with a message, not a panic.
        let bytes = std::fs::read(&file).unwrap();
        let cut = dir.join("cut.safetensors");
        std::fs::write(&cut, &bytes[..bytes.len() - 5]).unwrap();
        let err = Checkpoint::from_file(&cut).err().unwrap().to_string();
        assert!(err.contains("truncated or corrupt"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
