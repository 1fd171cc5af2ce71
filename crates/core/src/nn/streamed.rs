//! A float projection for decoding that streams the weight as it is stored (bf16 or f32).
//!
//! Decoding one token multiplies a few rows by every weight matrix, so it reads each weight
//! once and does two flops per element: its speed is the memory bandwidth, and a bf16 weight
//! (2 bytes per element) should take half the time of an f32 one. libtorch's bf16 product
//! does not get there on the CPUs we measured: oneDNN prepares (re-packs) the weight on every
//! call, and the call costs about what the f32 one does. Its f32 matrix-vector product is
//! single-threaded on AMD CPUs, and the split product (one batched call) reached about 60 %
//! of the memory bandwidth on the fastest machine we measured. This kernel reads the weight
//! rows straight from the tensor's memory, widens each bf16 to f32 in registers (a bf16 is
//! the top half of an f32; an f32 is loaded as it is) and accumulates in f32, so each weight
//! byte is read once:
//!
//! ```text
//! y[r, j] = Σ_k x[r, k] · W[j, k]      W [out, in] bf16 or f32, x [rows, in], y [rows, out]
//!           └ 16 k at a time: 16 elements of W[j] → 16 f32, one FMA per row r
//! ```
//!
//! Above 4 input rows (a batch of sequences, beams) the product is bound by arithmetic
//! rather than memory, and the same sums are taken as register tiles of 6 input rows × 4
//! weight rows over cache-sized blocks of the weight (`tiled_block`), still reading the
//! weight once; there it competes with the library's GEMM (up to [`MAX_ROWS_F32`] rows).
//!
//! The output rows `j` are split into blocks that libtorch's threads share
//! ([`super::parallel`]). For bf16 the products are exact in f32 (bf16 × bf16 fits an f32
//! mantissa) and the sums are f32, as libtorch's are; only the order of the additions
//! differs, then the result is rounded to bf16 as libtorch rounds it. For f32 the result
//! differs from libtorch's by the order of the additions alone. It needs AVX-512 (checked at
//! run time); elsewhere [`available`] is false and the library's product runs.

use super::parallel::{for_each_task, rows_per_thread, task_bytes, SharedMut};
use crate::{Error, Result};
use tch::{Device, Kind, Tensor};

/// Rows up to which the kernel is a candidate for bf16 weights. Up to 4 rows
/// it streams the weight once, bound by memory; above, it multiplies register tiles
/// (`tiled_block`).
pub const MAX_ROWS: i64 = 8;

/// Rows up to which the kernel is a candidate for f32 weights: the tiles compete with the
/// library's GEMM, which packs the weight on every call, up to 64 rows (measured like every
/// candidate, so it runs only where it wins). For bf16 the tiles widen each weight vector on
/// the shuffle port that the FMAs' operands also need, and lost to the library's product
/// (oneDNN) at 8 rows (GPT-2's head 10.5 against 6.8 ms): bf16 stays at [`MAX_ROWS`].
pub const MAX_ROWS_F32: i64 = 64;

/// Rows up to which the kernel is a candidate for weights of `kind`.
pub fn max_rows(kind: Kind) -> i64 {
    if kind == Kind::Float {
        MAX_ROWS_F32
    } else {
        MAX_ROWS
    }
}

/// Input rows multiplied in one pass over the weight (one accumulator each).
const ROWS_PER_PASS: usize = 4;

/// Output rows per task at least (more where a thread's share or [`task_bytes`] is larger).
const BLOCK: usize = 64;

/// Whether this CPU runs the kernel (x86-64 with AVX-512F).
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether the kernel takes weights of this kind (bf16 or f32).
pub fn takes(kind: Kind) -> bool {
    matches!(kind, Kind::BFloat16 | Kind::Float)
}

/// `x·Wᵀ + b` for a bf16 or f32 weight `[out, in]` (contiguous, on the CPU) and `x`
/// `[rows, in]`; `bias` `[out]`. Returns `[rows, out]` in the weight's kind.
pub fn linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    linear_many(x, &[(weight, bias)])?
        .pop()
        .ok_or_else(|| Error::Input("one weight gives one product".into()))
}

/// [`linear`] for several weights (with their biases) of one kind and input width at once
/// (attention's q/k/v, a gated feed-forward's two inputs): the blocks of all the weights are
/// the tasks of one parallel pass, so the threads meet once rather than once per weight. One
/// `[rows, out]` result per weight, in their order.
pub fn linear_many(x: &Tensor, weights: &[(&Tensor, Option<&Tensor>)]) -> Result<Vec<Tensor>> {
    let rows = x.size().first().copied().unwrap_or(0);
    let kind = weights.first().map_or(Kind::Float, |(w, _)| w.kind());
    for (weight, _) in weights {
        let in_dim = weight.size().get(1).copied().unwrap_or(-1);
        if !available()
            || !takes(weight.kind())
            || weight.kind() != kind
            || weight.dim() != 2
            || weight.device() != Device::Cpu
            || !weight.is_contiguous()
            || x.size() != [rows, in_dim]
        {
            return Err(Error::Input(
                "the streamed kernel takes contiguous CPU bf16 or f32 weights [out, in] of one \
                 kind and x [rows, in] on a CPU with AVX-512"
                    .into(),
            ));
        }
    }
    if kind == Kind::Float {
        // SAFETY: contiguous [out, in] f32 tensors on the CPU (checked above), borrowed for
        // this whole call and only read.
        let ws: Vec<&[f32]> = weights.iter().map(|(w, _)| unsafe { stored(w) }).collect();
        return stream(x, &ws, weights, kind);
    }
    // SAFETY: as above, bf16 (their bits as u16).
    let ws: Vec<&[u16]> = weights.iter().map(|(w, _)| unsafe { stored(w) }).collect();
    stream(x, &ws, weights, kind)
}

/// The weight's elements as stored.
///
/// # Safety
/// `weight` must be a contiguous CPU tensor whose element type is `T`'s size and layout; the
/// slice must not outlive it nor be used while it is written.
unsafe fn stored<T>(weight: &Tensor) -> &[T] {
    let n = weight.numel();
    if n == 0 {
        return &[]; // (an empty tensor's data pointer may be null)
    }
    std::slice::from_raw_parts(weight.data_ptr() as *const T, n)
}

/// The products over the stored weights `w_all` (each `weights[i]`'s elements), in `kind`.
fn stream<T: Stored>(
    x: &Tensor,
    w_all: &[&[T]],
    weights: &[(&Tensor, Option<&Tensor>)],
    kind: Kind,
) -> Result<Vec<Tensor>> {
    let (rows, in_dim) = (x.size()[0], x.size()[1]);
    let outs: Vec<i64> = weights.iter().map(|(w, _)| w.size()[0]).collect();
    if outs.contains(&0) || in_dim == 0 || rows == 0 {
        // Nothing to stream.
        return weights
            .iter()
            .map(|(w, b)| Ok(x.f_linear(w, *b)?))
            .collect();
    }
    // The few input rows in f32, [rows, in] (f32 input: its own memory).
    let x32 = x.f_to_kind(Kind::Float)?.f_contiguous()?;
    let biases = weights
        .iter()
        .map(|(_, b)| {
            b.map(|b| Vec::<f32>::try_from(&b.f_to_kind(Kind::Float)?.f_contiguous()?))
                .transpose()
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let ys = outs
        .iter()
        .map(|&out| Tensor::f_empty([rows, out], (Kind::Float, Device::Cpu)))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let (in_dim, rows) = (in_dim as usize, rows as usize);
    // SAFETY: a contiguous CPU f32 tensor of rows × in_dim values, alive for the call.
    let xs = unsafe { std::slice::from_raw_parts(x32.data_ptr() as *const f32, rows * in_dim) };
    // Tasks of whole weight rows (of all the weights together): (weight, its first row).
    // Up to ROWS_PER_PASS input rows (one pass over the weight, bound by memory), one run of
    // consecutive rows per thread: one long stream per thread reads faster than 512 KB
    // tasks handed out in turn, each of which starts a stream of its own (same binary, 3–5
    // alternating runs: batch 1 f32 GPT-2 1.09–1.14×, SmolLM2-360M 1.07–1.10×, TinyLlama
    // 1.07×, bf16 1.07–1.26×; `…-stream-per-thread-ab.log`). Above it the product is
    // tiled, bound by arithmetic rather than memory, and the threads meet less evenly: there
    // the tasks of [`task_bytes`] balance them (GPT-2 at 8 rows ran 0.89× with one run per
    // thread).
    let row_bytes = in_dim * std::mem::size_of::<T>();
    let all_rows = outs.iter().sum::<i64>() as usize;
    let rows_per_task = if rows <= ROWS_PER_PASS {
        BLOCK.max(rows_per_thread(all_rows))
    } else {
        BLOCK.max(task_bytes(all_rows * row_bytes) / row_bytes)
    };
    let tasks: Vec<(usize, usize)> = outs
        .iter()
        .enumerate()
        .flat_map(|(i, &out)| {
            (0..out as usize)
                .step_by(rows_per_task)
                .map(move |j| (i, j))
        })
        .collect();
    let y_ptrs: Vec<SharedMut<f32>> = ys
        .iter()
        .map(|y| SharedMut(y.data_ptr() as *mut f32))
        .collect();
    for_each_task(tasks.len(), &|t| {
        let (i, first) = tasks[t];
        let out = outs[i] as usize;
        let n = rows_per_task.min(out - first);
        let w = &w_all[i][first * in_dim..(first + n) * in_dim];
        let mut yt = vec![0f32; n * rows]; // [n, rows]
        if rows > ROWS_PER_PASS {
            tiled_block(w, in_dim, xs, rows, &mut yt);
        } else {
            product_block(w, in_dim, xs, rows, &mut yt);
        }
        for (j, outputs) in yt.chunks_exact(rows).enumerate() {
            let c = first + j;
            let b = biases[i].as_ref().map_or(0.0, |b| b[c]);
            for (r, v) in outputs.iter().enumerate() {
                // SAFETY: `ys[i]` is a fresh [rows, out] f32 buffer; this task alone writes
                // its columns first..first + n, and r < rows, c < out.
                unsafe { *y_ptrs[i].get().add(r * out + c) = v + b };
            }
        }
    });
    ys.into_iter()
        .map(|y| {
            Ok(if kind == Kind::Float {
                y
            } else {
                y.f_to_kind(kind)?
            })
        })
        .collect()
}

/// `y[j * rows + r] = Σ_k x[r * in + k] · w[j * in + k]` for the weight rows `w` `[n, in]` and
/// up to [`ROWS_PER_PASS`] input rows: one pass over the weight.
fn product_block<T: Stored>(w: &[T], in_dim: usize, x: &[f32], rows: usize, y: &mut [f32]) {
    for (j, w_row) in w.chunks_exact(in_dim).enumerate() {
        let mut sums = [0f32; ROWS_PER_PASS];
        #[cfg(target_arch = "x86_64")]
        {
            // SAFETY: `available()` (checked by `linear`) says AVX-512F is there.
            unsafe { avx512::dot_rows(w_row, x, in_dim, rows, &mut sums) };
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            scalar_dot_rows(w_row, x, in_dim, rows, &mut sums);
        }
        y[j * rows..(j + 1) * rows].copy_from_slice(&sums[..rows]);
    }
}

/// The product above [`ROWS_PER_PASS`] input rows, where it is no longer bound by memory but
/// by arithmetic, for the weight rows `w` `[n, in]`: `y[j * rows + r] = w[j] · x[r]`.
///
/// It multiplies register tiles of [`TILE_ROWS`] input rows by [`TILE_OUTS`] weight rows:
/// each weight vector is loaded once for all of a tile's input rows and each input vector
/// once for all of its weight rows (24 accumulators, 10 loads per 24 FMAs). The weight is
/// taken in blocks of [`BLOCK_OUTS`] rows by [`BLOCK_IN`] columns (32 KB of f32), each
/// multiplied by every group of input rows before the next, so that the block is read from
/// memory once and then from the first-level cache: tiles that took their weight rows from
/// the second-level cache instead (the whole task's rows for each group of input rows)
/// stalled on those loads, and ran at 96 rather than 112 GFLOP/s on the Intel Xeon f6m207.
///
/// Copying each block first into the tiles' order (as the library's GEMM packs its weight
/// on every call) was slower here (71 GFLOP/s): the copy reads the block from memory with no
/// arithmetic to overlap it.
fn tiled_block<T: Stored>(w: &[T], in_dim: usize, x: &[f32], rows: usize, y: &mut [f32]) {
    let n = w.len() / in_dim;
    for k0 in (0..in_dim).step_by(BLOCK_IN) {
        let len = BLOCK_IN.min(in_dim - k0);
        for b0 in (0..n).step_by(BLOCK_OUTS) {
            let b_end = (b0 + BLOCK_OUTS).min(n);
            for r0 in (0..rows).step_by(TILE_ROWS) {
                let nr = TILE_ROWS.min(rows - r0);
                let xs = &x[r0 * in_dim + k0..];
                for j0 in (b0..b_end).step_by(TILE_OUTS) {
                    let nw = TILE_OUTS.min(b_end - j0);
                    let ws = &w[j0 * in_dim + k0..];
                    let mut sums = [[0f32; TILE_OUTS]; TILE_ROWS];
                    #[cfg(target_arch = "x86_64")]
                    {
                        // SAFETY: `available()` (checked by `linear`) says AVX-512F is there;
                        // `ws` holds `nw` and `xs` `nr` rows of stride `in_dim` from column
                        // k0, each with `len` columns left.
                        unsafe { avx512::tile(ws, xs, in_dim, len, nr, nw, &mut sums) };
                    }
                    #[cfg(not(target_arch = "x86_64"))]
                    {
                        scalar_tile(ws, xs, in_dim, len, nr, nw, &mut sums);
                    }
                    for (r, outs) in sums.iter().take(nr).enumerate() {
                        for (j, v) in outs.iter().take(nw).enumerate() {
                            y[(j0 + j) * rows + r0 + r] += *v;
                        }
                    }
                }
            }
        }
    }
}

/// Input rows per register tile of [`tiled_block`].
const TILE_ROWS: usize = 6;
/// Weight rows per register tile of [`tiled_block`].
const TILE_OUTS: usize = 4;
/// Weight rows per cache block of [`tiled_block`].
const BLOCK_OUTS: usize = 16;
/// Weight columns per cache block of [`tiled_block`] (16 × 512 f32: 32 KB).
const BLOCK_IN: usize = 512;

/// Portable reference of [`avx512::tile`] (also its test oracle): `sums[r][j] = w[j] · x[r]`
/// over `len` columns of rows of stride `stride`.
#[cfg_attr(all(target_arch = "x86_64", not(test)), allow(dead_code))]
fn scalar_tile<T: Stored>(
    w: &[T],
    x: &[f32],
    stride: usize,
    len: usize,
    rows: usize,
    outs: usize,
    sums: &mut [[f32; TILE_OUTS]; TILE_ROWS],
) {
    for (r, row) in sums.iter_mut().take(rows).enumerate() {
        for (j, s) in row.iter_mut().take(outs).enumerate() {
            let (wj, xr) = (
                &w[j * stride..j * stride + len],
                &x[r * stride..r * stride + len],
            );
            *s = wj.iter().zip(xr).map(|(&b, &v)| b.widen() * v).sum();
        }
    }
}

/// A weight element as stored: a bf16 (its bits) or an f32. (Also how the fused decoding
/// attention reads a bf16 or f32 KV cache: [`super::fused::attention`].)
pub(super) trait Stored: Copy + Send + Sync {
    /// Its value as an f32 (exact for both).
    fn widen(self) -> f32;
    /// 16 consecutive elements from `p`, widened to f32.
    ///
    /// # Safety
    /// The CPU must have AVX-512F and `p` must point at 16 readable elements.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load16(p: *const Self) -> std::arch::x86_64::__m512;
}

impl Stored for u16 {
    fn widen(self) -> f32 {
        f32::from_bits(u32::from(self) << 16) // a bf16's bits are an f32's top half
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load16(p: *const u16) -> std::arch::x86_64::__m512 {
        use std::arch::x86_64::*;
        // 16 bf16 → 16 f32: zero-extend to 32 bits, shift into the top half.
        let packed = _mm256_loadu_si256(p as *const __m256i);
        _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(packed)))
    }
}

impl Stored for f32 {
    fn widen(self) -> f32 {
        self
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load16(p: *const f32) -> std::arch::x86_64::__m512 {
        std::arch::x86_64::_mm512_loadu_ps(p)
    }
}

/// Portable reference of [`avx512::dot_rows`] (also its test oracle).
#[cfg_attr(target_arch = "x86_64", allow(dead_code))]
fn scalar_dot_rows<T: Stored>(w: &[T], x: &[f32], in_dim: usize, rows: usize, sums: &mut [f32]) {
    for (r, s) in sums.iter_mut().take(rows).enumerate() {
        let xr = &x[r * in_dim..(r + 1) * in_dim];
        *s = w.iter().zip(xr).map(|(&b, &v)| b.widen() * v).sum();
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{Stored, ROWS_PER_PASS, TILE_OUTS, TILE_ROWS};
    use std::arch::x86_64::*;

    /// `sums[r] = w · x[r]` for `rows` ≤ [`ROWS_PER_PASS`] rows of `x` (row stride `in_dim`).
    ///
    /// # Safety
    /// The CPU must have AVX-512F; `w.len() == in_dim`, `x.len() ≥ rows · in_dim`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn dot_rows<T: Stored>(
        w: &[T],
        x: &[f32],
        in_dim: usize,
        rows: usize,
        sums: &mut [f32; ROWS_PER_PASS],
    ) {
        // One copy per row count, so that the accumulators are registers, not an array.
        match rows {
            1 => dot::<T, 1>(w, x, in_dim, sums),
            2 => dot::<T, 2>(w, x, in_dim, sums),
            3 => dot::<T, 3>(w, x, in_dim, sums),
            _ => dot::<T, ROWS_PER_PASS>(w, x, in_dim, sums),
        }
    }

    /// Independent accumulator chains per row: an FMA waits for the previous one on its chain
    /// (4 cycles), so a single chain would cap one row's product at 16 elements per 4 cycles,
    /// below what memory delivers.
    const CHAINS: usize = 4;

    /// [`dot_rows`] for exactly `R` rows.
    #[target_feature(enable = "avx512f")]
    unsafe fn dot<T: Stored, const R: usize>(
        w: &[T],
        x: &[f32],
        in_dim: usize,
        sums: &mut [f32; ROWS_PER_PASS],
    ) {
        let (w, x) = (w.as_ptr(), x.as_ptr());
        let mut acc = [[_mm512_setzero_ps(); R]; CHAINS];
        let mut k = 0;
        // 64 elements of the weight row at a time, 16 per chain.
        while k + 16 * CHAINS <= in_dim {
            for (c, chain) in acc.iter_mut().enumerate() {
                let wide = T::load16(w.add(k + 16 * c));
                for (r, a) in chain.iter_mut().enumerate() {
                    let xv = _mm512_loadu_ps(x.add(r * in_dim + k + 16 * c));
                    *a = _mm512_fmadd_ps(wide, xv, *a);
                }
            }
            k += 16 * CHAINS;
        }
        // Then 16 at a time on the first chain.
        while k + 16 <= in_dim {
            let wide = T::load16(w.add(k));
            for (r, a) in acc[0].iter_mut().enumerate() {
                *a = _mm512_fmadd_ps(wide, _mm512_loadu_ps(x.add(r * in_dim + k)), *a);
            }
            k += 16;
        }
        for (r, sum) in sums.iter_mut().enumerate().take(R) {
            let all = acc[1..]
                .iter()
                .fold(acc[0][r], |a, chain| _mm512_add_ps(a, chain[r]));
            let mut s = _mm512_reduce_add_ps(all);
            // The last in_dim mod 16 elements.
            for kk in k..in_dim {
                s += (*w.add(kk)).widen() * *x.add(r * in_dim + kk);
            }
            *sum = s;
        }
    }

    /// [`super::scalar_tile`]: `sums[r][j] = w[j] · x[r]` over `len` columns, for `rows` ≤
    /// [`TILE_ROWS`] rows of `x` and `outs` ≤ [`TILE_OUTS`] rows of `w` (both of stride
    /// `stride`).
    ///
    /// # Safety
    /// The CPU must have AVX-512F; `w` must hold `(outs - 1) · stride + len` elements and `x`
    /// `(rows - 1) · stride + len`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn tile<T: Stored>(
        w: &[T],
        x: &[f32],
        stride: usize,
        len: usize,
        rows: usize,
        outs: usize,
        sums: &mut [[f32; TILE_OUTS]; TILE_ROWS],
    ) {
        // One copy per shape, so that the accumulators are registers, not an array: full
        // tiles, and the last input rows (rows mod 6) and weight rows (mod 4) of a product.
        let (w, x) = (w.as_ptr(), x.as_ptr());
        macro_rules! by_rows {
            ($j:literal) => {
                match rows {
                    6 => block::<T, 6, $j>(w, x, stride, len, sums),
                    5 => block::<T, 5, $j>(w, x, stride, len, sums),
                    4 => block::<T, 4, $j>(w, x, stride, len, sums),
                    3 => block::<T, 3, $j>(w, x, stride, len, sums),
                    2 => block::<T, 2, $j>(w, x, stride, len, sums),
                    _ => block::<T, 1, $j>(w, x, stride, len, sums),
                }
            };
        }
        match outs {
            4 => by_rows!(4),
            3 => by_rows!(3),
            2 => by_rows!(2),
            _ => by_rows!(1),
        }
    }

    /// [`tile`] for exactly `R` input rows and `J` weight rows.
    #[target_feature(enable = "avx512f")]
    unsafe fn block<T: Stored, const R: usize, const J: usize>(
        w: *const T,
        x: *const f32,
        stride: usize,
        len: usize,
        sums: &mut [[f32; TILE_OUTS]; TILE_ROWS],
    ) {
        let mut acc = [[_mm512_setzero_ps(); J]; R];
        let mut k = 0;
        while k + 16 <= len {
            let mut wide = [_mm512_setzero_ps(); J];
            for (j, v) in wide.iter_mut().enumerate() {
                *v = T::load16(w.add(j * stride + k));
            }
            for (r, row) in acc.iter_mut().enumerate() {
                let xv = _mm512_loadu_ps(x.add(r * stride + k));
                for (a, wv) in row.iter_mut().zip(&wide) {
                    *a = _mm512_fmadd_ps(*wv, xv, *a);
                }
            }
            k += 16;
        }
        for (r, (out, row)) in sums.iter_mut().zip(&acc).enumerate() {
            // A row's four sums together, a quarter of the shuffles of four reductions apart;
            // fewer weight rows are padded with zeros, so that every sum is added up in the
            // same order whatever tile it falls in (a weight gives the same result alone as
            // with others, to the bit).
            let lane = |j: usize| row.get(j).copied().unwrap_or(_mm512_setzero_ps());
            _mm_storeu_ps(
                out.as_mut_ptr(),
                reduce4(lane(0), lane(1), lane(2), lane(3)),
            );
            for (j, s) in out.iter_mut().take(J).enumerate() {
                // The last len mod 16 columns.
                for kk in k..len {
                    *s += (*w.add(j * stride + kk)).widen() * *x.add(r * stride + kk);
                }
            }
        }
    }

    // `reduce4` fills a tile row of four.
    const _: () = assert!(TILE_OUTS == 4);

    /// The sums of the 16 lanes of each of `a`, `b`, `c`, `d`, in that order.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn reduce4(a: __m512, b: __m512, c: __m512, d: __m512) -> __m128 {
        // Within each 128-bit lane: [a0+a2, b0+b2, a1+a3, b1+b3], the same for c, d.
        let ab = _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
        let cd = _mm512_add_ps(_mm512_unpacklo_ps(c, d), _mm512_unpackhi_ps(c, d));
        // Within each lane: [a, b, c, d], each the sum of that lane's four.
        let (ab, cd) = (_mm512_castps_pd(ab), _mm512_castps_pd(cd));
        let abcd = _mm512_add_ps(
            _mm512_castpd_ps(_mm512_unpacklo_pd(ab, cd)),
            _mm512_castpd_ps(_mm512_unpackhi_pd(ab, cd)),
        );
        // Then the four lanes.
        let half = _mm256_add_ps(
            _mm512_castps512_ps256(abcd),
            _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(abcd))),
        );
        _mm_add_ps(
            _mm256_castps256_ps128(half),
            _mm256_extractf128_ps::<1>(half),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_streamed_product_equals_libtorchs_to_bf16_rounding() {
        if !available() {
            return; // nothing to compare on this CPU: the library's product runs instead
        }
        tch::manual_seed(3);
        // An input width that is not a multiple of 16 (the scalar tail), and output counts
        // over one task or several (the last one shorter).
        for (rows, out, in_dim) in [(1, 200, 77), (3, 130, 64), (8, 67, 300), (2, 1100, 130)] {
            let w =
                Tensor::randn([out, in_dim], (Kind::Float, Device::Cpu)).to_kind(Kind::BFloat16);
            let b = Tensor::randn([out], (Kind::Float, Device::Cpu)).to_kind(Kind::BFloat16);
            let x =
                Tensor::randn([rows, in_dim], (Kind::Float, Device::Cpu)).to_kind(Kind::BFloat16);
            let ours = linear(&x, &w, Some(&b)).unwrap().to_kind(Kind::Float);
            // The reference in f32 from the same bf16 values, then rounded as ours is.
            let exact = x
                .to_kind(Kind::Float)
                .linear(&w.to_kind(Kind::Float), Some(&b.to_kind(Kind::Float)))
                .to_kind(Kind::BFloat16)
                .to_kind(Kind::Float);
            let diff = (&ours - &exact).abs().max().double_value(&[]);
            let scale = exact.abs().max().double_value(&[]);
            // One bf16 step at most (2^-8 relative), from summing in another order.
            assert!(
                diff <= scale / 128.0,
                "{rows}x{out}x{in_dim}: {diff} vs {scale}"
            );
            assert_eq!(ours.size(), [rows, out]);
        }
    }

    /// Several weights in one pass give what each gives alone, to the bit (f32 and bf16,
    /// with and without bias, weights of one task and of several).
    #[test]
    fn several_weights_at_once_equal_each_alone() {
        if !available() {
            return;
        }
        tch::manual_seed(6);
        for kind in [Kind::Float, Kind::BFloat16] {
            let new = |size: &[i64]| Tensor::randn(size, (Kind::Float, Device::Cpu)).to_kind(kind);
            let (w1, w2, w3) = (new(&[200, 96]), new(&[7, 96]), new(&[3000, 96]));
            let b2 = new(&[7]);
            for rows in [1, 3, 8] {
                let x = new(&[rows, 96]);
                let all = [(&w1, None), (&w2, Some(&b2)), (&w3, None)];
                let together = linear_many(&x, &all).unwrap();
                for ((w, b), y) in all.iter().zip(&together) {
                    assert!(y.equal(&linear(&x, w, *b).unwrap()), "{kind:?} {rows}");
                }
            }
        }
    }

    /// Streamed (up to 4 rows) and tiled (above): for the tiles, row counts that fill no
    /// tile, one, several with a remainder; weight rows under a tile, over a cache block, not
    /// a multiple of 4; input widths under 16, with a tail, over one cache block (512) with a
    /// tail.
    #[test]
    fn the_streamed_f32_product_equals_libtorchs() {
        if !available() {
            return;
        }
        tch::manual_seed(4);
        for (rows, out, in_dim) in [
            (1, 200, 77),
            (4, 130, 64),
            (8, 67, 300),
            (5, 3, 1024),
            (2, 600, 130),
            (5, 3, 10),
            (6, 4, 16),
            (13, 37, 1050),
            (64, 70, 530),
            (33, 17, 512),
            (7, 1, 1030),
        ] {
            let w = Tensor::randn([out, in_dim], (Kind::Float, Device::Cpu));
            let b = Tensor::randn([out], (Kind::Float, Device::Cpu));
            let x = Tensor::randn([rows, in_dim], (Kind::Float, Device::Cpu));
            let ours = linear(&x, &w, Some(&b)).unwrap();
            assert_eq!(ours.kind(), Kind::Float);
            assert_eq!(ours.size(), [rows, out]);
            let exact = x
                .to_kind(Kind::Double)
                .linear(&w.to_kind(Kind::Double), Some(&b.to_kind(Kind::Double)));
            let diff = (&ours.to_kind(Kind::Double) - &exact)
                .abs()
                .max()
                .double_value(&[]);
            // f32 sums of ≤ 1050 products of unit normals: rounding error well under 1e-4.
            assert!(diff < 1e-4, "{rows}x{out}x{in_dim}: {diff}");
            let no_bias = linear(&x, &w, None).unwrap();
            let diff = (&no_bias - x.linear::<Tensor>(&w, None))
                .abs()
                .max()
                .double_value(&[]);
            assert!(diff < 1e-4, "{rows}x{out}x{in_dim} without bias: {diff}");
        }
    }

    /// The vector tile sums what the scalar reference sums, for every tile shape, with and
    /// without a tail (bf16 and f32 weights).
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn the_vector_tile_equals_the_scalar_one() {
        if !available() {
            return;
        }
        let (stride, len) = (40, 37);
        let xs: Vec<f32> = (0..TILE_ROWS * stride)
            .map(|i| (i % 7) as f32 - 3.0)
            .collect();
        let wf: Vec<f32> = (0..TILE_OUTS * stride)
            .map(|i| (i % 5) as f32 * 0.5)
            .collect();
        let wb: Vec<u16> = wf.iter().map(|v| (v.to_bits() >> 16) as u16).collect();
        for rows in 1..=TILE_ROWS {
            for outs in 1..=TILE_OUTS {
                let (mut fast, mut slow) = (
                    [[0f32; TILE_OUTS]; TILE_ROWS],
                    [[0f32; TILE_OUTS]; TILE_ROWS],
                );
                // SAFETY: AVX-512F checked above; both hold full rows of `stride`.
                unsafe { avx512::tile(&wf, &xs, stride, len, rows, outs, &mut fast) };
                scalar_tile(&wf, &xs, stride, len, rows, outs, &mut slow);
                assert_eq!(fast, slow, "f32 {rows}x{outs}");
                // SAFETY: as above.
                unsafe { avx512::tile(&wb, &xs, stride, len, rows, outs, &mut fast) };
                scalar_tile(&wb, &xs, stride, len, rows, outs, &mut slow);
                assert_eq!(fast, slow, "bf16 {rows}x{outs}");
            }
        }
    }

    #[test]
    fn shapes_it_cannot_take_are_errors() {
        let w = Tensor::zeros([4, 8], (Kind::Int, Device::Cpu));
        let x = Tensor::zeros([1, 8], (Kind::Float, Device::Cpu));
        assert!(linear(&x, &w, None).is_err());
        let w = Tensor::zeros([4, 8], (Kind::Float, Device::Cpu));
        let x = Tensor::zeros([1, 9], (Kind::Float, Device::Cpu));
        assert!(linear(&x, &w, None).is_err());
    }

    #[test]
    fn empty_products_are_empty_or_the_bias() {
        if !available() {
            return;
        }
        let w = Tensor::zeros([3, 0], (Kind::Float, Device::Cpu));
        let b = Tensor::ones([3], (Kind::Float, Device::Cpu));
        let x = Tensor::zeros([2, 0], (Kind::Float, Device::Cpu));
        let y = linear(&x, &w, Some(&b)).unwrap();
        assert_eq!(y.size(), [2, 3]);
        assert_eq!(y.sum(Kind::Float).double_value(&[]), 6.0);
    }

    #[test]
    fn the_scalar_reference_widens_bf16_exactly() {
        let w: Vec<u16> = [1.5f32, -2.0, 0.25]
            .iter()
            .map(|v| (v.to_bits() >> 16) as u16)
            .collect();
        let x = [2.0f32, 1.0, 4.0];
        let mut sums = [0f32; ROWS_PER_PASS];
        scalar_dot_rows(&w, &x, 3, 1, &mut sums);
        assert_eq!(sums[0], 2.0);
    }
}
