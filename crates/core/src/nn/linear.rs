//! Dense projections and embedding tables, with the weight layouts checkpoints use.

use crate::dtype::Dtype;
use crate::Result;
use tch::nn::{Path, VarStore};
use tch::{Device, Kind, Tensor};

/// How a checkpoint stores a projection's weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `[out, in]`, PyTorch's `nn.Linear` (BERT, T5), and every projection after
    /// [`Linear::prepare`].
    OutIn,
    /// `[in, out]`, GPT-2's `Conv1D`, as loaded; [`Linear::prepare`] re-stores it `[out, in]`.
    InOut,
}

/// Rows up to which a projection runs as a split matrix-vector product (see
/// [`Linear::forward`]): the token-by-token decoding case. Above it, one GEMM.
const SPLIT_MAX_ROWS: i64 = 4;

/// A dense projection `y = x·Wᵀ + b`.
///
/// After loading, [`Linear::prepare`] puts every weight in the `[out, in]` layout and, for
/// [`Dtype::Int8`], quantizes it. [`Linear::forward`] then picks the kernel by the number of
/// rows: decoding one token per sequence reads the whole matrix to produce a few numbers, so
/// it is bound by memory bandwidth, and the matrix is cut into row blocks that libtorch's
/// batched product streams on all threads at once (its plain matrix-vector product uses one);
/// larger inputs are compute-bound and go to oneDNN's GEMM.
#[derive(Debug)]
pub struct Linear {
    /// The weight: `[out, in]` (`[in, out]` for a `Conv1D` before [`Linear::prepare`]);
    /// int8 once quantized.
    pub weight: Tensor,
    /// The optional bias `[out]`.
    pub bias: Option<Tensor>,
    layout: Layout,
    /// `[out]` f32, the scale of each output channel of an int8 weight.
    scales: Option<Tensor>,
    /// The weight belongs to another module (a tied embedding table): never changed in place.
    tied: bool,
}

impl Linear {
    /// An `nn.Linear` named `p` (`p.weight` `[out, in]`, `p.bias` `[out]` when `bias`).
    pub fn new(p: &Path, in_dim: i64, out_dim: i64, bias: bool) -> Result<Self> {
        Ok(Linear {
            weight: p.f_zeros_no_train("weight", &[out_dim, in_dim])?,
            bias: if bias {
                Some(p.f_zeros_no_train("bias", &[out_dim])?)
            } else {
                None
            },
            layout: Layout::OutIn,
            scales: None,
            tied: false,
        })
    }

    /// A GPT-2 `Conv1D` named `p` (`p.weight` `[in, out]`, `p.bias` `[out]`).
    pub fn conv1d(p: &Path, in_dim: i64, out_dim: i64) -> Result<Self> {
        Ok(Linear {
            weight: p.f_zeros_no_train("weight", &[in_dim, out_dim])?,
            bias: Some(p.f_zeros_no_train("bias", &[out_dim])?),
            layout: Layout::InOut,
            scales: None,
            tied: false,
        })
    }

    /// A projection that reuses another module's weight `[out, in]` (tied embeddings).
    pub fn tied(weight: &Tensor) -> Self {
        Linear {
            weight: weight.shallow_clone(),
            bias: None,
            layout: Layout::OutIn,
            scales: None,
            tied: true,
        }
    }

    /// Make the loaded weight ready for inference in `dtype`: re-store a `Conv1D` weight
    /// `[out, in]` (in place, so the memory is not doubled), and for [`Dtype::Int8`] replace
    /// it by int8 values with one scale per output channel (`w ≈ q·scale`, `|q| ≤ 127`).
    /// A tied weight keeps its table intact: the quantized copy is the head's own.
    /// (bfloat16 is a conversion of every parameter, done by [`prepare`].)
    pub fn prepare(&mut self, dtype: Dtype) -> Result<()> {
        if self.layout == Layout::InOut {
            // A Conv1D's own weight (never tied): changed in place for every handle.
            transpose_in_place(&mut self.weight)?;
            self.layout = Layout::OutIn;
        }
        if dtype == Dtype::Int8 && self.scales.is_none() {
            let (q, scales) = quantize_rows(&self.weight)?;
            self.replace_weight(q)?;
            self.scales = Some(scales);
        }
        Ok(())
    }

    /// Point this projection at `new`: in place (freeing the old values, which the store and
    /// every shallow copy share), or, for a tied weight, by taking a handle of its own.
    fn replace_weight(&mut self, new: Tensor) -> Result<()> {
        if self.tied {
            self.weight = new;
        } else {
            tch::no_grad(|| self.weight.f_set_data(&new))?;
        }
        Ok(())
    }

    /// `[..., in] → [..., out]`.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let mut out_shape = x.size();
        let in_dim = out_shape.pop().unwrap_or(1);
        if self.layout == Layout::InOut {
            // A Conv1D not yet prepared.
            let y = x.matmul(&self.weight);
            return match &self.bias {
                Some(b) => y + b,
                None => y,
            };
        }
        let rows = out_shape.iter().product::<i64>();
        let x2 = x.reshape([rows, in_dim]); // [rows, in]
        let y = match &self.scales {
            Some(scales) => self.forward_int8(&x2, scales),
            None if x.device() != Device::Cpu => x2.linear(&self.weight, self.bias.as_ref()),
            // (bfloat16 goes to oneDNN at every size: its kernels use all threads.)
            None if x.kind() != Kind::Float => x2.linear(&self.weight, self.bias.as_ref()),
            None if rows <= SPLIT_MAX_ROWS => self.forward_split(&x2),
            None if has_onednn() => x2
                .to_mkldnn()
                .mkldnn_linear(&self.weight, self.bias.as_ref())
                .to_dense(None::<Kind>, false),
            None => x2.linear(&self.weight, self.bias.as_ref()),
        }; // [rows, out]
        out_shape.push(self.weight.size()[0]);
        y.reshape(out_shape.as_slice())
    }

    /// Few rows: `x·Wᵀ` as `P` matrix-vector products over row blocks of `W`, one batched
    /// call that libtorch spreads over its threads. `x`: `[rows, in]` → `[rows, out]`.
    fn forward_split(&self, x: &Tensor) -> Tensor {
        let (out, in_dim) = (self.weight.size()[0], self.weight.size()[1]);
        let rows = x.size()[0];
        let p = i64::from(tch::get_num_threads()).max(2).min(out);
        let main = out / p * p; // rows of W in the blocks; the few left over go alone
        let xt = x.tr(); // [in, rows]
        let blocks = self.weight.narrow(0, 0, main).view([p, main / p, in_dim]); // [p, out/p, in]
        let y = blocks
            .bmm(&xt.unsqueeze(0).expand([p, in_dim, rows], false)) // [p, out/p, rows]
            .reshape([main, rows]);
        let y = if main < out {
            let rest = self.weight.narrow(0, main, out - main).mm(&xt); // [out - main, rows]
            Tensor::cat(&[y, rest], 0)
        } else {
            y
        };
        let mut y = y.tr().contiguous(); // [rows, out]
        if let Some(b) = &self.bias {
            y += b;
        }
        y
    }

    /// Dynamic int8: each row of `x` is quantized with its own scale, multiplied by the int8
    /// weight in integer arithmetic, and rescaled. `x`: `[rows, in]` → `[rows, out]` f32.
    fn forward_int8(&self, x: &Tensor, scales: &Tensor) -> Tensor {
        let x = x.to_kind(Kind::Float);
        let row_scale = x.abs().amax([1], true).clamp_min(1e-12) / 127.0; // [rows, 1]
        let q = (&x / &row_scale)
            .round()
            .clamp(-127, 127)
            .to_kind(Kind::Int8);
        let acc = q.internal_int_mm(&self.weight.tr()); // [rows, out] int32
        let y = acc.to_kind(Kind::Float) * row_scale * scales;
        match &self.bias {
            Some(b) => y + b,
            None => y,
        }
    }
}

thread_local! {
    /// [`transpose_in_place`]'s buffer, as large as the largest matrix transposed so far;
    /// [`prepare`] empties it when it is done.
    static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Re-store a `[rows, cols]` weight as `[cols, rows]` in its own memory. For a contiguous f32
/// CPU tensor (every checkpoint loaded there) the transposition goes through a scratch buffer
/// reused from one call to the next: a fresh allocation per matrix would cost more in page
/// faults than the transposition itself (measured on GPT-2: 350 → 120 ms for its 48 Conv1Ds).
fn transpose_in_place(w: &mut Tensor) -> Result<()> {
    let size = w.size();
    if size.len() != 2 || w.device() != Device::Cpu || w.kind() != Kind::Float {
        let t = w.f_t_copy()?.f_contiguous()?;
        return Ok(tch::no_grad(|| w.f_set_data(&t))?);
    }
    if !w.is_contiguous() {
        let c = w.f_contiguous()?;
        tch::no_grad(|| w.f_set_data(&c))?;
    }
    let (rows, cols) = (size[0], size[1]);
    let n = (rows * cols) as usize;
    // SAFETY: `w` is a contiguous f32 CPU tensor of `n` elements, and nothing else reads or
    // writes it while this runs (weights are prepared once, before any forward pass).
    let data = unsafe { std::slice::from_raw_parts_mut(w.data_ptr() as *mut f32, n) };
    SCRATCH.with_borrow_mut(|scratch| {
        scratch.resize(n.max(scratch.len()), 0.0);
        let scratch = &mut scratch[..n];
        transpose::transpose(data, scratch, cols as usize, rows as usize);
        data.copy_from_slice(scratch);
    });
    let view = w.f_view([cols, rows])?;
    Ok(tch::no_grad(|| w.f_set_data(&view))?)
}

/// Symmetric int8 quantization of each row of a `[rows, cols]` weight: the row's largest
/// magnitude maps to 127, `q = round(w / scale)` (ties to even, as torch rounds). Returns the
/// int8 `[rows, cols]` values and the f32 `[rows]` scales. On the CPU in f32 it is one pass
/// over the weight without temporaries (the tensor-op version below makes five and copies the
/// matrix twice, which is most of an int8 model's load time).
fn quantize_rows(w: &Tensor) -> Result<(Tensor, Tensor)> {
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

/// Prepare a loaded model for inference in `dtype`: every parameter of `vs` converted to
/// bfloat16 for [`Dtype::Bf16`], then each of `linears` re-laid-out and, for
/// [`Dtype::Int8`], quantized (see [`Linear::prepare`]).
pub fn prepare<'a>(
    vs: &mut VarStore,
    linears: impl IntoIterator<Item = &'a mut Linear>,
    dtype: Dtype,
) -> Result<()> {
    if dtype == Dtype::Int8 && vs.device() != Device::Cpu {
        // libtorch's integer products take ≥ 17 rows on CUDA (a decoding step has one) and do
        // not exist on MPS.
        return Err(crate::Error::Unsupported(format!(
            "--dtype int8 runs on the CPU only, not on {:?}: use --dtype bf16 on a GPU, or \
             --device cpu",
            vs.device()
        )));
    }
    if dtype == Dtype::Bf16 {
        vs.bfloat16();
    }
    let prepared = linears
        .into_iter()
        .try_for_each(|linear| linear.prepare(dtype));
    SCRATCH.with_borrow_mut(|scratch| *scratch = Vec::new());
    prepared?;
    if dtype != Dtype::F32 {
        // The f32 weights just replaced are free now; keep them out of the process's memory.
        crate::device::release_free_memory();
    }
    Ok(())
}

/// A lookup table from ids to vectors (`p.weight` `[num, dim]`).
#[derive(Debug)]
pub struct Embedding {
    /// `[num, dim]`.
    pub weight: Tensor,
}

impl Embedding {
    /// An `nn.Embedding` named `p`.
    pub fn new(p: &Path, num: i64, dim: i64) -> Result<Self> {
        Ok(Embedding::from_weight(
            p.f_zeros_no_train("weight", &[num, dim])?,
        ))
    }

    /// A table over an existing `[num, dim]` weight (shared embeddings, as in T5).
    pub fn from_weight(weight: Tensor) -> Self {
        Embedding { weight }
    }

    /// `[...] ids → [..., dim]`.
    pub fn forward(&self, ids: &Tensor) -> Tensor {
        Tensor::embedding(&self.weight, ids, -1, false, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: &Tensor, b: &Tensor, tol: f64) -> bool {
        a.size() == b.size() && a.allclose(b, tol, tol, false)
    }

    /// Every kernel `forward` chooses (split matrix-vector, oneDNN GEMM, a block count that
    /// does not divide the output width, a Conv1D before and after `prepare`) computes
    /// `x·Wᵀ + b`.
    #[test]
    fn every_path_computes_x_times_weight_transposed_plus_bias() {
        let vs = VarStore::new(Device::Cpu);
        let mut conv = Linear::conv1d(&vs.root().sub("c"), 6, 7).unwrap();
        tch::no_grad(|| {
            conv.weight
                .copy_(&Tensor::randn([6, 7], (Kind::Float, Device::Cpu)));
            conv.bias
                .as_mut()
                .unwrap()
                .copy_(&Tensor::randn([7], (Kind::Float, Device::Cpu)));
        });
        let (w, b) = (conv.weight.copy(), conv.bias.as_ref().unwrap().copy());
        for rows in [1i64, 3, 4, 5, 40] {
            let x = Tensor::randn([rows, 2, 6], (Kind::Float, Device::Cpu));
            let expected = x.matmul(&w) + &b;
            assert!(
                close(&conv.forward(&x), &expected, 1e-5),
                "conv1d, {rows} rows"
            );
        }
        conv.prepare(Dtype::F32).unwrap();
        assert_eq!(conv.weight.size(), vec![7, 6]);
        for rows in [1i64, 2, 3, 5, 40] {
            let x = Tensor::randn([rows, 6], (Kind::Float, Device::Cpu));
            let expected = x.matmul(&w) + &b;
            assert!(
                close(&conv.forward(&x), &expected, 1e-5),
                "prepared, {rows} rows"
            );
        }
    }

    /// Int8 projections stay within the error of their quantization, and a tied table is
    /// left untouched when its head is quantized.
    #[test]
    fn int8_is_close_and_leaves_a_tied_table_alone() {
        let table = Tensor::randn([50, 16], (Kind::Float, Device::Cpu));
        let before = table.copy();
        let mut head = Linear::tied(&table);
        head.prepare(Dtype::Int8).unwrap();
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
            let err = (head.forward(&x) - &exact).abs().max().double_value(&[]);
            let scale = exact.abs().max().double_value(&[]);
            assert!(err < 0.03 * scale, "{rows} rows: error {err} of {scale}");
        }
    }
}
