//! The search strategies: greedy search and sampling (one token per sequence and step), and
//! beam search (the `num_beams` best partial sequences per input), each reproducing
//! transformers' `generate` token for token.

use super::logits::{apply, LogitsProcessor};
use super::stream::{Hooks, StopStrings, Token};
use super::{Decoder, GenerationConfig, Sequence};
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

fn no_candidates() -> Error {
    Error::Input(
        "no token can be generated: the processors (top-k, top-p, bad words, …) removed every \
         candidate"
            .into(),
    )
}

/// Probabilities of each row of `scores` as f64, on the CPU.
fn probabilities(scores: &Tensor) -> Result<Vec<Vec<f64>>> {
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
    let mut rng = Rng::new(config.seed);
    let mut lens: Vec<Option<usize>> = vec![None; rows.len()]; // Some(len) once finished
    let mut ids = ids_tensor(&rows, device)?;
    loop {
        let logits = decoder.step(&ids, state)?.f_to_kind(Kind::Float)?; // [rows, vocab]
        let scores = apply(&processors, &rows, logits)?;
        let next: Vec<i64> = if config.do_sample {
            let mut picks = Vec::with_capacity(rows.len());
            for p in probabilities(&scores)? {
                picks.push(rng.categorical(&p).ok_or_else(no_candidates)? as i64);
            }
            picks
        } else {
            Vec::<i64>::try_from(&scores.f_argmax(-1, false)?.f_to(Device::Cpu)?)?
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
            let done = config.eos_token_ids.contains(&next[i])
                || row.len() >= max_len
                || stops.hit(&row[prompt_len..])?;
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

/// Beam search over `rows` (one per input, not yet repeated), as transformers' vectorised
/// `_beam_search`: at each step the `k = max(2, 1 + #eos) · num_beams` best continuations of
/// all beams are taken; those that end (EOS, length limit, stop string) and rank among the
/// first `num_beams` become finished hypotheses scored `sum log p / generated_len^length_penalty`;
/// the best `num_beams` others keep running. Bookkeeping runs on the CPU in float32, as the
/// reference does, so that ties and rounding agree.
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
    let (batch, beams) = (rows.len() as i64, config.num_beams as i64);
    let prompt_len = rows.first().map_or(0, Vec::len);
    let eos = &config.eos_token_ids;
    let k = (2.max(1 + eos.len()) * config.num_beams) as i64;
    let processors = config.processors(prompt_len);
    let lp = config.length_penalty;
    let early = config.early_stopping;
    // Unwritten positions hold the pad id, or EOS when the pad id is 0 or absent (this is how
    // transformers' `pad_token_id or eos_token_id[0]` reads), or -1 without EOS.
    let fill = match (eos.first(), config.pad_token_id) {
        (None, _) => -1,
        (Some(_), Some(p)) if p != 0 => p,
        (Some(&e), _) => e,
    };
    let mut rng = Rng::new(config.seed);
    let cpu = (Kind::Int64, Device::Cpu);

    // [batch, beams, max_len]: every beam starts as a copy of its input.
    let start = ids_tensor(&rows, Device::Cpu)?;
    let mut running = Tensor::f_full([batch, beams, max_len as i64], fill, cpu)?;
    running.f_narrow(2, 0, prompt_len as i64)?.f_copy_(
        &start
            .f_unsqueeze(1)?
            .f_expand([batch, beams, prompt_len as i64], false)?,
    )?;
    // Only the first beam is live at first, so the first step does not pick k copies of
    // the same continuation.
    let mut running_scores = Tensor::f_full([batch, beams], OUT, (Kind::Float, Device::Cpu))?;
    let _ = running_scores.f_narrow(1, 0, 1)?.f_fill_(0.0)?;
    let mut finished = running.f_detach_copy()?;
    let mut finished_scores = Tensor::f_full([batch, beams], OUT, (Kind::Float, Device::Cpu))?;
    let mut finished_done = Tensor::f_zeros([batch, beams], (Kind::Bool, Device::Cpu))?;
    let mut finished_lens = Tensor::f_full([batch, beams], prompt_len as i64, cpu)?;
    let mut improvable = Tensor::f_ones([batch, 1], (Kind::Bool, Device::Cpu))?;
    let first_beams = Tensor::f_arange(k, cpu)?.f_lt(beams)?.f_unsqueeze(0)?; // [1, k]
    let batch_offset = Tensor::f_arange(batch, cpu)?
        .f_mul_scalar(beams)?
        .f_unsqueeze(1)?;

    let mut cur_len = prompt_len;
    loop {
        let so_far = running
            .f_narrow(2, 0, cur_len as i64)?
            .f_reshape([batch * beams, cur_len as i64])?;
        let ids = if cur_len == prompt_len {
            so_far.shallow_clone()
        } else {
            so_far.f_narrow(1, cur_len as i64 - 1, 1)?
        };
        let logits = decoder
            .step(&ids.f_to(device)?, state)?
            .f_to_kind(Kind::Float)?; // [batch·beams, vocab]
        let vocab = logits.size()[1];
        let log_probs = logits.f_log_softmax(-1, Kind::Float)?;
        let log_probs = apply(&processors, &tensor_to_rows(&so_far)?, log_probs)?;
        let total = (log_probs.f_view([batch, beams, vocab])?.f_to(Device::Cpu)?
            + running_scores.f_unsqueeze(-1)?)
        .f_reshape([batch, beams * vocab])?;

        // The k best continuations over all beams (or k drawn without replacement).
        let (top_scores, top_index) = if config.do_sample {
            let mut picks = Vec::with_capacity((batch * k) as usize);
            for mut p in probabilities(&total)? {
                picks.extend(
                    rng.categorical_distinct(&mut p, k as usize)?
                        .into_iter()
                        .map(|i| i as i64),
                );
            }
            let index = Tensor::f_from_slice(&picks)?.f_view([batch, k])?;
            (total.f_gather(1, &index, false)?, index)
        } else {
            total.f_topk(k, -1, true, true)?
        };
        let from_beam = top_index.f_floor_divide_scalar(vocab)?; // [batch, k]
        let token = top_index.f_remainder(vocab)?;
        let candidates = gather_beams(&running, &from_beam)?; // [batch, k, max_len]
        candidates
            .f_narrow(2, cur_len as i64, 1)?
            .f_copy_(&token.f_unsqueeze(-1)?)?;

        // Which candidates end here.
        let tokens = Vec::<i64>::try_from(&token.f_reshape([-1])?)?;
        let cand_rows = if stops.is_active() {
            tensor_to_rows(
                &candidates
                    .f_narrow(2, prompt_len as i64, (cur_len + 1 - prompt_len) as i64)?
                    .f_reshape([batch * k, -1])?,
            )?
        } else {
            Vec::new()
        };
        let mut ends = Vec::with_capacity(tokens.len());
        for (i, t) in tokens.iter().enumerate() {
            let stop = match cand_rows.get(i) {
                Some(r) => stops.hit(r)?,
                None => false,
            };
            ends.push(eos.contains(t) || cur_len + 1 >= max_len || stop);
        }
        let ends = Tensor::f_from_slice(&ends)?.f_view([batch, k])?;
        let ends_f = ends.f_to_kind(Kind::Float)?;

        // The best `beams` candidates that go on.
        let live_scores = &top_scores + ends_f.f_mul_scalar(OUT)?;
        let (_, next) = live_scores.f_topk(beams, -1, true, true)?;
        running = gather_beams(&candidates, &next)?;
        running_scores = live_scores.f_gather(1, &next, false)?;
        let source = from_beam.f_gather(1, &next, false)?;

        // Candidates that end, among the first `beams`, compete with the finished ones.
        let just_done = ends.f_logical_and(&first_beams)?;
        let generated = (cur_len + 1 - prompt_len) as f64;
        // With early_stopping=true an input whose beams are all finished takes no more.
        let full = if early == super::EarlyStopping::WhenBeamsFull {
            finished_done.f_all_dims(Some(&[-1i64][..]), true)?
        } else {
            Tensor::f_zeros([batch, 1], (Kind::Bool, Device::Cpu))?
        };
        let scores = top_scores.f_div_scalar(generated.powf(lp))?
            + full.f_to_kind(Kind::Float)?.f_mul_scalar(OUT)?;
        let scores = scores + improvable.f_logical_not()?.f_to_kind(Kind::Float)? * OUT;
        let scores = scores + just_done.f_logical_not()?.f_to_kind(Kind::Float)? * OUT;
        let merged_scores = Tensor::f_cat(&[&finished_scores, &scores], 1)?;
        let (_, keep) = merged_scores.f_topk(beams, -1, true, true)?;
        finished = gather_beams(&Tensor::f_cat(&[&finished, &candidates], 1)?, &keep)?;
        finished_scores = merged_scores.f_gather(1, &keep, false)?;
        finished_done =
            Tensor::f_cat(&[&finished_done, &just_done], 1)?.f_gather(1, &keep, false)?;
        let cand_lens = Tensor::f_full([batch, k], (cur_len + 1) as i64, cpu)?;
        finished_lens =
            Tensor::f_cat(&[&finished_lens, &cand_lens], 1)?.f_gather(1, &keep, false)?;

        // The decoder's caches follow the beams that go on.
        let beam_idx = (source + &batch_offset).f_reshape([-1])?;
        decoder.reorder(state, &beam_idx.f_to(device)?)?;
        cur_len += 1;

        // Can a running beam still beat the worst finished one?
        let best_len = if early == super::EarlyStopping::Never && lp > 0.0 {
            max_len - prompt_len
        } else {
            cur_len - prompt_len
        };
        let best_running = running_scores
            .f_narrow(1, 0, 1)?
            .f_div_scalar((best_len as f64).powf(lp))?;
        let worst_finished = finished_scores
            .f_min_dim(1, true)?
            .0
            .f_where_scalarother(&finished_done, OUT)?;
        improvable = improvable.f_logical_and(
            &best_running
                .f_gt_tensor(&worst_finished)?
                .f_any_dims(Some(&[-1i64][..]), true)?,
        )?;
        let all_full = bool::try_from(&finished_done.f_all()?)?
            && early == super::EarlyStopping::WhenBeamsFull;
        let go_on =
            bool::try_from(&improvable.f_any()?)? && !all_full && !bool::try_from(&ends.f_all()?)?;
        if !go_on {
            break;
        }
    }

    // The best `num_return_sequences` hypotheses of each input, trimmed to the longest.
    let ret = config.num_return_sequences as i64;
    let lens = Vec::<Vec<i64>>::try_from(&finished_lens.f_narrow(1, 0, ret)?)?;
    let width = lens
        .iter()
        .flatten()
        .copied()
        .max()
        .unwrap_or(prompt_len as i64);
    let best = tensor_to_rows(
        &finished
            .f_narrow(1, 0, ret)?
            .f_narrow(2, 0, width)?
            .f_reshape([batch * ret, width])?,
    )?;
    let scores = Vec::<f32>::try_from(&finished_scores.f_narrow(1, 0, ret)?.f_reshape([-1])?)?;
    let mut out = Vec::with_capacity(best.len());
    for (i, (ids, score)) in best.into_iter().zip(scores).enumerate() {
        let len = lens[i / ret as usize][i % ret as usize] as usize;
        for &id in &ids[prompt_len..len] {
            hooks.emit(Token { sequence: i, id })?;
        }
        out.push(Sequence {
            input: i / ret as usize,
            ids,
            prompt_len,
            len,
            score: Some(f64::from(score)),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

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
