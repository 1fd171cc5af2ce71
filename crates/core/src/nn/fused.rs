//! The small per-token operations of decoding, each as one pass in Rust over f32 CPU tensors.
//!
//! Decoding one token runs about a hundred small operations per layer besides the
//! projections: the norms, the rotary turn of queries and keys, the KV-cache append,
//! attention over the cached keys. Each libtorch call costs a few microseconds of dispatch,
//! allocation and cold-cache overhead (every step streams hundreds of MB of weights through
//! the caches), far more than the arithmetic on a few thousand values. Measured on a 2-core
//! Zen 5, SmolLM2-360M int8, per call: RMSNorm (8 libtorch ops) 9 µs, rotary (7 ops) 7.5 µs,
//! the KV append 6.5 µs, the fused attention kernel 22 µs (it runs MKL's matrix-vector product
//! per head): about a fifth of a 11.5 ms step.
//!
//! Each function here computes what its libtorch counterpart computes, in one pass with one
//! output allocation, and returns `None` where it does not apply (not CPU f32, a layout it
//! does not read, a tensor that needs gradients), so the caller runs the libtorch version.
//! Every row is computed the same way whatever the batch, so batched results equal those of
//! each row alone, as they do with the libtorch version. The callers are the one RMSNorm
//! ([`super::norm`]), the one rotary turn ([`super::position`]), the one KV cache
//! ([`super::cache`]) and the one attention ([`super::attention`]).

use super::parallel::{for_each_task, SharedMut};
use super::streamed::Stored;
use crate::Result;
use tch::{Device, Kind, Tensor};

/// Whether `t` is an f32 CPU tensor that no gradient flows through.
fn plain_f32(t: &Tensor) -> bool {
    t.kind() == Kind::Float && t.device() == Device::Cpu && !t.requires_grad()
}

/// The f32 values of a contiguous CPU tensor (checked by the caller).
///
/// # Safety
/// `t` must be a contiguous CPU f32 tensor of `t.numel()` elements, not written while the
/// slice lives.
unsafe fn values(t: &Tensor) -> &[f32] {
    match t.numel() {
        0 => &[],
        n => std::slice::from_raw_parts(t.data_ptr() as *const f32, n),
    }
}

/// Elements below which a pass runs on the calling thread (a parallel region costs more
/// than the arithmetic).
const SERIAL: usize = 1 << 16;

/// RMSNorm, `weight · x / √(mean(x²) + eps)` over the last dimension, as
/// [`super::Norm::RmsNorm`] computes it with libtorch: the mean square summed in f32, the
/// same order of the final multiplications. `None` unless `x` and `weight` are f32 CPU
/// tensors without gradients and `x` is contiguous, or both contiguous bf16 ones.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Option<Tensor>> {
    if x.kind() == Kind::BFloat16 {
        return rms_norm_bf16(x, weight, eps);
    }
    let dim = weight.numel();
    if !plain_f32(x)
        || !plain_f32(weight)
        || !x.is_contiguous()
        || !weight.is_contiguous()
        || x.size().last().copied() != Some(dim as i64)
        || dim == 0
    {
        return Ok(None);
    }
    let y = Tensor::f_empty(x.size().as_slice(), (Kind::Float, Device::Cpu))?;
    // SAFETY: contiguous f32 CPU tensors (checked above), read only while `y` is written.
    let (xs, w) = unsafe { (values(x), values(weight)) };
    let out = SharedMut(y.data_ptr() as *mut f32);
    let rows = xs.len() / dim;
    let eps = eps as f32;
    let block = (SERIAL / dim).max(1);
    let run = |b: usize| {
        let first = b * block;
        for r in first..(first + block).min(rows) {
            let row = &xs[r * dim..(r + 1) * dim];
            let mean_square = simd::dot(row, row) / dim as f32;
            let inv = 1.0 / (mean_square + eps).sqrt();
            // SAFETY: `y` has `rows · dim` elements; this task alone writes row r.
            let y_row = unsafe { std::slice::from_raw_parts_mut(out.get().add(r * dim), dim) };
            for ((y, &v), &g) in y_row.iter_mut().zip(row).zip(w) {
                *y = g * (v * inv);
            }
        }
    };
    for_each_task(rows.div_ceil(block), &run);
    Ok(Some(y))
}

/// [`rms_norm`] for a bf16 model: `x` and `weight` bf16, as [`super::Norm::RmsNorm`]'s
/// tensor operations compute it (T5's and Llama's order): the row widened to f32, its mean
/// square in f32, `x · 1/√(mean + eps)` rounded to bf16, then times the weight, rounded
/// again. `None` unless both are contiguous bf16 CPU tensors without gradients.
fn rms_norm_bf16(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Option<Tensor>> {
    let dim = weight.numel();
    let plain = |t: &Tensor| {
        t.kind() == Kind::BFloat16
            && t.device() == Device::Cpu
            && !t.requires_grad()
            && t.is_contiguous()
    };
    if !plain(x) || !plain(weight) || x.size().last().copied() != Some(dim as i64) || dim == 0 {
        return Ok(None);
    }
    let y = Tensor::f_empty(x.size().as_slice(), (Kind::BFloat16, Device::Cpu))?;
    // SAFETY: contiguous bf16 CPU tensors (checked above), their bits read as u16, only read
    // while `y` is written.
    let (xs, w) = unsafe {
        (
            std::slice::from_raw_parts(x.data_ptr() as *const half::bf16, x.numel()),
            std::slice::from_raw_parts(weight.data_ptr() as *const half::bf16, dim),
        )
    };
    let out = SharedMut(y.data_ptr() as *mut half::bf16);
    let rows = xs.len() / dim;
    let eps = eps as f32;
    let block = (SERIAL / dim).max(1);
    let run = |b: usize| {
        let mut row32 = vec![0f32; dim];
        let first = b * block;
        for r in first..(first + block).min(rows) {
            for (v32, v) in row32.iter_mut().zip(&xs[r * dim..(r + 1) * dim]) {
                *v32 = v.to_f32();
            }
            let mean_square = simd::dot(&row32, &row32) / dim as f32;
            let inv = 1.0 / (mean_square + eps).sqrt();
            // SAFETY: `y` has `rows · dim` elements; this task alone writes row r.
            let y_row = unsafe { std::slice::from_raw_parts_mut(out.get().add(r * dim), dim) };
            for ((y, &v), &g) in y_row.iter_mut().zip(&row32).zip(w) {
                let normed = half::bf16::from_f32(v * inv);
                *y = half::bf16::from_f32(g.to_f32() * normed.to_f32());
            }
        }
    };
    for_each_task(rows.div_ceil(block), &run);
    Ok(Some(y))
}

/// The rotary turn `x·cos + rotate_half(x)·sin` of `x` `[batch, heads, seq, head_dim]` (any
/// strides with the last one 1) by `cos`, `sin` `[batch, 1, seq, head_dim]` (contiguous),
/// where `rotate_half([x₁, x₂]) = [−x₂, x₁]`: the same multiplications and addition, in the
/// same order, as [`super::RotaryAngles::apply`]'s tensor ops, into a contiguous result. All
/// three f32, or all bf16 (each product and the sum then rounded to bf16, as libtorch's bf16
/// operations round each result).
pub fn rotary(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Option<Tensor>> {
    let size = x.size();
    let [b, h, s, d] = size[..] else {
        return Ok(None);
    };
    let stride = x.stride();
    let kind = x.kind();
    let plain = |t: &Tensor| t.kind() == kind && t.device() == Device::Cpu && !t.requires_grad();
    if !matches!(kind, Kind::Float | Kind::BFloat16)
        || !plain(x)
        || !plain(cos)
        || !plain(sin)
        || stride[3] != 1
        || d % 2 != 0
        || cos.size() != [b, 1, s, d]
        || sin.size() != [b, 1, s, d]
        || !cos.is_contiguous()
        || !sin.is_contiguous()
        || x.numel() == 0
    {
        return Ok(None);
    }
    let y = Tensor::f_empty([b, h, s, d], (kind, Device::Cpu))?;
    let shape = [b as usize, h as usize, s as usize, d as usize];
    let stride = [stride[0], stride[1], stride[2]];
    // SAFETY: CPU tensors of the element type named (checked above), `cos`/`sin` contiguous
    // [b, 1, s, d], `x` of `shape` with `stride` and its last stride 1, `y` fresh and
    // contiguous of `shape`.
    unsafe {
        if kind == Kind::BFloat16 {
            rotary_as::<half::bf16>(x, cos, sin, &y, shape, stride);
        } else {
            rotary_as::<f32>(x, cos, sin, &y, shape, stride);
        }
    }
    Ok(Some(y))
}

/// An element [`rotary`] reads and writes: f32, or bf16 rounded after each operation.
trait Element: Copy + Send + Sync {
    fn get(self) -> f32;
    fn put(v: f32) -> Self;
}

impl Element for f32 {
    fn get(self) -> f32 {
        self
    }
    fn put(v: f32) -> Self {
        v
    }
}

impl Element for half::bf16 {
    fn get(self) -> f32 {
        self.to_f32()
    }
    fn put(v: f32) -> Self {
        half::bf16::from_f32(v) // to nearest, ties to even: libtorch's rounding
    }
}

/// [`rotary`]'s loop over elements of type `T`.
///
/// # Safety
/// As stated where [`rotary`] calls it.
unsafe fn rotary_as<T: Element>(
    x: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    y: &Tensor,
    [b, h, s, d]: [usize; 4],
    stride: [i64; 3],
) {
    let angles_len = b * s * d;
    let (cos, sin) = (
        std::slice::from_raw_parts(cos.data_ptr() as *const T, angles_len),
        std::slice::from_raw_parts(sin.data_ptr() as *const T, angles_len),
    );
    let half = d / 2;
    let xp = SharedMut(x.data_ptr() as *mut T);
    let out = SharedMut(y.data_ptr() as *mut T);
    let run = |bh: usize| {
        let (bi, hi) = (bh / h, bh % h);
        for si in 0..s {
            let offset = bi as i64 * stride[0] + hi as i64 * stride[1] + si as i64 * stride[2];
            // SAFETY: (bi, hi, si) is inside `x`'s sizes and its last stride is 1, so the
            // `d` values from `offset` are the head's; `y` is a fresh contiguous tensor of
            // x's sizes, and this task alone writes its (bi, hi) rows.
            let (row, y_row) = unsafe {
                (
                    std::slice::from_raw_parts(xp.get().offset(offset as isize), d),
                    std::slice::from_raw_parts_mut(out.get().add(((bi * h + hi) * s + si) * d), d),
                )
            };
            let angles = (bi * s + si) * d..(bi * s + si + 1) * d;
            let (c, sn) = (&cos[angles.clone()], &sin[angles]);
            for i in 0..d {
                let turned = if i < half {
                    -row[i + half].get()
                } else {
                    row[i - half].get()
                };
                let (a, b) = (
                    T::put(row[i].get() * c[i].get()),
                    T::put(turned * sn[i].get()),
                );
                y_row[i] = T::put(a.get() + b.get());
            }
        }
    };
    let tasks = b * h;
    if tasks * s * d < SERIAL {
        (0..tasks).for_each(run);
    } else {
        for_each_task(tasks, &run);
    }
}

/// `dst.copy_(src)` for two 4-D tensors of one size, CPU, one element type, the last
/// dimension contiguous in both: the KV cache's append of the new keys or values into its
/// buffer. Returns `false` (nothing copied) where it does not apply.
pub fn copy_rows(dst: &Tensor, src: &Tensor) -> bool {
    let size = src.size();
    let (ds, ss) = (dst.stride(), src.stride());
    if size.len() != 4
        || dst.size() != size
        || dst.kind() != src.kind()
        || dst.device() != Device::Cpu
        || src.device() != Device::Cpu
        || src.requires_grad()
        || ds[3] != 1
        || ss[3] != 1
        || src.numel() == 0
    {
        return false;
    }
    let bytes = src.kind().elt_size_in_bytes();
    let row = size[3] as usize * bytes;
    let (d, s) = (dst.data_ptr() as *mut u8, src.data_ptr() as *const u8);
    for i in 0..size[0] {
        for j in 0..size[1] {
            for k in 0..size[2] {
                let at = |st: &[i64]| (i * st[0] + j * st[1] + k * st[2]) as isize * bytes as isize;
                // SAFETY: (i, j, k) is inside both tensors' sizes and their last stride is 1,
                // so each side's `row` bytes from there are one row of it. The cache's new
                // slots never overlap the keys being appended (a fresh projection).
                unsafe { std::ptr::copy_nonoverlapping(s.offset(at(&ss)), d.offset(at(&ds)), row) };
            }
        }
    }
    true
}

/// Query rows up to which [`attention`] runs (decoding: one new token per row, or a few).
pub const ATTENTION_MAX_QUERIES: i64 = 8;

/// `softmax(q·kᵀ·scale + bias)·v` per head, with `k`/`v` heads shared by consecutive query
/// heads (grouped-query attention): `q` `[batch, heads, q_len, head_dim]`, `k`, `v`
/// `[batch, kv_heads, k_len, head_dim]` (any strides with the last one 1: the KV cache's
/// views), `bias` broadcastable to `[batch, heads, q_len, k_len]`. Each query row is one
/// pass over its keys and values: scores, their softmax (the maximum subtracted first, as
/// libtorch's kernel does), the weighted sum of the values, all in f32. `q`, `k` and `v` may
/// be bf16 (a bf16 model's cache, widened to f32 as it is read; the result is rounded to
/// bf16, where libtorch's kernel also accumulates in f32). `None` (the caller runs
/// libtorch's kernel) unless all are f32 or all bf16 CPU tensors without gradients, `q_len` ≤
/// [`ATTENTION_MAX_QUERIES`] and [`attends_in_registers`] takes the head width: without
/// AVX-512 the plain-Rust loop (its sums serial, as float addition does not reorder) is
/// slower than libtorch's kernel, and a speed-up on one CPU must not be a slow-down on
/// another.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    bias: Option<&Tensor>,
    scale: f64,
) -> Result<Option<Tensor>> {
    let [b, h, lq, d] = q.size()[..] else {
        return Ok(None);
    };
    let [kb, kh, lk, kd] = k.size()[..] else {
        return Ok(None);
    };
    let (ks, vs) = (k.stride(), v.stride());
    let kind = q.kind();
    let plain = |t: &Tensor, kinds: &[Kind]| {
        kinds.contains(&t.kind()) && t.device() == Device::Cpu && !t.requires_grad()
    };
    // (A bf16 model's mask may be f32 or bf16.)
    if !matches!(kind, Kind::Float | Kind::BFloat16)
        || !plain(q, &[kind])
        || !plain(k, &[kind])
        || !plain(v, &[kind])
        || bias.is_some_and(|m| !plain(m, &[kind, Kind::Float]))
        || lq > ATTENTION_MAX_QUERIES
        || !attends_in_registers(d)
        || kb != b
        || kd != d
        || kh == 0
        || h % kh != 0
        || v.size() != [b, kh, lk, d]
        || ks[3] != 1
        || vs[3] != 1
        || q.numel() == 0
        || lk == 0
    {
        return Ok(None);
    }
    // The bias as a [batch, heads, q_len, k_len] f32 view (stride 0 where it broadcasts).
    // (Converted only where it is bf16: each libtorch call costs microseconds in a step.)
    let bias = match bias {
        Some(m) if m.kind() != Kind::Float => Some(m.f_to_kind(Kind::Float)?),
        Some(m) => Some(m.shallow_clone()),
        None => None,
    };
    let bias = match bias {
        Some(m) => match m.f_expand([b, h, lq, lk], false) {
            Ok(m) if m.stride()[3] == 1 || lk == 1 => Some(m),
            _ => return Ok(None),
        },
        None => None,
    };
    let q = match kind {
        Kind::Float => q.f_contiguous()?,
        _ => q.f_to_kind(Kind::Float)?.f_contiguous()?,
    };
    let y = Tensor::f_empty([b, h, lq, d], (Kind::Float, Device::Cpu))?;
    let (b, h, lq, lk, d, kh) = (
        b as usize,
        h as usize,
        lq as usize,
        lk as usize,
        d as usize,
        kh as usize,
    );
    let group = h / kh;
    // SAFETY: contiguous f32 CPU tensor (made so above).
    let qs = unsafe { values(&q) };
    let (kp, vp) = (k.data_ptr() as usize, v.data_ptr() as usize);
    let bias_at = bias.as_ref().map(|m| (m.data_ptr() as usize, m.stride()));
    let out = SharedMut(y.data_ptr() as *mut f32);
    let scale = scale as f32;
    let geometry = Geometry {
        h,
        lq,
        lk,
        d,
        kh,
        group,
        ks: &ks,
        vs: &vs,
        scale,
    };
    let (rows, bias) = (Rows { qs, kp, vp, out }, bias_at.as_ref());
    match kind {
        Kind::BFloat16 => run_heads::<u16>(&geometry, &rows, bias, b),
        _ => run_heads::<f32>(&geometry, &rows, bias, b),
    }
    let y = if kind == Kind::Float {
        y
    } else {
        y.f_to_kind(kind)?
    };
    Ok(Some(y))
}

/// The shapes [`attention`] works over.
struct Geometry<'a> {
    h: usize,
    lq: usize,
    lk: usize,
    d: usize,
    kh: usize,
    group: usize,
    ks: &'a [i64],
    vs: &'a [i64],
    scale: f32,
}

/// Where [`attention`] reads and writes: `q` (f32, contiguous), the first key and value, the
/// output rows (f32, contiguous).
struct Rows<'a> {
    qs: &'a [f32],
    kp: usize,
    vp: usize,
    out: SharedMut<f32>,
}

/// [`attention`]'s work for keys and values stored as `T`: one task per (batch row,
/// key/value head), whose keys and values are read once for the query heads that share them.
fn run_heads<T: Stored>(g: &Geometry, rows: &Rows, bias_at: Option<&(usize, Vec<i64>)>, b: usize) {
    let (h, lq, lk, d, kh, group, ks, vs) = (g.h, g.lq, g.lk, g.d, g.kh, g.group, g.ks, g.vs);
    let run = |task: usize| {
        let (bi, kv) = (task / kh, task % kh);
        let mut scores = vec![0f32; lk];
        let head = Head {
            keys: (rows.kp as *const T)
                .wrapping_offset((bi as i64 * ks[0] + kv as i64 * ks[1]) as isize),
            key_stride: ks[2] as isize,
            values: (rows.vp as *const T)
                .wrapping_offset((bi as i64 * vs[0] + kv as i64 * vs[1]) as isize),
            value_stride: vs[2] as isize,
            len: lk,
            dim: d,
        };
        for hi in kv * group..(kv + 1) * group {
            for qi in 0..lq {
                let row = ((bi * h + hi) * lq + qi) * d;
                let bias = bias_at.map(|(mp, ms)| {
                    let at = bi as i64 * ms[0] + hi as i64 * ms[1] + qi as i64 * ms[2];
                    (
                        (*mp as *const f32).wrapping_offset(at as isize),
                        ms[3] as isize,
                    )
                });
                // SAFETY: the output is a fresh contiguous [b, h, lq, d] tensor; this task
                // alone writes the rows of its query heads.
                let y_row = unsafe { std::slice::from_raw_parts_mut(rows.out.get().add(row), d) };
                // SAFETY: `head` points at the (bi, kv) head of `k` and `v`, whose sizes and
                // strides `attention` checked, and `bias` at the (bi, hi, qi) row of the
                // [b, h, lq, lk] bias view.
                unsafe {
                    attend_row(
                        &rows.qs[row..row + d],
                        &head,
                        bias,
                        g.scale,
                        &mut scores,
                        y_row,
                    )
                };
            }
        }
    };
    let tasks = b * kh;
    if tasks * 2 * lk * d * lq * group < SERIAL {
        (0..tasks).for_each(run);
    } else {
        for_each_task(tasks, &run);
    }
}

/// Whether this CPU runs [`attention`] for heads of `dim` values in registers: AVX-512 and a
/// width of 16–96 or 128 values in steps of 16 (Llama-family and GPT-2 heads: 64, 128).
pub fn attends_in_registers(dim: i64) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        simd::has_avx512() && dim % 16 == 0 && matches!(dim / 16, 1..=6 | 8)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = dim;
        false
    }
}

/// One key/value head: its `len` rows of `dim` values, `key_stride` / `value_stride`
/// elements apart.
struct Head<T> {
    keys: *const T,
    key_stride: isize,
    values: *const T,
    value_stride: isize,
    len: usize,
    dim: usize,
}

/// `y = softmax(q·kᵀ·scale + bias)·v` for one query row `q` against `head`: the scores
/// (into `scores`, `head.len` long), their exponentials after subtracting the maximum, the
/// values weighted by them and divided by their total once. `bias`: the row's first bias
/// value and the stride between the next ones.
///
/// # Safety
/// `head` must point at `len` readable rows of `dim` values each; `bias` at `len` values.
unsafe fn attend_row<T: Stored>(
    q: &[f32],
    head: &Head<T>,
    bias: Option<(*const f32, isize)>,
    scale: f32,
    scores: &mut [f32],
    y: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if simd::has_avx512() && head.dim.is_multiple_of(16) {
        let run = match head.dim / 16 {
            1 => simd::avx512::attend_row::<T, 1>,
            2 => simd::avx512::attend_row::<T, 2>,
            3 => simd::avx512::attend_row::<T, 3>,
            4 => simd::avx512::attend_row::<T, 4>,
            5 => simd::avx512::attend_row::<T, 5>,
            6 => simd::avx512::attend_row::<T, 6>,
            8 => simd::avx512::attend_row::<T, 8>,
            _ => scalar_attend_row::<T>,
        };
        return run(q, head, bias, scale, scores, y);
    }
    scalar_attend_row(q, head, bias, scale, scores, y)
}

/// [`attend_row`] in plain Rust (other CPUs and head widths; also the test oracle).
///
/// # Safety
/// As for [`attend_row`].
unsafe fn scalar_attend_row<T: Stored>(
    q: &[f32],
    head: &Head<T>,
    bias: Option<(*const f32, isize)>,
    scale: f32,
    scores: &mut [f32],
    y: &mut [f32],
) {
    let d = head.dim;
    let row = |base: *const T, stride: isize, j: usize| {
        std::slice::from_raw_parts(base.offset(j as isize * stride), d)
    };
    for (j, s) in scores.iter_mut().enumerate().take(head.len) {
        let k = row(head.keys, head.key_stride, j);
        *s = q.iter().zip(k).map(|(a, b)| a * b.widen()).sum::<f32>() * scale;
        if let Some((m, stride)) = bias {
            *s += *m.offset(j as isize * stride);
        }
    }
    let scores = &mut scores[..head.len];
    let max = scores.iter().fold(f32::NEG_INFINITY, |a, &s| a.max(s));
    let mut total = 0f32;
    for s in scores.iter_mut() {
        *s = (*s - max).exp();
        total += *s;
    }
    y.fill(0.0);
    for (j, &p) in scores.iter().enumerate() {
        for (y, &v) in y.iter_mut().zip(row(head.values, head.value_stride, j)) {
            *y += p * v.widen();
        }
    }
    let inv = 1.0 / total;
    y.iter_mut().for_each(|y| *y *= inv);
}

/// The inner loops, with AVX-512 where the CPU has it (checked once).
mod simd {
    /// Whether this CPU has AVX-512F.
    #[cfg(target_arch = "x86_64")]
    pub fn has_avx512() -> bool {
        static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *HAS.get_or_init(|| std::arch::is_x86_feature_detected!("avx512f"))
    }

    /// `Σ a[i]·b[i]` over the shorter of the two.
    pub fn dot(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        #[cfg(target_arch = "x86_64")]
        if has_avx512() {
            // SAFETY: AVX-512F is present; both slices hold `n` values.
            return unsafe { avx512::dot(a.as_ptr(), b.as_ptr(), n) };
        }
        // Eight partial sums, which the compiler keeps in vector registers.
        let mut acc = [0f32; 8];
        let (ca, cb) = (a[..n].chunks_exact(8), b[..n].chunks_exact(8));
        let tail: f32 = ca
            .remainder()
            .iter()
            .zip(cb.remainder())
            .map(|(x, y)| x * y)
            .sum();
        for (x, y) in ca.zip(cb) {
            for i in 0..8 {
                acc[i] += x[i] * y[i];
            }
        }
        acc.iter().sum::<f32>() + tail
    }

    #[cfg(target_arch = "x86_64")]
    pub mod avx512 {
        use super::super::{Head, Stored};
        use std::arch::x86_64::*;

        /// # Safety
        /// AVX-512F; `a`, `b` point at `n` readable values.
        #[target_feature(enable = "avx512f")]
        pub unsafe fn dot(a: *const f32, b: *const f32, n: usize) -> f32 {
            let (mut s0, mut s1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
            let mut i = 0;
            while i + 32 <= n {
                s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a.add(i)), _mm512_loadu_ps(b.add(i)), s0);
                s1 = _mm512_fmadd_ps(
                    _mm512_loadu_ps(a.add(i + 16)),
                    _mm512_loadu_ps(b.add(i + 16)),
                    s1,
                );
                i += 32;
            }
            if i + 16 <= n {
                s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a.add(i)), _mm512_loadu_ps(b.add(i)), s0);
                i += 16;
            }
            if i < n {
                // The last < 16 values under a mask (the rest read as zero).
                let m: __mmask16 = (1u32 << (n - i)) as u16 - 1;
                s1 = _mm512_fmadd_ps(
                    _mm512_maskz_loadu_ps(m, a.add(i)),
                    _mm512_maskz_loadu_ps(m, b.add(i)),
                    s1,
                );
            }
            _mm512_reduce_add_ps(_mm512_add_ps(s0, s1))
        }

        /// [`super::super::attend_row`] for heads of `16·C` values: the query and the
        /// output row stay in `C` registers each while the keys and values stream past.
        ///
        /// # Safety
        /// AVX-512F; as for `attend_row`, with `head.dim == 16·C`.
        #[target_feature(enable = "avx512f")]
        pub unsafe fn attend_row<T: Stored, const C: usize>(
            q: &[f32],
            head: &Head<T>,
            bias: Option<(*const f32, isize)>,
            scale: f32,
            scores: &mut [f32],
            y: &mut [f32],
        ) {
            let mut qv = [_mm512_setzero_ps(); C];
            for (c, v) in qv.iter_mut().enumerate() {
                *v = _mm512_loadu_ps(q.as_ptr().add(16 * c));
            }
            let mut max = f32::NEG_INFINITY;
            for (j, s) in scores.iter_mut().enumerate().take(head.len) {
                let k = head.keys.offset(j as isize * head.key_stride);
                let mut acc = _mm512_mul_ps(qv[0], T::load16(k));
                for (c, v) in qv.iter().enumerate().skip(1) {
                    acc = _mm512_fmadd_ps(*v, T::load16(k.add(16 * c)), acc);
                }
                *s = _mm512_reduce_add_ps(acc) * scale;
                if let Some((m, stride)) = bias {
                    *s += *m.offset(j as isize * stride);
                }
                max = max.max(*s);
            }
            let mut total = 0f32;
            for s in scores.iter_mut().take(head.len) {
                *s = (*s - max).exp();
                total += *s;
            }
            let mut acc = [_mm512_setzero_ps(); C];
            for (j, &p) in scores.iter().enumerate().take(head.len) {
                let (p, v) = (
                    _mm512_set1_ps(p),
                    head.values.offset(j as isize * head.value_stride),
                );
                for (c, a) in acc.iter_mut().enumerate() {
                    *a = _mm512_fmadd_ps(p, T::load16(v.add(16 * c)), *a);
                }
            }
            let inv = _mm512_set1_ps(1.0 / total);
            for (c, a) in acc.iter().enumerate() {
                _mm512_storeu_ps(y.as_mut_ptr().add(16 * c), _mm512_mul_ps(*a, inv));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    thread_local! {
        /// This test's own random state: libtorch's generator is one per process, and the
        /// tests running beside one draw from it too, so a seeded test's inputs changed from
        /// run to run (and `attention_equals_libtorchs_kernel` crossed its bound about once
        /// in 35 runs). Each test runs on a thread of its own.
        static STATE: std::cell::Cell<u64> = const { std::cell::Cell::new(1) };
    }

    /// Start this test's random values from `n`.
    fn seed(n: u64) {
        STATE.with(|s| s.set(n.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1));
    }

    /// A uniform value in (0, 1) (xorshift64*).
    fn uniform() -> f64 {
        STATE.with(|s| {
            let mut x = s.get();
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            s.set(x);
            ((x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 + 0.5) / (1u64 << 53) as f64
        })
    }

    /// Unit normals of this test's random state (Box–Muller), f32 on the CPU.
    fn randn(size: &[i64]) -> Tensor {
        let n = size.iter().product::<i64>() as usize;
        let values: Vec<f32> = (0..n)
            .map(|_| {
                let (u1, u2) = (uniform(), uniform());
                ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
            })
            .collect();
        Tensor::from_slice(&values).reshape(size)
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
        (a - b).abs().max().double_value(&[])
    }

    #[test]
    fn rms_norm_is_the_tensor_ops_formula() {
        seed(1);
        // One row, a batch of rows, rows past the serial threshold, a width below 16.
        for size in [vec![1, 1, 960], vec![2, 3, 960], vec![80, 1000], vec![4, 7]] {
            let x = randn(&size) * 3.0;
            let w = randn(&size[size.len() - 1..]);
            let ours = rms_norm(&x, &w, 1e-5).unwrap().unwrap();
            let variance = x.pow_tensor_scalar(2).mean_dim(-1, true, Kind::Float);
            let expected = &w * (&x * (variance + 1e-5).rsqrt());
            assert!(max_diff(&ours, &expected) < 1e-5, "{size:?}");
            assert_eq!(ours.size(), size);
        }
    }

    #[test]
    fn bf16_rms_norm_is_the_tensor_ops_formula() {
        seed(6);
        for size in [
            vec![1, 1, 960],
            vec![2, 3, 2048],
            vec![80, 1000],
            vec![4, 7],
        ] {
            let x = (randn(&size) * 3.0).to_kind(Kind::BFloat16);
            let w = randn(&size[size.len() - 1..]).to_kind(Kind::BFloat16);
            let ours = rms_norm(&x, &w, 1e-5).unwrap().unwrap();
            assert_eq!(ours.kind(), Kind::BFloat16);
            // `Norm::RmsNorm`'s libtorch path for half-precision weights.
            let x32 = x.to_kind(Kind::Float);
            let variance = x32.pow_tensor_scalar(2).mean_dim(-1, true, Kind::Float);
            let normed = &x32 * (variance + 1e-5).rsqrt();
            let expected = &w * normed.to_kind(Kind::BFloat16);
            // Equal but where the f32 reciprocal square roots differ in their last bit and
            // that moves a bf16 rounding (one bf16 step, 2⁻⁸ relative, at most).
            let diff = (ours.to_kind(Kind::Float) - expected.to_kind(Kind::Float)).abs();
            let scale = expected.to_kind(Kind::Float).abs() + 1e-3;
            let worst = (diff / scale).max().double_value(&[]);
            assert!(worst <= 1.0 / 128.0, "{size:?}: {worst}");
        }
    }

    #[test]
    fn rotary_equals_the_tensor_ops_bit_for_bit() {
        seed(2);
        for (b, h, s, d) in [(1, 15, 1, 64), (2, 3, 5, 8), (1, 4, 300, 64)] {
            // Queries as attention makes them: a [b, s, h, d] projection seen as [b, h, s, d].
            let x = randn(&[b, s, h, d]).transpose(1, 2);
            let (cos, sin) = (randn(&[b, 1, s, d]), randn(&[b, 1, s, d]));
            let ours = rotary(&x, &cos, &sin).unwrap().unwrap();
            let half = d / 2;
            let turned = Tensor::cat(&[-x.narrow(3, half, half), x.narrow(3, 0, half)], 3);
            let expected = &x * &cos + turned * &sin;
            assert!(ours.equal(&expected), "{b}x{h}x{s}x{d}");
            // A bf16 model's: the tensor ops' roundings, to the bit.
            let bf16 = |t: &Tensor| t.to_kind(Kind::BFloat16);
            let (xb, cb, sb) = (bf16(&x), bf16(&cos), bf16(&sin));
            let ours = rotary(&xb, &cb, &sb).unwrap().unwrap();
            let turned = Tensor::cat(&[-xb.narrow(3, half, half), xb.narrow(3, 0, half)], 3);
            let expected = &xb * &cb + turned * &sb;
            assert!(ours.equal(&expected), "bf16 {b}x{h}x{s}x{d}");
        }
    }

    #[test]
    fn copy_rows_writes_what_copy_writes() {
        seed(3);
        let buffer = Tensor::zeros([2, 3, 16, 8], (Kind::Float, Device::Cpu));
        let new = randn(&[2, 4, 3, 8]).transpose(1, 2); // [2, 3, 4, 8], strided
        assert!(copy_rows(&buffer.narrow(2, 5, 4), &new));
        assert!(buffer.narrow(2, 5, 4).equal(&new));
        assert_eq!(
            buffer
                .narrow(2, 0, 5)
                .abs()
                .sum(Kind::Float)
                .double_value(&[]),
            0.0
        );
        // Another element type or a mismatched size is left to libtorch.
        assert!(!copy_rows(
            &buffer.narrow(2, 0, 4),
            &new.to_kind(Kind::Double)
        ));
        assert!(!copy_rows(&buffer.narrow(2, 0, 3), &new));
    }

    #[test]
    fn attention_equals_libtorchs_kernel() {
        seed(4);
        // (batch, heads, kv heads, queries, keys, head width): grouped heads, several query
        // rows, the widths of Llama-family and GPT-2 heads.
        for (b, h, kh, lq, lk, d) in [
            (1, 15, 5, 1, 96, 64),
            (2, 4, 4, 3, 17, 128),
            (3, 8, 2, 1, 40, 32),
        ] {
            if !attends_in_registers(d) {
                continue; // libtorch's kernel runs on this CPU
            }
            let q = randn(&[b, h, lq, d]);
            // Keys and values as the cache holds them: views of longer buffers.
            let k = randn(&[b, kh, lk + 9, d]).narrow(2, 0, lk);
            let v = randn(&[b, kh, lk + 9, d]).narrow(2, 0, lk);
            let padding = randn(&[b, 1, 1, lk]) * 4.0;
            let full = randn(&[b, h, lq, lk]);
            for bias in [None, Some(&padding), Some(&full)] {
                let ours = attention(&q, &k, &v, bias, 0.125).unwrap().unwrap();
                let expected = Tensor::scaled_dot_product_attention(
                    &q,
                    &k,
                    &v,
                    bias,
                    0.0,
                    false,
                    0.125,
                    h != kh,
                );
                let diff = max_diff(&ours, &expected);
                assert!(diff < 1e-5, "{b}x{h}/{kh}x{lq}x{lk}x{d}: {diff}");
                // A bf16 model's: the same values stored in bf16 (a bf16 or f32 mask), the
                // sums in f32, the result rounded to bf16 once.
                let bf16 = |t: &Tensor| t.to_kind(Kind::BFloat16);
                let (qb, kb, vb) = (bf16(&q), bf16(&k), bf16(&v));
                let float = |t: &Tensor| t.to_kind(Kind::Float);
                let exact = Tensor::scaled_dot_product_attention(
                    &float(&qb),
                    &float(&kb),
                    &float(&vb),
                    bias,
                    0.0,
                    false,
                    0.125,
                    h != kh,
                );
                for mask in [bias.map(Tensor::shallow_clone), bias.map(bf16)] {
                    let ours = attention(&qb, &kb, &vb, mask.as_ref(), 0.125)
                        .unwrap()
                        .unwrap();
                    assert_eq!(ours.kind(), Kind::BFloat16);
                    // One bf16 rounding of values below 4 (and of a bf16 mask): within 2⁻⁵.
                    let diff = max_diff(&float(&ours), &exact);
                    assert!(diff < 0.04, "bf16 {b}x{h}/{kh}x{lq}x{lk}x{d}: {diff}");
                }
            }
        }
    }

    /// The plain-Rust row (other CPUs' and widths' reference) against libtorch's kernel.
    #[test]
    fn the_plain_rust_row_equals_libtorchs_kernel() {
        seed(5);
        let (lk, d) = (23, 24);
        let q = randn(&[1, 1, 1, d]);
        let k = randn(&[1, 1, lk, d]);
        let v = randn(&[1, 1, lk, d]);
        let bias = randn(&[1, 1, 1, lk]);
        let head = Head {
            keys: k.data_ptr() as *const f32,
            key_stride: d as isize,
            values: v.data_ptr() as *const f32,
            value_stride: d as isize,
            len: lk as usize,
            dim: d as usize,
        };
        let (mut scores, mut y) = (vec![0f32; lk as usize], vec![0f32; d as usize]);
        // SAFETY: contiguous [1, 1, lk, d] keys and values and a [1, 1, 1, lk] bias.
        let qs = unsafe { values(&q) };
        let bias_row = Some((bias.data_ptr() as *const f32, 1));
        unsafe { scalar_attend_row(qs, &head, bias_row, 0.2, &mut scores, &mut y) };
        let ours = Tensor::from_slice(&y).view([1, 1, 1, d]);
        let expected =
            Tensor::scaled_dot_product_attention(&q, &k, &v, Some(&bias), 0.0, false, 0.2, false);
        assert!(max_diff(&ours, &expected) < 1e-5);
        // Widths the registers do not take go to libtorch.
        assert!(attention(&q, &k, &v, None, 0.2).unwrap().is_none());
    }

    #[test]
    fn what_it_does_not_take_is_left_to_libtorch() {
        let x = randn(&[1, 2, 1, 8]);
        let w = randn(&[8]);
        let half = x.to_kind(Kind::BFloat16);
        assert!(rms_norm(&half, &w, 1e-6).unwrap().is_none());
        assert!(rms_norm(&x.set_requires_grad(true), &w, 1e-6)
            .unwrap()
            .is_none());
        assert!(rotary(&half, &x, &x).unwrap().is_none());
        assert!(attention(&half, &half, &half, None, 1.0).unwrap().is_none());
        // Too many query rows for the decoding kernel.
        let many = randn(&[1, 2, ATTENTION_MAX_QUERIES + 1, 8]);
        assert!(attention(&many, &x, &x, None, 1.0).unwrap().is_none());
    }
}
