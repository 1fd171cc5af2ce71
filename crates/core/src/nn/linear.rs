//! Dense projections and embedding tables, read from the checkpoint in the format the model
//! computes in.

use crate::weights::WeightPath;
use crate::{Dtype, Error, Result};
use tch::{Device, Kind, Tensor};

/// Rows up to which a projection runs as a split matrix-vector product (see
/// [`Linear::forward`]): the token-by-token decoding case. Above it, one GEMM.
const SPLIT_MAX_ROWS: i64 = 4;

/// A dense projection `y = x·Wᵀ + b`.
///
/// The weight is always stored `[out, in]` (a GPT-2 `Conv1D`, stored `[in, out]`, is
/// transposed while it is read) and, for [`Dtype::Int8`], quantized while it is read: every
/// projection of a model is built through [`Linear::new`] or [`Linear::conv1d`], so none can
/// be missed. [`Linear::forward`] picks the kernel by the number of rows: decoding one token
/// per sequence reads the whole matrix to produce a few numbers, so it is bound by memory
/// bandwidth, and the matrix is cut into row blocks that libtorch's batched product streams
/// on all threads at once (its plain matrix-vector product uses one on some CPUs); larger
/// inputs are compute-bound and go to oneDNN's GEMM.
#[derive(Debug)]
pub struct Linear {
    /// The weight `[out, in]`: float, or int8 when quantized.
    pub weight: Tensor,
    /// The optional bias `[out]`.
    pub bias: Option<Tensor>,
    /// `[out]` f32, the scale of each output channel of an int8 weight.
    scales: Option<Tensor>,
}

impl Linear {
    /// An `nn.Linear` named `p` (`p.weight` `[out, in]`, `p.bias` `[out]` when `bias`).
    pub fn new(p: &WeightPath, in_dim: i64, out_dim: i64, bias: bool) -> Result<Self> {
        let (weight, scales) = p.projection("weight", out_dim, in_dim, false)?;
        let bias = bias.then(|| p.param("bias", &[out_dim])).transpose()?;
        Ok(Linear {
            weight,
            bias,
            scales,
        })
    }

    /// A GPT-2 `Conv1D` named `p` (`p.weight` stored `[in, out]`, `p.bias` `[out]`).
    pub fn conv1d(p: &WeightPath, in_dim: i64, out_dim: i64) -> Result<Self> {
        let (weight, scales) = p.projection("weight", out_dim, in_dim, true)?;
        Ok(Linear {
            weight,
            bias: Some(p.param("bias", &[out_dim])?),
            scales,
        })
    }

    /// A projection that reuses another module's weight `[out, in]` (a tied embedding table).
    /// For [`Dtype::Int8`] the head quantizes a copy of its own and the table stays intact.
    pub fn tied(weight: &Tensor, dtype: Dtype) -> Result<Self> {
        if dtype == Dtype::Int8 {
            let (q, scales) = quantize_rows(weight)?;
            return Ok(Linear {
                weight: q,
                bias: None,
                scales: Some(scales),
            });
        }
        Ok(Linear {
            weight: weight.shallow_clone(),
            bias: None,
            scales: None,
        })
    }

    /// A projection over given tensors (`weight` `[out, in]`), not quantized.
    pub fn from_tensors(weight: Tensor, bias: Option<Tensor>) -> Self {
        Linear {
            weight,
            bias,
            scales: None,
        }
    }

    /// Output width.
    pub fn out_features(&self) -> i64 {
        self.weight.size()[0]
    }

    /// `[..., in] → [..., out]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut out_shape = x.size();
        let in_dim = out_shape.pop().unwrap_or(1);
        let expected = self.weight.size().get(1).copied().unwrap_or(0);
        if in_dim != expected {
            return Err(Error::Input(format!(
                "a projection of {expected} inputs was given {in_dim}"
            )));
        }
        let rows = out_shape.iter().product::<i64>();
        let x2 = x.f_reshape([rows, in_dim])?; // [rows, in]
        let y = match &self.scales {
            Some(scales) => self.forward_int8(&x2, scales)?,
            None if x.device() != Device::Cpu => x2.f_linear(&self.weight, self.bias.as_ref())?,
            // (bfloat16 goes to oneDNN at every size: its kernels use all threads.)
            None if x.kind() != Kind::Float => x2.f_linear(&self.weight, self.bias.as_ref())?,
            None if rows <= SPLIT_MAX_ROWS => self.forward_split(&x2)?,
            None if has_onednn() => x2
                .f_to_mkldnn(None::<Kind>)?
                .f_mkldnn_linear(&self.weight, self.bias.as_ref())?
                .f_to_dense(None::<Kind>, false)?,
            None => x2.f_linear(&self.weight, self.bias.as_ref())?,
        }; // [rows, out]
        out_shape.push(self.weight.size()[0]);
        Ok(y.f_reshape(out_shape.as_slice())?)
    }

    /// Few rows: `x·Wᵀ` as `P` matrix-vector products over row blocks of `W`, one batched
    /// call that libtorch spreads over its threads. `x`: `[rows, in]` → `[rows, out]`.
    fn forward_split(&self, x: &Tensor) -> Result<Tensor> {
        let (out, in_dim) = (self.weight.size()[0], self.weight.size()[1]);
        let rows = x.size()[0];
        let p = i64::from(tch::get_num_threads()).max(2).min(out);
        let main = out / p * p; // rows of W in the blocks; the few left over go alone
        let xt = x.f_tr()?; // [in, rows]
        let blocks = self
            .weight
            .f_narrow(0, 0, main)?
            .f_view([p, main / p, in_dim])?; // [p, out/p, in]
        let y = blocks
            .f_bmm(&xt.f_unsqueeze(0)?.f_expand([p, in_dim, rows], false)?)? // [p, out/p, rows]
            .f_reshape([main, rows])?;
        let y = if main < out {
            let rest = self.weight.f_narrow(0, main, out - main)?.f_mm(&xt)?; // [out - main, rows]
            Tensor::f_cat(&[y, rest], 0)?
        } else {
            y
        };
        let y = y.f_tr()?.f_contiguous()?; // [rows, out]
        Ok(match &self.bias {
            Some(b) => y.f_add(b)?,
            None => y,
        })
    }

    /// Dynamic int8: each row of `x` is quantized with its own scale, multiplied by the int8
    /// weight in integer arithmetic, and rescaled. `x`: `[rows, in]` → `[rows, out]` f32.
    fn forward_int8(&self, x: &Tensor, scales: &Tensor) -> Result<Tensor> {
        let x = x.f_to_kind(Kind::Float)?;
        let row_scale = x.f_abs()?.f_amax([1], true)?.f_clamp_min(1e-12)? / 127.0; // [rows, 1]
        let q = x
            .f_div(&row_scale)?
            .f_round()?
            .f_clamp(-127, 127)?
            .f_to_kind(Kind::Int8)?;
        let acc = q.f_internal_int_mm(&self.weight.f_tr()?)?; // [rows, out] int32
        let y = acc
            .f_to_kind(Kind::Float)?
            .f_mul(&row_scale)?
            .f_mul(scales)?;
        Ok(match &self.bias {
            Some(b) => y.f_add(b)?,
            None => y,
        })
    }
}

/// Symmetric int8 quantization of each row of a `[rows, cols]` weight: the row's largest
/// magnitude maps to 127, `q = round(w / scale)` (ties to even, as torch rounds). Returns the
/// int8 `[rows, cols]` values and the f32 `[rows]` scales. On the CPU in f32 it is one pass
/// over the weight without temporaries (the tensor-op version below makes five and copies the
/// matrix twice, which is most of an int8 model's load time).
pub(crate) fn quantize_rows(w: &Tensor) -> Result<(Tensor, Tensor)> {
    let size = w.size();
    if size.len() != 2 || w.device() != Device::Cpu || w.kind() != Kind::Float {
        let w = w.f_to_kind(Kind::Float)?;
        let scales = w.f_abs()?.f_amax([1], false)?.f_clamp_min(1e-12)? / 127.0; // [rows]
        let mut q = w.f_div(&scales.f_unsqueeze(1)?)?;
        let q = q.f_round_()?.f_clamp_(-127, 127)?.f_to_kind(Kind::Int8)?;
        return Ok((q, scales));
    }
    let (rows, cols) = (size[0], size[1]);
    let w = w.f_contiguous()?;
    let q = Tensor::f_empty([rows, cols], (Kind::Int8, Device::Cpu))?;
    let scales = Tensor::f_empty([rows], (Kind::Float, Device::Cpu))?;
    let n = (rows * cols) as usize;
    // SAFETY: `w`, `q` and `scales` are distinct contiguous CPU tensors of the element types
    // and lengths given, alive for the whole block, and nothing else touches them meanwhile.
    let (src, dst, scale_of) = unsafe {
        (
            std::slice::from_raw_parts(w.data_ptr() as *const f32, n),
            std::slice::from_raw_parts_mut(q.data_ptr() as *mut i8, n),
            std::slice::from_raw_parts_mut(scales.data_ptr() as *mut f32, rows as usize),
        )
    };
    // Rows in one block per thread.
    let cols = cols as usize;
    let threads = usize::try_from(tch::get_num_threads()).unwrap_or(1).max(1);
    let block = (rows as usize).div_ceil(threads).max(1);
    std::thread::scope(|s| {
        for ((src, dst), scales) in src
            .chunks(block * cols)
            .zip(dst.chunks_mut(block * cols))
            .zip(scale_of.chunks_mut(block))
        {
            s.spawn(move || quantize_block(src, dst, scales, cols));
        }
    });
    Ok((q, scales))
}

/// [`quantize_rows`] on the rows of `cols` values in `src`, into `dst` and `scales`.
fn quantize_block(src: &[f32], dst: &mut [i8], scales: &mut [f32], cols: usize) {
    // Adding and subtracting 1.5·2²³ rounds a float of magnitude < 2²² to the nearest integer,
    // ties to even, in plain arithmetic that vectorizes (`round_ties_even` is a library call
    // per element on baseline x86-64).
    const ROUND: f32 = 12_582_912.0;
    for ((row, out), scale) in src
        .chunks_exact(cols)
        .zip(dst.chunks_exact_mut(cols))
        .zip(scales.iter_mut())
    {
        *scale = row.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12) / 127.0;
        for (o, v) in out.iter_mut().zip(row) {
            let x = (v / *scale).clamp(-127.0, 127.0);
            *o = ((x + ROUND) - ROUND) as i8;
        }
    }
}

/// Whether libtorch was built with oneDNN (MKL-DNN), checked once.
fn has_onednn() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(tch::utils::has_mkldnn)
}

/// A lookup table from ids to vectors (`p.weight` `[num, dim]`).
#[derive(Debug)]
pub struct Embedding {
    /// `[num, dim]`.
    pub weight: Tensor,
    /// What its ids are and which config field bounds them, for errors
    /// (`("token id", "vocab_size")`).
    names: Option<(&'static str, &'static str)>,
}

impl Embedding {
    /// An `nn.Embedding` named `p`, in the model's float format.
    pub fn new(p: &WeightPath, num: i64, dim: i64) -> Result<Self> {
        Ok(Embedding::from_weight(p.param("weight", &[num, dim])?))
    }

    /// A table over an existing `[num, dim]` weight (shared embeddings, as in T5).
    pub fn from_weight(weight: Tensor) -> Self {
        Embedding {
            weight,
            names: None,
        }
    }

    /// Name the ids and the config field that bounds them in errors:
    /// `.indexed_by("position", "n_positions")`.
    pub fn indexed_by(mut self, what: &'static str, limit: &'static str) -> Self {
        self.names = Some((what, limit));
        self
    }

    /// Rows in the table (the vocabulary size of a token embedding).
    pub fn num_embeddings(&self) -> i64 {
        self.weight.size()[0]
    }

    /// `[...] ids → [..., dim]`. An id outside the table is an error naming it (libtorch
    /// would abort the process).
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let limit = self.num_embeddings();
        if ids.numel() > 0 {
            let (lo, hi) = (ids.f_min()?.int64_value(&[]), ids.f_max()?.int64_value(&[]));
            if lo < 0 || hi >= limit {
                let bad = if lo < 0 { lo } else { hi };
                return Err(Error::Input(match self.names {
                    Some((what, field)) => format!(
                        "{what} {bad} is outside the model's range 0..{limit} ({field} = {limit})"
                    ),
                    None => format!("id {bad} is outside the embedding table of {limit} rows"),
                }));
            }
        }
        Ok(Tensor::f_embedding(&self.weight, ids, -1, false, false)?)
    }
}

// SAFETY (the loaded-model contract, docs/ARCHITECTURE.md "Loaded model and request"):
// tch's `Tensor` is not `Sync` because a shared handle could be mutated in place. The tensors
// of `Linear` and `Embedding` are written only while the model is being built (by the loader
// in `crate::weights`, which owns them exclusively then); after construction every method
// takes `&self` and calls only out-of-place libtorch ops (`f_linear`, `f_bmm`,
// `f_embedding`, …), which read the weights without touching their storage, version
// counter or autograd state (parameters never require grad). Concurrent reads of one
// tensor from several threads are safe in libtorch. Nothing in the workspace mutates a
// parameter through a handle obtained from `&self` (keep it so: in-place ops on weights
// belong in the loader, before the model is shared).
unsafe impl Sync for Linear {}
// SAFETY: as for `Linear` above.
unsafe impl Sync for Embedding {}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: &Tensor, b: &Tensor, tol: f64) -> bool {
        a.size() == b.size() && a.allclose(b, tol, tol, false)
    }

    /// Every kernel `forward` chooses (split matrix-vector, oneDNN GEMM, a block count that
    /// does not divide the output width) computes `x·Wᵀ + b`.
    #[test]
    fn every_path_computes_x_times_weight_transposed_plus_bias() {
        let w = Tensor::randn([7, 6], (Kind::Float, Device::Cpu));
        let b = Tensor::randn([7], (Kind::Float, Device::Cpu));
        let linear = Linear::from_tensors(w.copy(), Some(b.copy()));
        for rows in [1i64, 2, 3, 4, 5, 40] {
            let x = Tensor::randn([rows, 2, 6], (Kind::Float, Device::Cpu));
            let expected = x.matmul(&w.tr()) + &b;
            assert!(
                close(&linear.forward(&x).unwrap(), &expected, 1e-5),
                "{rows} rows"
            );
        }
        let err = linear
            .forward(&Tensor::zeros([1, 5], (Kind::Float, Device::Cpu)))
            .unwrap_err()
            .to_string();
        assert!(err.contains("6 inputs") && err.contains("5"), "{err}");
    }

    /// Int8 projections stay within the error of their quantization, and a tied table is
    /// left untouched when its head is quantized.
    #[test]
    fn int8_is_close_and_leaves_a_tied_table_alone() {
        let table = Tensor::randn([50, 16], (Kind::Float, Device::Cpu));
        let before = table.copy();
        let head = Linear::tied(&table, Dtype::Int8).unwrap();
        assert_eq!(head.weight.kind(), Kind::Int8);
        // The one-pass CPU quantization gives exactly what the tensor ops give.
        let scales = table.abs().amax([1], false).clamp_min(1e-12) / 127.0;
        let q = (&table / scales.unsqueeze(1))
            .round()
            .clamp(-127, 127)
            .to_kind(Kind::Int8);
        assert!(
            head.weight.equal(&q),
            "int8 values differ from torch's rounding"
        );
        assert!(close(&table, &before, 0.0), "the tied table changed");
        for rows in [1i64, 7] {
            let x = Tensor::randn([rows, 16], (Kind::Float, Device::Cpu));
            let exact = x.matmul(&before.tr());
            let err = (head.forward(&x).unwrap() - &exact)
                .abs()
                .max()
                .double_value(&[]);
            let scale = exact.abs().max().double_value(&[]);
            assert!(err < 0.03 * scale, "{rows} rows: error {err} of {scale}");
        }
    }

    #[test]
    fn embedding_ids_out_of_range_are_errors() {
        let e = Embedding::from_weight(Tensor::zeros([4, 2], (Kind::Float, Device::Cpu)));
        let ids = Tensor::from_slice(&[0i64, 4]);
        let err = e.forward(&ids).unwrap_err().to_string();
        assert!(err.contains("id 4") && err.contains("4 rows"), "{err}");
        let named =
            Embedding::from_weight(e.weight.shallow_clone()).indexed_by("position", "n_positions");
        let err = named.forward(&ids).unwrap_err().to_string();
        assert!(
            err.contains("position 4") && err.contains("n_positions = 4"),
            "{err}"
        );
        assert!(e.forward(&Tensor::from_slice(&[-1i64])).is_err());
        assert_eq!(
            e.forward(&Tensor::from_slice(&[3i64])).unwrap().size(),
            [1, 2]
        );
    }
}
