//! The search strategies: greedy search and sampling (one token per sequence and step), and
//! beam search (the `num_beams` best partial sequences per input), each reproducing
//! transformers' `generate` token for token.

use super::logits::{apply, apply_with_spare, LogitsProcessor};
use super::stream::{Hooks, StopStrings, Token};
use super::{Decoder, EarlyStopping, GenerationConfig, Sequence};
use crate::text::tensor_to_rows;
use crate::{Error, Result};
use tch::{Device, Kind, Tensor};

/// The additive score that takes a beam candidate out of the running, as transformers uses.
const OUT: f64 = -1.0e9;

/// `rows` (all of the same length) as a `[rows, len]` int64 tensor on `device`.
pub(crate) fn ids_tensor(rows: &[Vec<i64>], device: Device) -> Result<Tensor> {
    let len = rows.first().map_or(0, Vec::len) as i64;
    let flat: Vec<i64> = rows.iter().flatten().copied().collect();
    Ok(Tensor::f_from_slice(&flat)?
        .f_view([rows.len() as i64, len])?
        .f_to(device)?)
}

/// A small deterministic generator (SplitMix64) owned by one generation run, so that a seed
/// reproduces a sample regardless of what else uses libtorch's global generator.
pub(crate) struct Rng(u64);

impl Rng {
    /// Seeded with `seed`, or from the clock.
    pub(crate) fn new(seed: Option<u64>) -> Self {
        Rng(seed.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0x5EED, |d| d.as_nanos() as u64)
        }))
    }

    /// One generator per output sequence: with a seed, stream `stream` of it (the same for a
    /// given seed and stream, whatever else is in the batch), so that a prompt samples the
    /// same text alone or batched with others; without one, from the clock.
    pub(crate) fn stream(seed: Option<u64>, stream: u64) -> Self {
        let mut base = Rng::new(seed.map(|s| s ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03)));
        if seed.is_none() {
            base.0 = base
                .0
                .wrapping_add(stream.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        }
        // Mix once, so that neighbouring streams start far apart.
        Rng(base.next_u64())
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// An index drawn with probability proportional to `weights`; None when all are 0.
    pub(crate) fn categorical(&mut self, weights: &[f64]) -> Option<usize> {
        let total: f64 = weights.iter().sum();
        if !(total > 0.0 && total.is_finite()) {
            return None;
        }
        let target = self.uniform() * total;
        let mut acc = 0.0;
        let mut last = None;
        for (i, &w) in weights.iter().enumerate() {
            if w > 0.0 {
                acc += w;
                last = Some(i);
                if acc > target {
                    return Some(i);
                }
            }
        }
        last // rounding left the target just above the sum
    }

    /// `k` distinct indices drawn without replacement, like `torch.multinomial(p, k)`.
    fn categorical_distinct(&mut self, weights: &mut [f64], k: usize) -> Result<Vec<usize>> {
        (0..k)
            .map(|_| {
                let i = self.categorical(weights).ok_or_else(no_candidates)?;
                weights[i] = 0.0;
                Ok(i)
            })
            .collect()
    }
}

pub(crate) fn no_candidates() -> Error {
    Error::Input(
        "no token can be generated: the processors (top-k, top-p, bad words, …) removed every \
         candidate"
            .into(),
    )
}

/// Greedy search's pick: the index of each row's largest score, `[rows, vocab]` → one id per
/// row, as `torch.argmax(scores, -1)` gives it (the first of equal maxima; the first NaN where
/// a row has one). On the CPU, for f32 scores, its own loop, rows spread over the threads:
/// libtorch's reduction runs on one thread, one element at a time, and took 3.9 % of OPUS-MT
/// greedy decoding's samples (64 rows × 58,101 scores a step, ≈ 3.5 ms; 2-core Intel Xeon).
/// Elsewhere libtorch's.
pub(crate) fn argmax_rows(scores: &Tensor) -> Result<Vec<i64>> {
    let size = scores.size();
    let ours = scores.device() == Device::Cpu
        && scores.kind() == Kind::Float
        && size.len() == 2
        && size[0] > 0
        && size[1] > 0
        && scores.is_contiguous();
    if !ours {
        return Ok(Vec::<i64>::try_from(
            &scores.f_argmax(-1, false)?.f_to(Device::Cpu)?,
        )?);
    }
    let (rows, vocab) = (size[0] as usize, size[1] as usize);
    // SAFETY: a contiguous CPU f32 tensor of rows × vocab values, alive for the call and
    // only read.
    let all = unsafe { std::slice::from_raw_parts(scores.data_ptr() as *const f32, rows * vocab) };
    let mut picks = vec![0i64; rows];
    let out = crate::nn::parallel::SharedMut(picks.as_mut_ptr());
    let pick = |r: usize| {
        let best = first_max(&all[r * vocab..(r + 1) * vocab]) as i64;
        // SAFETY: `picks` has `rows` elements and outlives the loop; task r alone writes
        // element r.
        unsafe { *out.get().add(r) = best };
    };
    each_row(rows, &pick);
    Ok(picks)
}

/// `task(r)` for each row `r` of a score tensor: one task per row on libtorch's threads, or
/// on this thread alone for a single row (no parallel region to start for one task).
fn each_row(rows: usize, task: &(dyn Fn(usize) + Sync)) {
    if rows > 1 {
        crate::nn::parallel::for_each_task(rows, task);
    } else {
        (0..rows).for_each(task);
    }
}

/// The index of the first largest value of a non-empty slice (the first NaN if there is one),
/// in two passes the compiler vectorizes: the maximum in 16 lanes, then the first chunk of 16
/// holding it.
fn first_max(xs: &[f32]) -> usize {
    const LANES: usize = 16;
    let mut top = [f32::NEG_INFINITY; LANES];
    let mut nan = [false; LANES];
    let chunks = xs.chunks_exact(LANES);
    let rest = chunks.remainder();
    for chunk in chunks {
        for i in 0..LANES {
            let v = chunk[i];
            nan[i] |= v.is_nan();
            top[i] = if v > top[i] { v } else { top[i] };
        }
    }
    if nan.contains(&true) || rest.iter().any(|v| v.is_nan()) {
        return xs.iter().position(|v| v.is_nan()).unwrap_or(0);
    }
    let max = top
        .iter()
        .chain(rest)
        .fold(f32::NEG_INFINITY, |a, &b| if b > a { b } else { a });
    let mut start = 0;
    for chunk in xs.chunks(LANES) {
        // No early exit inside a chunk, so that the comparison vectorizes.
        if chunk.iter().fold(false, |hit, &v| hit | (v == max)) {
            return start + chunk.iter().position(|&v| v == max).unwrap_or(0);
        }
        start += chunk.len();
    }
    0 // (not reached: the maximum is one of the values)
}

/// Beam search's pick: the `k` largest scores of each row and their indices, `[rows, n]` →
/// (`[rows, k]` f32, `[rows, k]` i64), largest first, as `torch.topk(scores, k)` gives them
/// (of equal scores at the cut, the earlier ones). On the CPU, for f32 scores without NaN and
/// k ≤ 64, its own loop, rows spread over the threads: one pass per row that looks inside a
/// chunk of 16 scores only when the chunk's maximum beats the k-th best so far. libtorch's
/// copies each row into (value, index) pairs and partially sorts them on one thread: 9 % of
/// OPUS-MT beam-4 decoding's samples (64 rows × 232,404 scores a step; 2-core Intel Xeon).
/// Elsewhere (or where a row holds a NaN) libtorch's.
pub(crate) fn topk_rows(scores: &Tensor, k: i64) -> Result<(Tensor, Tensor)> {
    let size = scores.size();
    let ours = scores.device() == Device::Cpu
        && scores.kind() == Kind::Float
        && size.len() == 2
        && size[0] > 0
        && (1..=64).contains(&k)
        && k <= size[1]
        && scores.is_contiguous();
    if !ours {
        return Ok(scores.f_topk(k, -1, true, true)?);
    }
    let (rows, n, k) = (size[0] as usize, size[1] as usize, k as usize);
    // SAFETY: a contiguous CPU f32 tensor of rows × n values, alive for the call, only read.
    let all = unsafe { std::slice::from_raw_parts(scores.data_ptr() as *const f32, rows * n) };
    let mut values = vec![0f32; rows * k];
    let mut indices = vec![0i64; rows * k];
    let mut nan = vec![false; rows];
    let (v_out, i_out, nan_out) = (
        crate::nn::parallel::SharedMut(values.as_mut_ptr()),
        crate::nn::parallel::SharedMut(indices.as_mut_ptr()),
        crate::nn::parallel::SharedMut(nan.as_mut_ptr()),
    );
    let row_task = |r: usize| {
        let mut best = Vec::with_capacity(k + 1);
        let found_nan = top_k(&all[r * n..(r + 1) * n], k, &mut best);
        // SAFETY: the three buffers outlive the loop; task r alone writes row r of each.
        unsafe {
            *nan_out.get().add(r) = found_nan;
            for (j, &(v, i)) in best.iter().enumerate() {
                *v_out.get().add(r * k + j) = v;
                *i_out.get().add(r * k + j) = i as i64;
            }
        }
    };
    each_row(rows, &row_task);
    if nan.contains(&true) {
        return Ok(scores.f_topk(k as i64, -1, true, true)?);
    }
    let shape = [rows as i64, k as i64];
    Ok((
        Tensor::f_from_slice(&values)?.f_view(shape)?,
        Tensor::f_from_slice(&indices)?.f_view(shape)?,
    ))
}

/// The `k` (≤ `xs.len()`) largest values of `xs` with their indices into `best`, largest
/// first, equal values in index order; true (and `best` unfinished) if `xs` holds a NaN.
fn top_k(xs: &[f32], k: usize, best: &mut Vec<(f32, usize)>) -> bool {
    const LANES: usize = 16;
    best.clear();
    for (c, chunk) in xs.chunks(LANES).enumerate() {
        // The chunk's maximum and whether it holds a NaN, without branches (vectorized).
        let (top, nan) = chunk
            .iter()
            .fold((f32::NEG_INFINITY, false), |(m, nan), &v| {
                (if v > m { v } else { m }, nan | v.is_nan())
            });
        if nan {
            return true;
        }
        let full = best.len() == k;
        if full && top <= best[k - 1].0 {
            continue; // nothing here beats the k-th best (equal ones lose to earlier ones)
        }
        for (j, &v) in chunk.iter().enumerate() {
            if best.len() == k {
                if v <= best[k - 1].0 {
                    continue;
                }
                best.pop();
            }
            // After every kept value at least as large: earlier indices first among equals.
            let at = best.partition_point(|&(b, _)| b >= v);
            best.insert(at, (v, c * LANES + j));
        }
    }
    false
}

/// Probabilities of each row of `scores` as f64, on the CPU.
pub(crate) fn probabilities(scores: &Tensor) -> Result<Vec<Vec<f64>>> {
    let probs = scores
        .f_softmax(-1, Kind::Float)?
        .f_to_kind(Kind::Double)?
        .f_to(Device::Cpu)?
        .f_contiguous()?;
    Ok(Vec::<Vec<f64>>::try_from(&probs)?)
}

/// Greedy search (`do_sample` false) or sampling, `num_beams == 1`.
///
/// `rows` are the starting ids, one per output sequence (inputs already repeated for
/// `num_return_sequences`), and `inputs[i]` the input that row `i` continues.
#[allow(clippy::too_many_arguments)]
pub(crate) fn greedy_or_sample<D: Decoder + ?Sized>(
    decoder: &D,
    state: &mut D::State,
    mut rows: Vec<Vec<i64>>,
    inputs: Vec<usize>,
    config: &GenerationConfig,
    max_len: usize,
    device: Device,
    hooks: &mut Hooks,
    stops: &StopStrings,
) -> Result<Vec<Sequence>> {
    let prompt_len = rows.first().map_or(0, Vec::len);
    let processors: Vec<Box<dyn LogitsProcessor>> = config.processors(prompt_len);
    let fill = config.fill_token_id();
    let eos = config.eos_token_ids();
    // One generator per row, by its copy number within its input (rows are input-major), so
    // that sampling does not depend on the batch: a prompt gives the same text alone or among
    // others, and its copies (num_return_sequences) differ.
    let mut rngs: Vec<Rng> = (0..rows.len())
        .map(|r| {
            let copy = inputs[..r].iter().filter(|&&i| i == inputs[r]).count();
            Rng::stream(config.seed, copy as u64)
        })
        .collect();
    let mut lens: Vec<Option<usize>> = vec![None; rows.len()]; // Some(len) once finished
    let mut ids = ids_tensor(&rows, device)?;
    loop {
        let logits = decoder.step(&ids, state)?.f_to_kind(Kind::Float)?; // [rows, vocab]
        let scores = apply(&processors, &rows, logits)?;
        let next: Vec<i64> = if config.do_sample() {
            let mut picks = Vec::with_capacity(rows.len());
            for (p, rng) in probabilities(&scores)?.into_iter().zip(&mut rngs) {
                picks.push(rng.categorical(&p).ok_or_else(no_candidates)? as i64);
            }
            picks
        } else {
            argmax_rows(&scores)?
        };
        for (i, row) in rows.iter_mut().enumerate() {
            if lens[i].is_some() {
                row.push(fill); // finished sequences are padded
                continue;
            }
            row.push(next[i]);
            hooks.emit(Token {
                sequence: i,
                id: next[i],
            })?;
            let done =
                eos.contains(&next[i]) || row.len() >= max_len || stops.hit(&row[prompt_len..])?;
            if done {
                lens[i] = Some(row.len());
            }
        }
        let cur_len = rows.first().map_or(0, Vec::len);
        if lens.iter().all(Option::is_some) || cur_len >= max_len {
            break;
        }
        ids = Tensor::f_from_slice(&next)?
            .f_view([next.len() as i64, 1])?
            .f_to(device)?;
    }
    let width = rows.first().map_or(0, Vec::len);
    Ok(rows
        .into_iter()
        .zip(inputs)
        .zip(lens)
        .map(|((ids, input), len)| Sequence {
            input,
            ids,
            prompt_len,
            len: len.unwrap_or(width),
            score: None,
        })
        .collect())
}

/// `t[b, idx[b, j], ...]` for `t` `[batch, beams, ...]` and `idx` `[batch, n]`.
fn gather_beams(t: &Tensor, idx: &Tensor) -> Result<Tensor> {
    let mut shape = t.size();
    shape[1] = idx.size()[1];
    let mut index = idx.shallow_clone();
    while index.dim() < t.dim() {
        index = index.f_unsqueeze(-1)?;
    }
    Ok(t.f_gather(1, &index.f_expand(shape.as_slice(), false)?, false)?)
}

/// The beams of every input during beam search, `[batch, beams, …]` tensors on the CPU:
/// the hypotheses still running and the best finished ones, with transformers' bookkeeping
/// (scores in float32, `-1e9` for "out of the running"), so that ties and rounding agree.
struct Beams {
    batch: i64,
    beams: i64,
    prompt_len: usize,
    /// `[batch, beams, max_len]` token ids, filler after the current length.
    running: Tensor,
    /// `[batch, beams]` summed log-probabilities.
    running_scores: Tensor,
    /// `[batch, beams, max_len]` the best finished hypotheses, best first.
    finished: Tensor,
    /// `[batch, beams]` their length-penalised scores (`-1e9` for empty slots).
    finished_scores: Tensor,
    /// `[batch, beams]` which slots hold a finished hypothesis.
    finished_done: Tensor,
    /// `[batch, beams]` their lengths, initial ids included.
    finished_lens: Tensor,
    /// `[batch, 1]` whether a running beam may still beat the worst finished one.
    improvable: Tensor,
}

impl Beams {
    /// Every beam starts as a copy of its input; only the first is live, so that the first
    /// step does not pick `k` copies of the same continuation.
    fn new(rows: &[Vec<i64>], beams: usize, max_len: usize, fill: i64) -> Result<Self> {
        let (batch, beams) = (rows.len() as i64, beams as i64);
        let prompt_len = rows.first().map_or(0, Vec::len);
        let ids = (Kind::Int64, Device::Cpu);
        let floats = (Kind::Float, Device::Cpu);
        let running = Tensor::f_full([batch, beams, max_len as i64], fill, ids)?;
        running.f_narrow(2, 0, prompt_len as i64)?.f_copy_(
            &ids_tensor(rows, Device::Cpu)?
                .f_unsqueeze(1)?
                .f_expand([batch, beams, prompt_len as i64], false)?,
        )?;
        let running_scores = Tensor::f_full([batch, beams], OUT, floats)?;
        let _ = running_scores.f_narrow(1, 0, 1)?.f_fill_(0.0)?;
        Ok(Beams {
            batch,
            beams,
            prompt_len,
            finished: running.f_detach_copy()?,
            running,
            running_scores,
            finished_scores: Tensor::f_full([batch, beams], OUT, floats)?,
            finished_done: Tensor::f_zeros([batch, beams], (Kind::Bool, Device::Cpu))?,
            finished_lens: Tensor::f_full([batch, beams], prompt_len as i64, ids)?,
            improvable: Tensor::f_ones([batch, 1], (Kind::Bool, Device::Cpu))?,
        })
    }

    /// The running sequences so far, `[batch·beams, cur_len]`.
    fn so_far(&self, cur_len: usize) -> Result<Tensor> {
        Ok(self
            .running
            .f_narrow(2, 0, cur_len as i64)?
            .f_reshape([self.batch * self.beams, cur_len as i64])?)
    }

    /// The candidates `top_index` names (indices into `[beams · vocab]`): their source beam
    /// `[batch, k]` and their sequences `[batch, k, max_len]` with the new token written.
    fn candidates(
        &self,
        top_index: &Tensor,
        vocab: i64,
        cur_len: usize,
    ) -> Result<(Tensor, Tensor)> {
        let from_beam = top_index.f_floor_divide_scalar(vocab)?;
        let token = top_index.f_remainder(vocab)?;
        let sequences = gather_beams(&self.running, &from_beam)?;
        sequences
            .f_narrow(2, cur_len as i64, 1)?
            .f_copy_(&token.f_unsqueeze(-1)?)?;
        Ok((from_beam, sequences))
    }

    /// Take one step: of the `k` candidates (`scores` `[batch, k]`, best first, `ends` which
    /// of them end here), the best `beams` that do not end keep running; those that end and
    /// rank among the first `beams` compete for the finished slots. Returns, per running beam,
    /// the beam it continues (`[batch, beams]`).
    #[allow(clippy::too_many_arguments)]
    fn advance(
        &mut self,
        candidates: &Tensor,
        from_beam: &Tensor,
        scores: &Tensor,
        ends: &Tensor,
        cur_len: usize,
        length_penalty: f64,
        early: EarlyStopping,
    ) -> Result<Tensor> {
        let k = scores.size()[1];
        // The best `beams` candidates that go on.
        let live = scores + ends.f_to_kind(Kind::Float)?.f_mul_scalar(OUT)?;
        let (_, next) = live.f_topk(self.beams, -1, true, true)?;
        self.running = gather_beams(candidates, &next)?;
        self.running_scores = live.f_gather(1, &next, false)?;

        // Candidates that end among the first `beams` compete with the finished ones, unless
        // the input is full (early_stopping=true) or cannot improve any more.
        let first = Tensor::f_arange(k, (Kind::Int64, Device::Cpu))?
            .f_lt(self.beams)?
            .f_unsqueeze(0)?;
        let just_done = ends.f_logical_and(&first)?;
        let full = if early == EarlyStopping::WhenBeamsFull {
            self.finished_done.f_all_dims(Some(&[-1i64][..]), true)?
        } else {
            Tensor::f_zeros([self.batch, 1], (Kind::Bool, Device::Cpu))?
        };
        let generated = (cur_len + 1 - self.prompt_len) as f64;
        let out = |mask: &Tensor| -> Result<Tensor> {
            Ok(mask.f_to_kind(Kind::Float)?.f_mul_scalar(OUT)?)
        };
        // The same additions, in the same order, as the reference (float32 rounding).
        let finished = scores.f_div_scalar(generated.powf(length_penalty))?
            + out(&full)?
            + out(&self.improvable.f_logical_not()?)?
            + out(&just_done.f_logical_not()?)?;
        let merged_scores = Tensor::f_cat(&[&self.finished_scores, &finished], 1)?;
        let (_, keep) = merged_scores.f_topk(self.beams, -1, true, true)?;
        let lens = Tensor::f_full(
            [self.batch, k],
            (cur_len + 1) as i64,
            (Kind::Int64, Device::Cpu),
        )?;
        let merge = |old: &Tensor, new: &Tensor| -> Result<Tensor> {
            gather_beams(&Tensor::f_cat(&[old, new], 1)?, &keep)
        };
        self.finished = merge(&self.finished, candidates)?;
        self.finished_scores = merged_scores.f_gather(1, &keep, false)?;
        self.finished_done = merge(&self.finished_done, &just_done)?;
        self.finished_lens = merge(&self.finished_lens, &lens)?;
        Ok(from_beam.f_gather(1, &next, false)?)
    }

    /// After a step to `cur_len`: can the best running beam still beat the worst finished
    /// one? `false` mode judges it at the current length, `never` (with a positive length
    /// penalty) at the longest possible one.
    fn update_improvable(
        &mut self,
        cur_len: usize,
        max_len: usize,
        length_penalty: f64,
        early: EarlyStopping,
    ) -> Result<()> {
        let best_len = if early == EarlyStopping::Never && length_penalty > 0.0 {
            max_len - self.prompt_len
        } else {
            cur_len - self.prompt_len
        };
        let best_running = self
            .running_scores
            .f_narrow(1, 0, 1)?
            .f_div_scalar((best_len as f64).powf(length_penalty))?;
        let worst_finished = self
            .finished_scores
            .f_min_dim(1, true)?
            .0
            .f_where_scalarother(&self.finished_done, OUT)?;
        let can = best_running
            .f_gt_tensor(&worst_finished)?
            .f_any_dims(Some(&[-1i64][..]), true)?;
        self.improvable = self.improvable.f_logical_and(&can)?;
        Ok(())
    }

    /// Whether to take another step: some input can improve, not every input is full
    /// (early_stopping=true), and not every candidate of this step ended.
    fn go_on(&self, ends: &Tensor, early: EarlyStopping) -> Result<bool> {
        let all_full =
            early == EarlyStopping::WhenBeamsFull && bool::try_from(&self.finished_done.f_all()?)?;
        Ok(bool::try_from(&self.improvable.f_any()?)?
            && !all_full
            && !bool::try_from(&ends.f_all()?)?)
    }

    /// The best `n` finished hypotheses of each input, trimmed to the longest of them.
    fn best(&self, n: usize) -> Result<Vec<Sequence>> {
        let ret = n as i64;
        let lens = Vec::<Vec<i64>>::try_from(&self.finished_lens.f_narrow(1, 0, ret)?)?;
        let width = lens
            .iter()
            .flatten()
            .copied()
            .max()
            .unwrap_or(self.prompt_len as i64);
        let rows = tensor_to_rows(
            &self
                .finished
                .f_narrow(1, 0, ret)?
                .f_narrow(2, 0, width)?
                .f_reshape([self.batch * ret, width])?,
        )?;
        let scores =
            Vec::<f32>::try_from(&self.finished_scores.f_narrow(1, 0, ret)?.f_reshape([-1])?)?;
        Ok(rows
            .into_iter()
            .zip(scores)
            .enumerate()
            .map(|(i, (ids, score))| Sequence {
                input: i / n,
                ids,
                prompt_len: self.prompt_len,
                len: lens[i / n][i % n] as usize,
                score: Some(f64::from(score)),
            })
            .collect())
    }
}

/// Beam search over `rows` (one per input, not yet repeated), as transformers' vectorised
/// `_beam_search`: at each step the `k = max(2, 1 + #eos) · num_beams` best continuations of
/// all beams are taken (or drawn, when sampling); those that end (EOS, length limit, stop
/// string) may become finished hypotheses scored `sum log p / generated_len^length_penalty`,
/// the best `num_beams` others keep running (see [`Beams`]).
#[allow(clippy::too_many_arguments)]
pub(crate) fn beam_search<D: Decoder + ?Sized>(
    decoder: &D,
    state: &mut D::State,
    rows: Vec<Vec<i64>>,
    config: &GenerationConfig,
    max_len: usize,
    device: Device,
    hooks: &mut Hooks,
    stops: &StopStrings,
) -> Result<Vec<Sequence>> {
    let (batch, beams) = (rows.len() as i64, config.num_beams() as i64);
    let prompt_len = rows.first().map_or(0, Vec::len);
    let eos = &config.eos_token_ids();
    let k = (2.max(1 + eos.len()) * config.num_beams()) as i64;
    let processors = config.processors(prompt_len);
    let (lp, early) = (config.length_penalty(), config.early_stopping());
    // Unwritten positions hold the pad id, or EOS when the pad id is 0 or absent (this is how
    // transformers' `pad_token_id or eos_token_id[0]` reads), or -1 without EOS.
    let fill = match (eos.first(), config.pad_token_id()) {
        (None, _) => -1,
        (Some(_), Some(p)) if p != 0 => p,
        (Some(&e), _) => e,
    };
    // One generator per input, as for greedy sampling: the same draws alone or batched.
    let mut rngs: Vec<Rng> = (0..batch).map(|_| Rng::stream(config.seed, 0)).collect();
    let mut b = Beams::new(&rows, config.num_beams(), max_len, fill)?;
    let batch_offset = Tensor::f_arange(batch, (Kind::Int64, Device::Cpu))?
        .f_mul_scalar(beams)?
        .f_unsqueeze(1)?;

    // Log-probabilities are written into one buffer for the whole search: with a large
    // vocabulary ([batch·beams, vocab] is 60 MB for 256 rows of OPUS-MT's 58k) a new tensor
    // per step is fresh memory that the kernel zeroes page by page.
    let mut log_probs_buffer: Option<Tensor> = None;
    let mut cur_len = prompt_len;
    loop {
        let so_far = b.so_far(cur_len)?;
        let ids = if cur_len == prompt_len {
            so_far.shallow_clone()
        } else {
            so_far.f_narrow(1, cur_len as i64 - 1, 1)?
        };
        let logits = decoder
            .step(&ids.f_to(device)?, state)?
            .f_to_kind(Kind::Float)?; // [batch·beams, vocab]
        let vocab = logits.size()[1];
        let log_probs = match &log_probs_buffer {
            Some(buffer) if buffer.size() == logits.size() => {
                logits.f_internal_log_softmax_out(buffer, -1, false)?
            }
            _ => {
                let fresh = logits.f_log_softmax(-1, Kind::Float)?;
                log_probs_buffer = Some(fresh.shallow_clone());
                fresh
            }
        };
        // The raw logits are spent: a processor that makes new scores writes them there.
        let log_probs =
            apply_with_spare(&processors, &tensor_to_rows(&so_far)?, log_probs, logits)?;
        // [batch, beams·vocab]: each continuation's score, the beam's so far plus its own.
        let mut total = log_probs.f_view([batch, beams, vocab])?.f_to(Device::Cpu)?;
        let _ = total.f_add_(&b.running_scores.f_unsqueeze(-1)?)?;
        let total = total.f_reshape([batch, beams * vocab])?;

        // The k best continuations over all beams (or k drawn without replacement).
        let (top_scores, top_index) = if config.do_sample() {
            let mut picks = Vec::with_capacity((batch * k) as usize);
            for (mut p, rng) in probabilities(&total)?.into_iter().zip(&mut rngs) {
                let drawn = rng.categorical_distinct(&mut p, k as usize)?;
                picks.extend(drawn.into_iter().map(|i| i as i64));
            }
            let index = Tensor::f_from_slice(&picks)?.f_view([batch, k])?;
            (total.f_gather(1, &index, false)?, index)
        } else {
            topk_rows(&total, k)?
        };
        let (from_beam, candidates) = b.candidates(&top_index, vocab, cur_len)?;

        // Which candidates end here: EOS, the length limit, or a stop string.
        let generated = tensor_to_rows(
            &candidates
                .f_narrow(2, prompt_len as i64, (cur_len + 1 - prompt_len) as i64)?
                .f_reshape([batch * k, -1])?,
        )?;
        let mut ends = Vec::with_capacity(generated.len());
        for row in &generated {
            let last = row.last().copied().unwrap_or(-1);
            ends.push(eos.contains(&last) || cur_len + 1 >= max_len || stops.hit(row)?);
        }
        let ends = Tensor::f_from_slice(&ends)?.f_view([batch, k])?;

        let source = b.advance(
            &candidates,
            &from_beam,
            &top_scores,
            &ends,
            cur_len,
            lp,
            early,
        )?;
        // The decoder's caches follow the beams that go on.
        let beam_idx = (source + &batch_offset).f_reshape([-1])?;
        decoder.reorder(state, &beam_idx.f_to(device)?)?;
        cur_len += 1;
        b.update_improvable(cur_len, max_len, lp, early)?;
        if !b.go_on(&ends, early)? {
            break;
        }
    }

    let best = b.best(config.num_return_sequences())?;
    for (i, s) in best.iter().enumerate() {
        for &id in s.generated() {
            hooks.emit(Token { sequence: i, id })?;
        }
    }
    Ok(best)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn beam_picks_are_torchs_topk() {
        // The same values; the same index wherever the value is unique in its row. Among
        // equal values libtorch's choice is its heap's (partial sort), ours index order.
        let check = |t: &Tensor, k: i64| {
            let (v, i) = topk_rows(t, k).unwrap();
            let (want_v, want_i) = t.topk(k, -1, true, true);
            assert!(v.equal(&want_v), "values of {t:?}, k {k}");
            let full = Vec::<Vec<f32>>::try_from(t).unwrap();
            let rows = Vec::<Vec<f32>>::try_from(&v).unwrap();
            let ours = Vec::<Vec<i64>>::try_from(&i).unwrap();
            let theirs = Vec::<Vec<i64>>::try_from(&want_i).unwrap();
            for (((row, vals), a), b) in full.iter().zip(&rows).zip(&ours).zip(&theirs) {
                for j in 0..vals.len() {
                    assert_eq!(row[a[j] as usize], vals[j], "an index of its value");
                    if row.iter().filter(|&&x| x == vals[j]).count() == 1 {
                        assert_eq!(a[j], b[j], "a unique value's index");
                    } else if j > 0 && vals[j] == vals[j - 1] {
                        assert!(a[j] > a[j - 1], "index order among equals");
                    }
                }
            }
        };
        tch::manual_seed(9);
        for (rows, n, k) in [
            (1, 50257, 2),
            (64, 4 * 1000, 8),
            (3, 17, 17),
            (5, 40, 6),
            (2, 16, 1),
        ] {
            let t = Tensor::randn([rows, n], (Kind::Float, Device::Cpu));
            check(&t, k);
            check(&(t * 2.0).round(), k); // many ties
        }
        let ninf = f32::NEG_INFINITY;
        // Forced tokens: one finite score per beam, the rest -inf (ties at the cut).
        let forced =
            Tensor::from_slice(&[ninf, ninf, -1.5, ninf, ninf, ninf, -0.5, ninf]).view([1, 8]);
        let (v, i) = topk_rows(&forced, 4).unwrap();
        assert_eq!(
            Vec::<f32>::try_from(&v.view([-1])).unwrap(),
            [-0.5, -1.5, ninf, ninf]
        );
        assert_eq!(Vec::<i64>::try_from(&i.view([-1])).unwrap(), [6, 2, 0, 1]);
        // A NaN anywhere: libtorch's answer (NaN first).
        let t = Tensor::from_slice(&[1.0f32, f32::NAN, 3.0, 2.0]).view([2, 2]);
        let (v, i) = topk_rows(&t, 1).unwrap();
        let (want_v, want_i) = t.topk(1, -1, true, true);
        assert!(v.isnan().equal(&want_v.isnan()) && i.equal(&want_i));
        // Not ours (k over 64, f64): libtorch's.
        let t = Tensor::randn([2, 100], (Kind::Float, Device::Cpu));
        let (v, _) = topk_rows(&t, 70).unwrap();
        assert!(v.equal(&t.topk(70, -1, true, true).0));
        let t = Tensor::from_slice(&[1.0f64, 5.0, 2.0]).view([1, 3]);
        assert_eq!(
            Vec::<i64>::try_from(&topk_rows(&t, 2).unwrap().1.view([-1])).unwrap(),
            [1, 2]
        );
    }

    #[test]
    fn greedy_picks_are_torchs_argmax() {
        // Rows of every length class (under one chunk of 16, a multiple of it, with a
        // remainder), ties (the first wins), all -inf, -inf beside values, NaN (the first
        // NaN wins), and random rows over the threads.
        let nan = f32::NAN;
        let ninf = f32::NEG_INFINITY;
        let fixed: Vec<Vec<f32>> = vec![
            vec![0.5],
            vec![1.0, 3.0, 3.0, 2.0],
            vec![ninf; 5],
            vec![ninf, ninf, -1e30, ninf],
            vec![1.0, nan, 7.0, nan],
            (0..40).map(|i| if i == 33 { 9.0 } else { 1.0 }).collect(),
            (0..32)
                .map(|i| if i % 16 == 3 { 2.0 } else { 0.0 })
                .collect(),
            (0..37)
                .map(|i| if i == 36 { nan } else { i as f32 })
                .collect(),
        ];
        for row in &fixed {
            let t = Tensor::from_slice(row).view([1, -1]);
            let want = Vec::<i64>::try_from(&t.argmax(-1, false)).unwrap();
            assert_eq!(argmax_rows(&t).unwrap(), want, "row {row:?}");
        }
        tch::manual_seed(5);
        for (rows, vocab) in [(1, 50257), (8, 50257), (64, 1000), (3, 17)] {
            let t = Tensor::randn([rows, vocab], (Kind::Float, Device::Cpu));
            // Repeated maxima: rounding to a coarse grid makes ties common.
            let t = (t * 4.0).round();
            let want = Vec::<i64>::try_from(&t.argmax(-1, false)).unwrap();
            assert_eq!(argmax_rows(&t).unwrap(), want, "{rows} × {vocab}");
        }
        // Not ours (f64, a view with strides): libtorch's, the same answer.
        let t = Tensor::from_slice(&[1.0f64, 5.0, 2.0]).view([1, 3]);
        assert_eq!(argmax_rows(&t).unwrap(), vec![1]);
        let t = Tensor::from_slice(&[1.0f32, 5.0, 2.0, 7.0])
            .view([2, 2])
            .tr();
        assert_eq!(argmax_rows(&t).unwrap(), vec![1, 1]);
        // No rows: no picks (an empty tensor's memory may be a null pointer).
        let none = Tensor::zeros([0, 5], (Kind::Float, Device::Cpu));
        assert!(argmax_rows(&none).unwrap().is_empty());
        assert_eq!(topk_rows(&none, 2).unwrap().1.size(), [0, 2]);
    }

    #[test]
    fn the_sampler_is_reproducible_and_follows_the_weights() {
        let weights = [0.0, 3.0, 1.0, 0.0];
        let draw = |seed| {
            let mut rng = Rng::new(Some(seed));
            (0..4000)
                .map(|_| rng.categorical(&weights).unwrap())
                .collect::<Vec<_>>()
        };
        let a = draw(7);
        assert_eq!(a, draw(7));
        assert_ne!(a, draw(8));
        assert!(a.iter().all(|&i| i == 1 || i == 2));
        let ones = a.iter().filter(|&&i| i == 1).count() as f64 / a.len() as f64;
        assert!((ones - 0.75).abs() < 0.03, "{ones}");
        let mut rng = Rng::new(Some(1));
        assert!(rng.categorical(&[0.0, 0.0]).is_none());
        let mut w = vec![1.0, 1.0, 1.0];
        let mut picks = rng.categorical_distinct(&mut w, 3).unwrap();
        picks.sort();
        assert_eq!(picks, vec![0, 1, 2]);
    }
}
