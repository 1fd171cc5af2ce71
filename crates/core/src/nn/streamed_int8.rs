//! An int8 projection for decoding that streams the quantized weight as it is stored, with
//! the CPU's 8-bit dot-product instruction.
//!
//! Decoding one token multiplies a few rows by every weight matrix: each int8 weight byte is
//! read once for one multiply-add per row, so the speed limit is the memory bandwidth. The
//! library's integer product (`_int_mm`) is built for large matrices and stays far from that
//! limit on a few rows (it prepares the weight on every call). This kernel reads the weight
//! rows straight from the tensor's memory, 64 bytes at a time, and multiplies them with
//! AVX-512 VNNI's `vpdpbusd`: 64 unsigned × 64 signed bytes, each group of four products
//! summed into one of 16 int32 lanes of an accumulator.
//!
//! `vpdpbusd` wants one operand unsigned. The activations are symmetric int8 (−127..=127, see
//! [`super::linear`]); shifted by 128 they are unsigned (1..=255), and the shift is taken
//! back out with the weight row's sum, computed once per weight ([`row_sums`]):
//!
//! ```text
//! Σ_k x[k]·w[k]  =  Σ_k (x[k] + 128)·w[k]  −  128 · Σ_k w[k]
//! ```
//!
//! Integer sums are exact (at most 255 · 127 · in per lane, far inside an i32), so the
//! product equals the library's bit for bit, and the rescale to f32 that follows is the same
//! operations in the same order as the library path's: the two kernels give identical
//! outputs, and the kernel table may pick either ([`super::kernels`]).
//!
//! The output rows are split into blocks that libtorch's threads share
//! ([`super::parallel`]); four weight rows are
//! read side by side, each multiplied by up to four input rows, so that every weight byte
//! loaded serves all the rows of the call. It needs AVX-512 with VNNI (checked at run time);
//! elsewhere [`available`] is false and the library's product runs.

use super::parallel::{for_each_task, rows_per_thread, task_bytes, SharedMut};
use crate::{Error, Result};
use tch::{Device, Kind, Tensor};

/// Rows up to which the kernel is a candidate: it re-reads the weight once per pass of
/// `ROWS_PER_PASS` rows, which only pays while the product is bound by memory.
pub const MAX_ROWS: i64 = 8;

/// Input rows multiplied in one pass over the weight (one accumulator each per weight row).
const ROWS_PER_PASS: usize = 4;

/// Weight rows read side by side in the inner loop.
const WEIGHT_ROWS: usize = 4;

/// Whether this CPU runs the kernel (x86-64 with AVX-512 F, BW and VNNI), checked once.
pub fn available() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512vnni")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    })
}

/// The sum of each row of an int8 weight `[out, in]`: what [`linear`] subtracts (times 128)
/// to undo the activations' shift.
pub fn row_sums(weight: &Tensor) -> Result<Vec<i32>> {
    let w = int8_rows(weight)?;
    let (out, in_dim) = (weight.size()[0] as usize, weight.size()[1] as usize);
    if in_dim == 0 {
        return Ok(vec![0; out]);
    }
    Ok(w.chunks_exact(in_dim)
        .map(|row| row.iter().map(|&v| i32::from(v)).sum())
        .collect())
}

/// A contiguous CPU int8 `[out, in]` tensor's values.
fn int8_rows(weight: &Tensor) -> Result<&[i8]> {
    let size = weight.size();
    if size.len() != 2
        || weight.kind() != Kind::Int8
        || weight.device() != Device::Cpu
        || !weight.is_contiguous()
    {
        return Err(Error::Input(format!(
            "the streamed int8 kernel takes a contiguous CPU int8 weight [out, in], not a \
             {:?} {size:?} tensor on {:?}",
            weight.kind(),
            weight.device()
        )));
    }
    let n = (size[0] * size[1]) as usize;
    if n == 0 {
        return Ok(&[]); // (an empty tensor's data pointer may be null)
    }
    // SAFETY: a contiguous CPU int8 tensor of n elements (checked above); the slice borrows
    // `weight`, which keeps its storage alive, and weights are only read once loaded.
    Ok(unsafe { std::slice::from_raw_parts(weight.data_ptr() as *const i8, n) })
}

/// What [`linear`] needs besides the activations: the quantized weight and its per-row
/// constants.
pub struct Weight<'a> {
    /// `[out, in]` int8, contiguous on the CPU.
    pub values: &'a Tensor,
    /// Each row's sum ([`row_sums`]).
    pub sums: &'a [i32],
    /// `[out]` f32: each output channel's scale.
    pub scales: &'a Tensor,
    /// `[out]` f32, optional.
    pub bias: Option<&'a Tensor>,
}

/// `y[r, j] = (Σ_k q[r, k] · W[j, k]) · row_scale[r] · scales[j] + bias[j]`: the int8
/// product of quantized activations `q` `[rows, in]` (int8, each row with its f32 scale in
/// `row_scale` `[rows]`) with the weight, rescaled to f32 `[rows, out]`. (The entry point
/// on the library's int8 tensors, which the tests compare with `_int_mm`; `Linear`
/// quantizes straight into the shifted bytes and calls [`linear_many_shifted`].)
pub fn linear(q: &Tensor, row_scale: &Tensor, weight: &Weight) -> Result<Tensor> {
    linear_many(q, row_scale, std::slice::from_ref(weight))?
        .pop()
        .ok_or_else(|| Error::Input("one weight gives one product".into()))
}

/// [`linear`] for several weights of the same input width at once (attention's q/k/v, a
/// gated feed-forward's two inputs): the activations are shifted once and the blocks of all
/// the weights are the tasks of one parallel pass, so the threads meet once rather than once
/// per weight. One `[rows, out]` result per weight, in their order.
pub fn linear_many(q: &Tensor, row_scale: &Tensor, weights: &[Weight]) -> Result<Vec<Tensor>> {
    let rows = q.size().first().copied().unwrap_or(0);
    let in_dim = q.size().get(1).copied().unwrap_or(0);
    if q.size() != [rows, in_dim]
        || q.kind() != Kind::Int8
        || q.device() != Device::Cpu
        || row_scale.kind() != Kind::Float
        || row_scale.device() != Device::Cpu
        || row_scale.size() != [rows]
    {
        return Err(Error::Input(
            "the streamed int8 kernel takes int8 x [rows, in] with f32 row scales [rows] on \
             the CPU"
                .into(),
        ));
    }
    let q = q.f_contiguous()?;
    let row_scale = Vec::<f32>::try_from(&row_scale.f_contiguous()?)?;
    let (rows, in_dim) = (rows as usize, in_dim as usize);
    let xs: &[u8] = if rows * in_dim == 0 {
        &[] // (an empty tensor's data pointer may be null)
    } else {
        // SAFETY: a contiguous CPU int8 tensor of rows × in_dim elements (checked above).
        unsafe { std::slice::from_raw_parts(q.data_ptr() as *const u8, rows * in_dim) }
    };
    // The activations shifted to unsigned bytes, x + 128 (flipping the sign bit).
    let shifted: Vec<u8> = xs.iter().map(|&b| b ^ 0x80).collect();
    linear_many_shifted(&shifted, &row_scale, rows, in_dim, weights)
}

/// [`linear_many`] on activations already quantized and shifted: `xu` `[rows, in]` holds
/// `q + 128` as unsigned bytes, `row_scale` each row's scale.
pub fn linear_many_shifted(
    xu: &[u8],
    row_scale: &[f32],
    rows: usize,
    in_dim: usize,
    weights: &[Weight],
) -> Result<Vec<Tensor>> {
    let f32_of = |t: &Tensor, n: usize| {
        t.kind() == Kind::Float
            && t.device() == Device::Cpu
            && t.is_contiguous()
            && t.numel() == n
            && t.dim() == 1
    };
    let mut outs = Vec::with_capacity(weights.len());
    let mut values = Vec::with_capacity(weights.len());
    for weight in weights {
        let w = int8_rows(weight.values)?;
        let [out, w_in] = weight.values.size()[..] else {
            return Err(Error::Input("an int8 weight must be 2-D".into()));
        };
        let out = out as usize;
        if !available()
            || xu.len() != rows * in_dim
            || row_scale.len() != rows
            || w_in as usize != in_dim
            || !f32_of(weight.scales, out)
            || !weight.bias.is_none_or(|b| f32_of(b, out))
            || weight.sums.len() != out
        {
            return Err(Error::Input(
                "the streamed int8 kernel takes int8 x [rows, in] with f32 row scales [rows], \
                 an int8 weight [out, in] with its row sums and f32 scales (and bias) [out], \
                 all on the CPU, on a CPU with AVX-512 VNNI"
                    .into(),
            ));
        }
        outs.push(out);
        values.push(w);
    }
    let ys = outs
        .iter()
        .map(|&out| Tensor::f_empty([rows as i64, out as i64], (Kind::Float, Device::Cpu)))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    // (Before any slice is made: an empty tensor's data pointer may be null.)
    if in_dim == 0 || rows == 0 {
        // Nothing to multiply: every sum is 0.
        return ys
            .into_iter()
            .zip(weights)
            .map(|(mut y, weight)| {
                let y = y.f_zero_()?;
                Ok(match weight.bias {
                    Some(b) => y.f_add(b)?,
                    None => y,
                })
            })
            .collect();
    }
    let read_f32 = |t: &Tensor, n: usize| {
        // SAFETY: a contiguous CPU f32 tensor of n elements (checked above), borrowed here.
        unsafe { std::slice::from_raw_parts(t.data_ptr() as *const f32, n) }
    };
    // Tasks of whole weight rows (a multiple of WEIGHT_ROWS) of all the weights together:
    // (weight, its first row). Up to ROWS_PER_PASS input rows (one pass over the weight), one
    // run of consecutive rows per thread, as the float kernel does (`streamed::stream`): one
    // long stream per thread reads faster than `task_bytes` tasks handed out in turn (same
    // binary, 5 alternating runs, batch 1: GPT-2 1.11×, SmolLM2-360M 1.14×, TinyLlama 1.05×;
    // `…-stream-per-thread-ab.log`). More rows keep those tasks to balance the threads.
    let all_rows: usize = outs.iter().sum();
    let block = if rows <= ROWS_PER_PASS {
        rows_per_thread(all_rows).next_multiple_of(WEIGHT_ROWS)
    } else {
        task_bytes(all_rows * in_dim)
            .div_ceil(in_dim)
            .next_multiple_of(WEIGHT_ROWS)
    };
    let tasks: Vec<(usize, usize)> = outs
        .iter()
        .enumerate()
        .flat_map(|(i, &out)| (0..out).step_by(block).map(move |first| (i, first)))
        .collect();
    // What the tasks read of each weight besides its values (slices: tensors are not Sync).
    let per_weight: Vec<Constants> = weights
        .iter()
        .zip(&outs)
        .map(|(w, &out)| {
            (
                read_f32(w.scales, out),
                w.bias.map(|b| read_f32(b, out)),
                w.sums,
            )
        })
        .collect();
    let y_ptrs: Vec<SharedMut<f32>> = ys
        .iter()
        .map(|y| SharedMut(y.data_ptr() as *mut f32))
        .collect();
    let run = |t: usize| {
        let (i, first) = tasks[t];
        let ((scales, bias, row_sums), out) = (per_weight[i], outs[i]);
        let n = block.min(out - first);
        let w_block = &values[i][first * in_dim..(first + n) * in_dim];
        let mut sums = vec![0i32; rows * n];
        product_block(w_block, in_dim, xu, rows, &mut sums); // [rows, n]
        let range = first..first + n;
        for (r, row) in sums.chunks_exact(n).enumerate() {
            // SAFETY: `ys[i]` is a fresh [rows, out] f32 buffer; this task alone writes the
            // columns first..first + n of it, and r < rows.
            let y =
                unsafe { std::slice::from_raw_parts_mut(y_ptrs[i].get().add(r * out + first), n) };
            let bias = bias.map(|b| &b[range.clone()]);
            let (row_sums, scales) = (&row_sums[range.clone()], &scales[range.clone()]);
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `available()` (checked above) says AVX-512 is there; all are n long.
            unsafe {
                vnni::rescale_row(row, row_sums, row_scale[r], scales, bias, y)
            };
            #[cfg(not(target_arch = "x86_64"))]
            rescale_row(row, row_sums, row_scale[r], scales, bias, y);
        }
    };
    for_each_task(tasks.len(), &run);
    Ok(ys)
}

/// One weight's scales, bias and row sums, as the tasks of [`linear_many`] read them.
type Constants<'a> = (&'a [f32], Option<&'a [f32]>, &'a [i32]);

/// `sums[r * n + j] = Σ_k xu[r * in + k] · w[j * in + k]` (unsigned × signed) for the
/// weight rows `w` `[n, in]` and the shifted activations `xu` `[rows, in]`.
fn product_block(w: &[i8], in_dim: usize, xu: &[u8], rows: usize, sums: &mut [i32]) {
    let n = w.len() / in_dim;
    for r0 in (0..rows).step_by(ROWS_PER_PASS) {
        let take = ROWS_PER_PASS.min(rows - r0);
        let x = &xu[r0 * in_dim..(r0 + take) * in_dim];
        let mut j = 0;
        while j < n {
            let tile = if n - j >= WEIGHT_ROWS { WEIGHT_ROWS } else { 1 };
            let mut out = [[0i32; ROWS_PER_PASS]; WEIGHT_ROWS];
            let w_tile = &w[j * in_dim..(j + tile) * in_dim];
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `linear` checked `available()`; the slices hold `tile` weight rows and
            // `take` activation rows of `in_dim` values.
            unsafe {
                vnni::tile(w_tile, x, in_dim, tile, take, &mut out)
            };
            #[cfg(not(target_arch = "x86_64"))]
            scalar_tile(w_tile, x, in_dim, tile, take, &mut out);
            for (jj, per_row) in out.iter().enumerate().take(tile) {
                for (r, s) in per_row.iter().enumerate().take(take) {
                    sums[(r0 + r) * n + j + jj] = *s;
                }
            }
            j += tile;
        }
    }
}

/// One activation row's rescale, the library path's operations in its order:
/// `y[c] = (sums[c] − 128·row_sums[c]) as f32 · row_scale · scales[c] (+ bias[c])`.
fn rescale_row(
    sums: &[i32],
    row_sums: &[i32],
    row_scale: f32,
    scales: &[f32],
    bias: Option<&[f32]>,
    y: &mut [f32],
) {
    for (c, out) in y.iter_mut().enumerate() {
        let mut v = (sums[c] - 128 * row_sums[c]) as f32 * row_scale * scales[c];
        if let Some(b) = bias {
            v += b[c];
        }
        *out = v;
    }
}

/// Portable reference of [`vnni::tile`] (also its test oracle).
#[cfg_attr(target_arch = "x86_64", allow(dead_code))]
fn scalar_tile(
    w: &[i8],
    xu: &[u8],
    in_dim: usize,
    tile: usize,
    rows: usize,
    out: &mut [[i32; ROWS_PER_PASS]; WEIGHT_ROWS],
) {
    for (j, w_row) in w.chunks_exact(in_dim).take(tile).enumerate() {
        for (r, x_row) in xu.chunks_exact(in_dim).take(rows).enumerate() {
            out[j][r] = w_row
                .iter()
                .zip(x_row)
                .map(|(&a, &b)| i32::from(a) * i32::from(b))
                .sum();
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod vnni {
    use super::{ROWS_PER_PASS, WEIGHT_ROWS};
    use std::arch::x86_64::*;

    /// `out[j][r] = Σ_k xu[r·in + k] · w[j·in + k]` for `tile` (1 or [`WEIGHT_ROWS`]) weight
    /// rows and `rows` ≤ [`ROWS_PER_PASS`] activation rows: the row counts picked at run
    /// time, the loops compiled for each so that the accumulators stay in registers.
    ///
    /// # Safety
    /// The CPU must have AVX-512 F, BW and VNNI; `w.len() ≥ tile · in_dim`,
    /// `xu.len() ≥ rows · in_dim`.
    pub(super) unsafe fn tile(
        w: &[i8],
        xu: &[u8],
        in_dim: usize,
        tile: usize,
        rows: usize,
        out: &mut [[i32; ROWS_PER_PASS]; WEIGHT_ROWS],
    ) {
        let (w, x) = (w.as_ptr(), xu.as_ptr());
        match (tile == WEIGHT_ROWS, rows) {
            (true, 1) => dot::<WEIGHT_ROWS, 1>(w, x, in_dim, out),
            (true, 2) => dot::<WEIGHT_ROWS, 2>(w, x, in_dim, out),
            (true, 3) => dot::<WEIGHT_ROWS, 3>(w, x, in_dim, out),
            (true, _) => dot::<WEIGHT_ROWS, 4>(w, x, in_dim, out),
            (false, 1) => dot::<1, 1>(w, x, in_dim, out),
            (false, 2) => dot::<1, 2>(w, x, in_dim, out),
            (false, 3) => dot::<1, 3>(w, x, in_dim, out),
            (false, _) => dot::<1, 4>(w, x, in_dim, out),
        }
    }

    /// [`tile`] for `J` weight rows and `R` activation rows.
    ///
    /// # Safety
    /// As for [`tile`], with `tile = J`, `rows = R`.
    // (Index loops: the tile is `acc[j][r]`, read across both indices; iterators would hide it.)
    #[allow(clippy::needless_range_loop)]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn dot<const J: usize, const R: usize>(
        w: *const i8,
        x: *const u8,
        in_dim: usize,
        out: &mut [[i32; ROWS_PER_PASS]; WEIGHT_ROWS],
    ) {
        let mut acc = [[_mm512_setzero_si512(); R]; J];
        let full = in_dim / 64 * 64;
        let mut k = 0;
        while k < full {
            // 64 bytes of each weight row, then each activation row against all of them.
            let mut wv = [_mm512_setzero_si512(); J];
            for (j, v) in wv.iter_mut().enumerate() {
                *v = _mm512_loadu_si512(w.add(j * in_dim + k) as *const _);
            }
            for r in 0..R {
                let xv = _mm512_loadu_si512(x.add(r * in_dim + k) as *const _);
                for j in 0..J {
                    acc[j][r] = _mm512_dpbusd_epi32(acc[j][r], xv, wv[j]);
                }
            }
            k += 64;
        }
        if k < in_dim {
            // The last < 64 bytes, read under a mask (the rest zero, adding nothing).
            let mask: __mmask64 = (1u64 << (in_dim - k)) - 1;
            let mut wv = [_mm512_setzero_si512(); J];
            for (j, v) in wv.iter_mut().enumerate() {
                *v = _mm512_maskz_loadu_epi8(mask, w.add(j * in_dim + k));
            }
            for r in 0..R {
                let xv = _mm512_maskz_loadu_epi8(mask, x.add(r * in_dim + k) as *const i8);
                for j in 0..J {
                    acc[j][r] = _mm512_dpbusd_epi32(acc[j][r], xv, wv[j]);
                }
            }
        }
        if J == 4 {
            // Four weight rows' sums at once: a quarter of the shuffles of four reductions
            // (integer sums: the same result in any order).
            for r in 0..R {
                let mut sums = [0i32; 4];
                let v = sum4(acc[0][r], acc[1][r], acc[2][r], acc[3][r]);
                _mm_storeu_si128(sums.as_mut_ptr() as *mut __m128i, v);
                for j in 0..J {
                    out[j][r] = sums[j];
                }
            }
            return;
        }
        for j in 0..J {
            for r in 0..R {
                out[j][r] = _mm512_reduce_add_epi32(acc[j][r]);
            }
        }
    }

    /// [`super::rescale_row`] 16 outputs at a time: the same operations in the same order (no
    /// fused multiply-add), so the same values.
    ///
    /// # Safety
    /// The CPU must have AVX-512 F; all slices as long as `y`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn rescale_row(
        sums: &[i32],
        row_sums: &[i32],
        row_scale: f32,
        scales: &[f32],
        bias: Option<&[f32]>,
        y: &mut [f32],
    ) {
        let n = y.len();
        let full = n / 16 * 16;
        let (k128, rs) = (_mm512_set1_epi32(128), _mm512_set1_ps(row_scale));
        let mut c = 0;
        while c < full {
            let s = _mm512_loadu_si512(sums.as_ptr().add(c) as *const _);
            let corr = _mm512_mullo_epi32(
                k128,
                _mm512_loadu_si512(row_sums.as_ptr().add(c) as *const _),
            );
            let mut v = _mm512_mul_ps(
                _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(s, corr)), rs),
                _mm512_loadu_ps(scales.as_ptr().add(c)),
            );
            if let Some(b) = bias {
                v = _mm512_add_ps(v, _mm512_loadu_ps(b.as_ptr().add(c)));
            }
            _mm512_storeu_ps(y.as_mut_ptr().add(c), v);
            c += 16;
        }
        super::rescale_row(
            &sums[full..],
            &row_sums[full..],
            row_scale,
            &scales[full..],
            bias.map(|b| &b[full..]),
            &mut y[full..],
        );
    }

    /// The sums of the 16 lanes of each of `a`, `b`, `c`, `d`, as `[Σa, Σb, Σc, Σd]`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn sum4(a: __m512i, b: __m512i, c: __m512i, d: __m512i) -> __m128i {
        // Per 128-bit lane: [a0+a2, b0+b2, a1+a3, b1+b3], likewise for c, d …
        let ab = _mm512_add_epi32(_mm512_unpacklo_epi32(a, b), _mm512_unpackhi_epi32(a, b));
        let cd = _mm512_add_epi32(_mm512_unpacklo_epi32(c, d), _mm512_unpackhi_epi32(c, d));
        // … then [a, b, c, d] partial sums in each lane …
        let abcd = _mm512_add_epi32(_mm512_unpacklo_epi64(ab, cd), _mm512_unpackhi_epi64(ab, cd));
        // … and the four lanes added.
        let half = _mm256_add_epi32(
            _mm512_castsi512_si256(abcd),
            _mm512_extracti64x4_epi64::<1>(abcd),
        );
        _mm_add_epi32(
            _mm256_castsi256_si128(half),
            _mm256_extracti128_si256::<1>(half),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::linear::quantize_rows;

    /// Identical to the library's integer product, rescaled the same way: every row count up
    /// to MAX_ROWS (passes of four and a remainder), input widths with and without a tail
    /// under 64, output counts with a remainder under four and across several tasks (the
    /// last one shorter).
    #[test]
    fn the_streamed_int8_product_equals_the_librarys_bit_for_bit() {
        if !available() {
            return; // nothing to compare on this CPU: the library's product runs instead
        }
        tch::manual_seed(5);
        for (out, in_dim) in [
            (7, 64),
            (130, 77),
            (67, 300),
            (1030, 128),
            (2100, 130),
            (36, 960),
            (20, 1100),
        ] {
            let w = Tensor::randn([out, in_dim], (Kind::Float, Device::Cpu));
            let (wq, scales) = quantize_rows(&w).unwrap();
            let sums = row_sums(&wq).unwrap();
            let b = Tensor::randn([out], (Kind::Float, Device::Cpu));
            for rows in 1..=MAX_ROWS {
                let x = Tensor::randn([rows, in_dim], (Kind::Float, Device::Cpu)) * 4.0;
                let (xq, row_scale) = quantize_rows(&x).unwrap();
                for bias in [Some(&b), None] {
                    let weight = Weight {
                        values: &wq,
                        sums: &sums,
                        scales: &scales,
                        bias,
                    };
                    let ours = linear(&xq, &row_scale, &weight).unwrap();
                    let mut expected = xq
                        .internal_int_mm(&wq.tr())
                        .to_kind(Kind::Float)
                        .g_mul(&row_scale.unsqueeze(1))
                        .g_mul(&scales);
                    if let Some(b) = bias {
                        expected = expected.g_add(b);
                    }
                    assert!(
                        ours.equal(&expected),
                        "{rows}x{out}x{in_dim}, bias {}",
                        bias.is_some()
                    );
                }
            }
        }
    }

    /// Several weights in one pass give what each gives alone, to the bit.
    #[test]
    fn several_weights_at_once_equal_each_alone() {
        if !available() {
            return;
        }
        tch::manual_seed(7);
        let weights: Vec<_> = [200, 5, 3000]
            .into_iter()
            .map(|out| {
                let (q, s) =
                    quantize_rows(&Tensor::randn([out, 130], (Kind::Float, Device::Cpu))).unwrap();
                let sums = row_sums(&q).unwrap();
                let bias = Tensor::randn([out], (Kind::Float, Device::Cpu));
                (q, s, sums, bias)
            })
            .collect();
        let all: Vec<Weight> = weights
            .iter()
            .enumerate()
            .map(|(i, (q, s, sums, b))| Weight {
                values: q,
                sums,
                scales: s,
                bias: (i == 1).then_some(b),
            })
            .collect();
        for rows in [1, 4, 7] {
            let x = Tensor::randn([rows, 130], (Kind::Float, Device::Cpu));
            let (xq, row_scale) = quantize_rows(&x).unwrap();
            let together = linear_many(&xq, &row_scale, &all).unwrap();
            for (w, y) in all.iter().zip(&together) {
                assert!(y.equal(&linear(&xq, &row_scale, w).unwrap()), "{rows}");
            }
        }
    }

    #[test]
    fn row_sums_and_the_scalar_reference_are_plain_integer_sums() {
        let w = Tensor::from_slice(&[1i8, -2, 3, 127, -127, 0]).view([2, 3]);
        assert_eq!(row_sums(&w).unwrap(), [2, 0]);
        let mut out = [[0i32; ROWS_PER_PASS]; WEIGHT_ROWS];
        let wv = [1i8, -2, 3];
        scalar_tile(&wv, &[255, 1, 128], 3, 1, 1, &mut out);
        assert_eq!(out[0][0], 255 - 2 + 384);
    }

    #[test]
    fn inputs_it_cannot_take_are_errors() {
        let w = Tensor::zeros([4, 8], (Kind::Float, Device::Cpu));
        assert!(row_sums(&w).is_err());
        let wq = Tensor::zeros([4, 8], (Kind::Int8, Device::Cpu));
        let scales = Tensor::ones([4], (Kind::Float, Device::Cpu));
        let weight = Weight {
            values: &wq,
            sums: &[0; 4],
            scales: &scales,
            bias: None,
        };
        let x = Tensor::zeros([1, 7], (Kind::Int8, Device::Cpu));
        let s = Tensor::ones([1], (Kind::Float, Device::Cpu));
        assert!(linear(&x, &s, &weight).is_err());
        // Empty inputs are no error: zero rows give zero rows.
        if available() {
            let none = Tensor::zeros([0, 8], (Kind::Int8, Device::Cpu));
            let no_scales = Tensor::ones([0], (Kind::Float, Device::Cpu));
            let y = linear(&none, &no_scales, &weight).unwrap();
            assert_eq!(y.size(), [0, 4]);
        }
        let empty = Tensor::zeros([3, 0], (Kind::Int8, Device::Cpu));
        assert_eq!(row_sums(&empty).unwrap(), [0, 0, 0]);
    }
}
