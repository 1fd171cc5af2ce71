//! A token table stored in panels, for the output head tied to it.
//!
//! A decoder's output head multiplies a few rows (a batch's, or its beams') by the token table
//! `[vocab, dim]`, the largest weight of a small model (OPUS-MT's 58,101 × 512, GPT-2's
//! 50,257 × 768). The library's GEMM (MKL) first copies the weight into panels — a few weight
//! rows with their columns interleaved, so that one vector load takes one column of each —
//! and then multiplies the panels, on every call; at 8–64 rows on a table this tall the copy
//! is a third to half of the call. The table stored in panels once, every call is the
//! multiplication alone:
//!
//! ```text
//! panel p = rows 48p .. 48p+47 of W, column after column:   P[p][k][l] = W[48p + l, k]
//! y[r, 48p + l] = Σ_k x[r, k] · P[p][k][l]
//!                 └ per k: three 16-wide vectors of P[p][k], x[r, k] broadcast to each,
//!                   a register tile of 8 rows r × 48 outputs (24 accumulators)
//! ```
//!
//! The panels take the table's own memory: panel `p` holds exactly the elements that rows
//! `48p .. 48p+47` held, so each is rearranged in place ([`Panels::rearrange`]) and the model
//! still keeps one table. The last `vocab mod 48` rows stay as stored; a zero-padded copy of
//! them (one panel, `dim` × 48 floats) serves the product. A token lookup reads its row out of
//! its panel (a stride of 48 floats) or from the rows left as stored ([`Panels::lookup`]).
//!
//! Every output is one sum over `k` in order, then the bias: it differs from the library's
//! result only in the order of the additions. Which heads are stored so is a rule, not a
//! measurement (both layouts at once would hold the table twice): an f32 table tied to its
//! head, on a CPU with AVX-512, in a model loaded for inference, unless `TRIDENT_KERNELS`
//! fixes the library's product ([`wanted`]). The rule stands on what the kernel skips (the
//! library's per-call copy), and was measured on an Intel Xeon (family 6 model 207, 2 threads),
//! against MKL's GEMM on the same heads: 0.95–2.1× (level at 1–2 rows on T5's 32,128-row
//! table, 1.9–2.1× at 8 rows on OPUS-MT's and GPT-2's, 0.95–1.15× at 256; BENCHMARKS.md).

use super::kernels::{self, Kernel, Policy};
use super::parallel::{for_each_task, rows_per_thread, SharedMut};
use crate::{Error, Result};
use std::sync::Mutex;
use tch::{Device, Kind, Tensor};

/// Weight rows per panel: three AVX-512 vectors of f32.
pub const WIDTH: usize = 48;
/// Input rows per register tile: 8 rows × 3 vectors = 24 accumulators of the 32 registers.
const TILE_ROWS: usize = 8;
/// Panels per task of the product above [`STREAM_ROWS`] rows (8 × 48 rows × 512 columns ×
/// 4 bytes = 786 KB of table): enough work per task to dwarf its hand-out, and some hundred
/// tasks to balance the threads.
const PANELS_PER_TASK: usize = 8;
/// Input rows up to which the product is bound by reading the table: each thread then takes
/// one run of consecutive panels, one long stream through memory (as `streamed` does).
const STREAM_ROWS: usize = 4;
/// Input rows per task: a task's panels are read from memory once per block of rows, and
/// stay in the second-level cache while its tiles pass.
const ROWS_PER_TASK: usize = 256;

/// Whether this CPU runs the panel product: x86-64 with AVX-512F, the streamed product's
/// own requirement ([`super::streamed::available`]).
pub fn available() -> bool {
    super::streamed::available()
}

/// Whether a tied head over `table` is stored in panels: an f32 table on the CPU, not being
/// trained, on a CPU with AVX-512, and a kernel policy that lets Trident's kernels run
/// (`TRIDENT_KERNELS` `auto` or `streamed`; `fixed` and the library kernels keep the table as
/// rows).
pub fn wanted(table: &Tensor) -> bool {
    let policy_allows = matches!(
        kernels::policy(),
        Policy::Measure | Policy::Force(Kernel::Streamed)
    );
    policy_allows
        && available()
        && table.kind() == Kind::Float
        && table.device() == Device::Cpu
        && table.dim() == 2
        && table.is_contiguous()
        && !table.requires_grad()
}

/// A `[vocab, dim]` f32 table whose full panels were rearranged in its own memory.
#[derive(Debug)]
pub struct Panels {
    /// The table's memory: `vocab / 48` panels (`[dim, 48]` each), then the last
    /// `vocab mod 48` rows as stored.
    table: Tensor,
    /// The last `vocab mod 48` rows as one zero-padded panel `[dim, 48]` (empty if none).
    tail: Vec<f32>,
    vocab: usize,
    dim: usize,
}

/// The tables stored in panels in this process: `(vocab, dim)`, for [`report`].
static STORED: Mutex<Vec<(usize, usize)>> = Mutex::new(Vec::new());

/// One line per table this process stores in panels, for `trident doctor` and the benchmark
/// log.
pub fn report() -> Vec<String> {
    let mut stored = STORED.lock().map(|s| s.clone()).unwrap_or_default();
    stored.sort_unstable();
    stored.dedup();
    stored
        .iter()
        .map(|(vocab, dim)| {
            format!(
                "f32 {vocab}x{dim} token table tied to its head: stored in panels of {WIDTH} \
                 rows, the head's product without the library's per-call packing (rule: f32, \
                 AVX-512, TRIDENT_KERNELS auto or streamed)"
            )
        })
        .collect()
}

impl Panels {
    /// Rearrange `table` (`[vocab, dim]` f32, contiguous, on the CPU) into panels, in place.
    ///
    /// Afterwards the tensor's memory no longer reads as rows: every holder of `table` must
    /// read it through the returned `Panels` ([`crate::nn::Embedding`] and the tied
    /// [`crate::nn::Linear`] share it). Called while the model is built, before any thread
    /// reads the table.
    pub fn rearrange(table: &Tensor) -> Result<Panels> {
        let size = table.size();
        if table.kind() != Kind::Float
            || table.device() != Device::Cpu
            || size.len() != 2
            || !table.is_contiguous()
        {
            return Err(Error::Input(format!(
                "panels hold a contiguous CPU f32 table [vocab, dim]; this one is {:?} {size:?} \
                 on {:?}",
                table.kind(),
                table.device()
            )));
        }
        let (vocab, dim) = (size[0] as usize, size[1] as usize);
        let full = vocab / WIDTH;
        let data = SharedMut(if vocab * dim == 0 {
            std::ptr::null_mut()
        } else {
            table.data_ptr() as *mut f32
        });
        const PANELS_PER_PASS: usize = 16;
        for_each_task(full.div_ceil(PANELS_PER_PASS), &|t| {
            let mut rows = vec![0f32; WIDTH * dim];
            for p in t * PANELS_PER_PASS..((t + 1) * PANELS_PER_PASS).min(full) {
                // SAFETY: panel p's elements (rows 48p..48p+47), which this task alone
                // touches; the table outlives the loop, and nothing reads it meanwhile (see
                // the function's contract).
                let panel = unsafe {
                    std::slice::from_raw_parts_mut(data.get().add(p * WIDTH * dim), WIDTH * dim)
                };
                rows.copy_from_slice(panel); // [48, dim]
                for (k, column) in panel.chunks_exact_mut(WIDTH).enumerate() {
                    for (l, v) in column.iter_mut().enumerate() {
                        *v = rows[l * dim + k]; // [dim, 48]
                    }
                }
            }
        });
        let left = vocab - full * WIDTH;
        let mut tail = Vec::new();
        if left > 0 {
            tail = vec![0f32; dim * WIDTH];
            // SAFETY: the last `left` rows, as stored, in the table's memory (alive, only
            // read here).
            let rows = unsafe {
                std::slice::from_raw_parts(data.get().add(full * WIDTH * dim), left * dim)
            };
            for (l, row) in rows.chunks_exact(dim).enumerate() {
                for (k, v) in row.iter().enumerate() {
                    tail[k * WIDTH + l] = *v;
                }
            }
        }
        if let Ok(mut stored) = STORED.lock() {
            stored.push((vocab, dim));
        }
        Ok(Panels {
            table: table.shallow_clone(),
            tail,
            vocab,
            dim,
        })
    }

    /// Rows (the vocabulary size).
    pub fn vocab(&self) -> i64 {
        self.vocab as i64
    }

    /// The table's memory as one slice.
    fn data(&self) -> &[f32] {
        if self.vocab * self.dim == 0 {
            return &[];
        }
        // SAFETY: the contiguous f32 table of vocab × dim elements (checked when it was
        // rearranged), kept alive by `self.table` and never written after that.
        unsafe {
            std::slice::from_raw_parts(self.table.data_ptr() as *const f32, self.vocab * self.dim)
        }
    }

    /// The rows of `ids` (`[...]`, each in `0..vocab`; another is an error), as `[..., dim]`
    /// f32, written straight into the result.
    pub fn lookup(&self, ids: &Tensor) -> Result<Tensor> {
        let mut shape = ids.size();
        let flat = Vec::<i64>::try_from(ids.f_to_kind(Kind::Int64)?.f_flatten(0, -1)?)?;
        let dim = self.dim;
        let rows = Tensor::f_empty([flat.len() as i64, dim as i64], (Kind::Float, Device::Cpu))?;
        if flat.len() * dim > 0 {
            // SAFETY: the fresh contiguous [ids, dim] f32 tensor just made, written only
            // through this slice before it is returned.
            let out = unsafe {
                std::slice::from_raw_parts_mut(rows.data_ptr() as *mut f32, flat.len() * dim)
            };
            let (data, full) = (self.data(), self.vocab / WIDTH * WIDTH);
            for (row, &id) in out.chunks_exact_mut(dim).zip(&flat) {
                let id = usize::try_from(id)
                    .ok()
                    .filter(|&i| i < self.vocab)
                    .ok_or_else(|| Error::Input(format!("id {id} is outside the table")))?;
                if id < full {
                    let panel = &data[id / WIDTH * WIDTH * dim..][..WIDTH * dim];
                    for (v, column) in row.iter_mut().zip(panel.chunks_exact(WIDTH)) {
                        *v = column[id % WIDTH];
                    }
                } else {
                    row.copy_from_slice(&data[id * dim..(id + 1) * dim]);
                }
            }
        }
        shape.push(dim as i64);
        Ok(rows.f_view(shape.as_slice())?)
    }

    /// The whole table as `[vocab, dim]` rows (a copy).
    pub fn rows(&self) -> Result<Tensor> {
        self.lookup(&Tensor::f_arange(
            self.vocab as i64,
            (Kind::Int64, Device::Cpu),
        )?)
    }

    /// `x·Wᵀ + b` for `x` `[rows, dim]` (f32 on the CPU) and `bias` `[vocab]`: `[rows, vocab]`.
    pub fn linear(&self, x: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        let (vocab, dim) = (self.vocab, self.dim);
        let x = x.f_to_kind(Kind::Float)?.f_contiguous()?;
        let [rows, in_dim] = x.size()[..] else {
            return Err(Error::Input("the panel product takes x [rows, dim]".into()));
        };
        if in_dim as usize != dim || x.device() != Device::Cpu {
            return Err(Error::Input(format!(
                "a table of width {dim} was given CPU-less or [{rows}, {in_dim}] inputs"
            )));
        }
        let bias = match bias {
            Some(b) if b.size() != [vocab as i64] => {
                return Err(Error::Input(format!(
                    "a bias of {:?} for a head of {vocab} outputs",
                    b.size()
                )))
            }
            Some(b) => Some(b.f_to_kind(Kind::Float)?.f_contiguous()?),
            None => None,
        };
        let rows = rows as usize;
        let y = Tensor::f_empty([rows as i64, vocab as i64], (Kind::Float, Device::Cpu))?;
        if rows * vocab == 0 {
            return Ok(y);
        }
        // SAFETY: contiguous CPU f32 tensors of these lengths (checked or made above), alive
        // for this call; `x` and `bias` are only read.
        let (xs, bs) = unsafe {
            (
                std::slice::from_raw_parts(x.data_ptr() as *const f32, rows * dim),
                bias.as_ref()
                    .map(|b| std::slice::from_raw_parts(b.data_ptr() as *const f32, vocab)),
            )
        };
        let (data, tail, out) = (
            self.data(),
            &self.tail[..],
            SharedMut(y.data_ptr() as *mut f32),
        );
        let panels = vocab.div_ceil(WIDTH);
        let per_task = if rows <= STREAM_ROWS {
            rows_per_thread(panels)
        } else {
            // (Two tasks per thread at least where the table has few panels.)
            let threads = tch::get_num_threads().max(1) as usize;
            PANELS_PER_TASK.min(panels.div_ceil(2 * threads))
        };
        let groups = panels.div_ceil(per_task);
        for_each_task(rows.div_ceil(ROWS_PER_TASK) * groups, &|t| {
            let (r_block, group) = (t / groups, t % groups);
            let r_end = ((r_block + 1) * ROWS_PER_TASK).min(rows);
            for p in group * per_task..((group + 1) * per_task).min(panels) {
                let n = WIDTH.min(vocab - p * WIDTH); // outputs in this panel
                let panel = if n == WIDTH {
                    &data[p * WIDTH * dim..][..WIDTH * dim]
                } else {
                    tail
                };
                let bias = bs.map(|b| &b[p * WIDTH..p * WIDTH + n]);
                let mut r = r_block * ROWS_PER_TASK;
                while r < r_end {
                    let m = TILE_ROWS.min(r_end - r);
                    // SAFETY: rows r..r+m, outputs 48p..48p+n of `y`, which this task alone
                    // writes (tasks split rows into blocks and outputs into panels); `y`
                    // outlives the loop.
                    unsafe {
                        let dst = out.get().add(r * vocab + p * WIDTH);
                        tile(&xs[r * dim..(r + m) * dim], panel, dim, bias, n, dst, vocab);
                    }
                    r += m;
                }
            }
        });
        Ok(y)
    }
}

// SAFETY: the table's memory is written only by `Panels::rearrange`, before the `Panels`
// exists; afterwards it is only read (`data`), and concurrent reads of a tensor are safe in
// libtorch (the loaded-model contract of `crate::nn::linear`).
unsafe impl Sync for Panels {}

/// `y[i·ldc + l] = Σ_k x[i, k] · panel[k][l] + bias[l]` for the rows `i` of `x` (`[rows, dim]`,
/// rows ≤ 8) and the first `n` ≤ 48 outputs `l` of the panel (`[dim, 48]`).
///
/// # Safety
/// `y` must be valid for writes at `i·ldc + l` for every such `i` and `l`.
unsafe fn tile(
    x: &[f32],
    panel: &[f32],
    dim: usize,
    bias: Option<&[f32]>,
    n: usize,
    y: *mut f32,
    ldc: usize,
) {
    let rows = x.len() / dim.max(1);
    debug_assert!(rows <= TILE_ROWS && n <= WIDTH && panel.len() >= dim * WIDTH);
    debug_assert!(bias.is_none_or(|b| b.len() >= n));
    #[cfg(target_arch = "x86_64")]
    if available() {
        // SAFETY: AVX-512F checked; the sizes as documented, `y` by the caller.
        return avx512::tile(x, panel, dim, rows, bias, n, y, ldc);
    }
    scalar_tile(x, panel, dim, bias, n, y, ldc);
}

/// [`tile`] one product at a time, in the vector tile's order of additions (the reference of
/// its tests, and the product on CPUs without AVX-512).
///
/// # Safety
/// As for [`tile`].
unsafe fn scalar_tile(
    x: &[f32],
    panel: &[f32],
    dim: usize,
    bias: Option<&[f32]>,
    n: usize,
    y: *mut f32,
    ldc: usize,
) {
    for (i, row) in x.chunks_exact(dim.max(1)).enumerate() {
        for l in 0..n {
            let sum = (0..dim).fold(0.0f32, |acc, k| row[k].mul_add(panel[k * WIDTH + l], acc));
            *y.add(i * ldc + l) = sum + bias.map_or(0.0, |b| b[l]);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::WIDTH;
    use std::arch::x86_64::*;

    /// [`super::tile`] on AVX-512.
    ///
    /// # Safety
    /// The CPU must have AVX-512F; as for [`super::tile`].
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn tile(
        x: &[f32],
        panel: &[f32],
        dim: usize,
        rows: usize,
        bias: Option<&[f32]>,
        n: usize,
        y: *mut f32,
        ldc: usize,
    ) {
        // One copy per row count, so that the accumulators are registers, not an array.
        let (x, p) = (x.as_ptr(), panel.as_ptr());
        let out = Out { bias, n, y, ldc };
        match rows {
            8 => block::<8>(x, p, dim, out),
            7 => block::<7>(x, p, dim, out),
            6 => block::<6>(x, p, dim, out),
            5 => block::<5>(x, p, dim, out),
            4 => block::<4>(x, p, dim, out),
            3 => block::<3>(x, p, dim, out),
            2 => block::<2>(x, p, dim, out),
            _ => block::<1>(x, p, dim, out),
        }
    }

    /// Where a tile's sums go: `y[i·ldc + l]` for its first `n` outputs, plus `bias[l]`.
    struct Out<'a> {
        bias: Option<&'a [f32]>,
        n: usize,
        y: *mut f32,
        ldc: usize,
    }

    /// Columns of the panel (192 bytes each) fetched ahead of the product for up to 4 rows.
    /// There each column costs little arithmetic, and the loads alone do not keep enough of
    /// the table in flight: on the Intel Xeon, T5's head (32,128 × 512) at 4 rows took
    /// 2.6 ms with 64 columns fetched ahead, 3.4–3.6 ms without, 3.0–3.2 with 16.
    const PREFETCH: usize = 64;

    /// [`tile`] for exactly `R` rows.
    #[target_feature(enable = "avx512f")]
    unsafe fn block<const R: usize>(x: *const f32, panel: *const f32, dim: usize, out: Out) {
        let mut acc = [[_mm512_setzero_ps(); 3]; R];
        for k in 0..dim {
            // Column k of the panel's 48 rows, then each input row's x[r, k] times it.
            let column = panel.add(k * WIDTH);
            if R <= 4 {
                // (A prefetch past the panel's end is harmless: it never faults.)
                for line in 0..3 {
                    let ahead = column.wrapping_add(PREFETCH * WIDTH + 16 * line);
                    _mm_prefetch::<_MM_HINT_T0>(ahead as *const i8);
                }
            }
            let w = [
                _mm512_loadu_ps(column),
                _mm512_loadu_ps(column.add(16)),
                _mm512_loadu_ps(column.add(32)),
            ];
            for (r, a) in acc.iter_mut().enumerate() {
                let xv = _mm512_set1_ps(*x.add(r * dim + k));
                for (a, w) in a.iter_mut().zip(&w) {
                    *a = _mm512_fmadd_ps(xv, *w, *a);
                }
            }
        }
        // The sums plus the bias, stored under a mask where the panel has fewer outputs.
        for v in 0..3 {
            let lo = 16 * v;
            if lo >= out.n {
                break;
            }
            let mask: __mmask16 = if out.n - lo >= 16 {
                0xffff
            } else {
                ((1u32 << (out.n - lo)) - 1) as __mmask16
            };
            let b = match out.bias {
                Some(b) => _mm512_maskz_loadu_ps(mask, b.as_ptr().add(lo)),
                None => _mm512_setzero_ps(),
            };
            for (r, a) in acc.iter().enumerate() {
                let sum = _mm512_add_ps(a[v], b);
                _mm512_mask_storeu_ps(out.y.add(r * out.ldc + lo), mask, sum);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A table of `vocab` rows whose values say where they are (row + column / 1000).
    fn table(vocab: i64, dim: i64) -> Tensor {
        let rows = Tensor::arange(vocab, (Kind::Float, Device::Cpu)).unsqueeze(1);
        let cols = Tensor::arange(dim, (Kind::Float, Device::Cpu)).unsqueeze(0) / 1000.0;
        (rows + cols).contiguous()
    }

    /// Rearranged in place, the table reads back as the same rows, whatever the vocabulary
    /// size against the panel width (none full, one, several, with and without a tail).
    #[test]
    fn the_table_reads_back_as_its_rows() {
        for vocab in [0i64, 1, 47, 48, 49, 96, 100, 257] {
            let original = table(vocab, 5);
            let t = original.copy();
            let panels = Panels::rearrange(&t).unwrap();
            if vocab >= 96 {
                assert_ne!(t, original, "the panels took the table's own memory");
            }
            assert_eq!(panels.rows().unwrap(), original, "vocab {vocab}");
            let ids = Tensor::from_slice(&[0i64, vocab - 1, vocab / 2])
                .clamp(0, vocab.max(1) - 1)
                .view([1, 3]);
            if vocab > 0 {
                assert_eq!(
                    panels.lookup(&ids).unwrap(),
                    original.index_select(0, &ids.view([3])).view([1, 3, 5])
                );
                assert!(panels.lookup(&Tensor::from_slice(&[vocab])).is_err());
            }
        }
    }

    /// The panel product equals libtorch's `linear` to f32 rounding (the order of the
    /// additions alone differs), with and without a bias, for row counts that fill no tile,
    /// one, several with a remainder and more than a task's block, and vocabularies with and
    /// without a tail panel.
    #[test]
    fn the_panel_product_equals_libtorchs() {
        tch::manual_seed(7);
        for (vocab, dim) in [(48i64, 16i64), (101, 33), (1000, 64), (50, 3)] {
            let w = Tensor::randn([vocab, dim], (Kind::Float, Device::Cpu));
            let b = Tensor::randn([vocab], (Kind::Float, Device::Cpu));
            let panels = Panels::rearrange(&w.copy()).unwrap();
            for rows in [1i64, 3, 8, 13, 300] {
                let x = Tensor::randn([rows, dim], (Kind::Float, Device::Cpu));
                for bias in [None, Some(&b)] {
                    let want = x.linear(&w, bias);
                    let got = panels.linear(&x, bias).unwrap();
                    assert_eq!(got.size(), want.size());
                    let err = f64::try_from((got - &want).abs().max()).unwrap();
                    assert!(err < 1e-4, "{vocab}x{dim}, {rows} rows: {err}");
                }
            }
        }
    }

    /// The vector tile adds in the scalar tile's order: equal to the bit, for every row
    /// count, full and partial panels, with and without a bias.
    #[test]
    fn the_vector_tile_equals_the_scalar_one() {
        if !available() {
            return;
        }
        tch::manual_seed(3);
        let dim = 37;
        let randn = |n: usize| {
            Vec::<f32>::try_from(Tensor::randn([n as i64], (Kind::Float, Device::Cpu))).unwrap()
        };
        let (x, panel, bias) = (randn(TILE_ROWS * dim), randn(dim * WIDTH), randn(WIDTH));
        for rows in 1..=TILE_ROWS {
            for n in [WIDTH, 33, 16, 1] {
                for b in [None, Some(&bias[..])] {
                    let ldc = 50;
                    let (mut a, mut s) = (vec![7f32; rows * ldc], vec![7f32; rows * ldc]);
                    let x = &x[..rows * dim];
                    // SAFETY: AVX-512F checked; rows × ldc outputs, ldc ≥ 48.
                    unsafe {
                        avx512::tile(x, &panel, dim, rows, b, n, a.as_mut_ptr(), ldc);
                        scalar_tile(x, &panel, dim, b, n, s.as_mut_ptr(), ldc);
                    }
                    assert_eq!(a, s, "{rows} rows, {n} outputs");
                }
            }
        }
    }

    /// Inputs of the wrong width, or a bias of the wrong length, are errors.
    #[test]
    fn wrong_shapes_are_errors() {
        let panels = Panels::rearrange(&table(50, 4)).unwrap();
        let x = Tensor::zeros([2, 5], (Kind::Float, Device::Cpu));
        assert!(panels.linear(&x, None).is_err());
        let x = Tensor::zeros([2, 4], (Kind::Float, Device::Cpu));
        let b = Tensor::zeros([49], (Kind::Float, Device::Cpu));
        assert!(panels.linear(&x, Some(&b)).is_err());
        assert!(Panels::rearrange(&table(50, 4).to_kind(Kind::Double)).is_err());
        assert_eq!(
            panels.linear(&x.narrow(0, 0, 0), None).unwrap().size(),
            [0, 50]
        );
    }
}
