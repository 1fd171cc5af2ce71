//! Logits processors: small units that reshape next-token scores before a token is chosen,
//! each equal to its transformers counterpart (`RepetitionPenaltyLogitsProcessor`,
//! `TopPLogitsWarper`, …).
//!
//! Every processor sees `ids`, the sequences so far (start token or prompt included, one row
//! per sequence, all of the same length), and `scores`, `[rows, vocab]` float32, and returns
//! new scores. Banned tokens get `-inf`.

use crate::Result;
use std::collections::{HashMap, HashSet};
use tch::{Kind, Tensor};

/// One step of score shaping.
pub trait LogitsProcessor: std::fmt::Debug {
    /// New scores `[rows, vocab]` for the next token of the sequences `ids`. A processor may
    /// write into `scores` and return it: the engine hands over scores it owns and reads only
    /// what is returned, and a `[rows, vocab]` copy per processor and step is what beam search
    /// over a large vocabulary would otherwise spend its time on (each fresh block of tens of
    /// MB is new memory the kernel must zero).
    fn process(&self, ids: &[Vec<i64>], scores: &Tensor) -> Result<Tensor>;
}

/// `scores` with `-inf` at the given `(row, token)` pairs (tokens outside the vocabulary
/// ignored), written in place (see [`LogitsProcessor`]). Only those elements are touched: a
/// `[rows, vocab]` mask and a masked fill were two full passes per processor and step (5 %
/// of OPUS-MT beam search's time, over its 58k vocabulary).
fn ban(scores: &Tensor, banned: &[(usize, i64)]) -> Result<Tensor> {
    let vocab = scores.size()[1];
    let (rows, tokens): (Vec<i64>, Vec<i64>) = banned
        .iter()
        .filter(|&&(_, t)| (0..vocab).contains(&t))
        .map(|&(r, t)| (r as i64, t))
        .unzip();
    let mut out = scores.shallow_clone();
    if rows.is_empty() {
        return Ok(out);
    }
    let device = scores.device();
    let index = [
        Some(Tensor::f_from_slice(&rows)?.f_to(device)?),
        Some(Tensor::f_from_slice(&tokens)?.f_to(device)?),
    ];
    let minus_inf = Tensor::f_from_slice(&[f32::NEG_INFINITY])?
        .f_to_kind(scores.kind())?
        .f_to(device)?;
    let _ = out.f_index_put_(&index, &minus_inf, false)?;
    Ok(out)
}

/// `scores` with `-inf` for the tokens `eos` in every row, written in place.
fn ban_eos(scores: &Tensor, eos: &[i64]) -> Result<Tensor> {
    let rows = scores.size()[0] as usize;
    let banned: Vec<(usize, i64)> = (0..rows)
        .flat_map(|r| eos.iter().map(move |&e| (r, e)))
        .collect();
    ban(scores, &banned)
}

/// Apply `processors` in order.
pub fn apply(
    processors: &[Box<dyn LogitsProcessor>],
    ids: &[Vec<i64>],
    scores: Tensor,
) -> Result<Tensor> {
    processors
        .iter()
        .try_fold(scores, |scores, p| p.process(ids, &scores))
}

/// `[rows, vocab]` boolean mask with `true` at the given `(row, token)` pairs.
fn mask_of(scores: &Tensor, banned: &[(usize, i64)]) -> Result<Tensor> {
    let vocab = scores.size()[1];
    let flat: Vec<i64> = banned
        .iter()
        .filter(|&&(_, t)| (0..vocab).contains(&t))
        .map(|&(r, t)| r as i64 * vocab + t)
        .collect();
    let mask = Tensor::f_zeros(scores.size(), (Kind::Bool, scores.device()))?;
    if !flat.is_empty() {
        let idx = Tensor::f_from_slice(&flat)?.f_to(scores.device())?;
        let mut flat_mask = mask.f_view([-1])?;
        let _ = flat_mask.f_index_fill_(0, &idx, 1)?;
    }
    Ok(mask)
}

/// Divide scores by the temperature: below 1 sharpens the distribution, above 1 flattens it.
#[derive(Debug, Clone)]
pub struct Temperature {
    temperature: f64,
}

impl Temperature {
    /// Scores / `temperature` (> 0).
    pub fn new(temperature: f64) -> Self {
        Temperature { temperature }
    }
}

impl LogitsProcessor for Temperature {
    fn process(&self, _ids: &[Vec<i64>], scores: &Tensor) -> Result<Tensor> {
        Ok(scores.f_div_scalar(self.temperature)?)
    }
}

/// Keep the `k` highest scores of each row (ties with the k-th included), `-inf` the rest.
#[derive(Debug, Clone)]
pub struct TopK {
    k: usize,
    min_keep: usize,
}

impl TopK {
    /// Keep at least `max(k, min_keep)` tokens.
    pub fn new(k: usize, min_keep: usize) -> Self {
        TopK { k, min_keep }
    }
}

impl LogitsProcessor for TopK {
    fn process(&self, _ids: &[Vec<i64>], scores: &Tensor) -> Result<Tensor> {
        let vocab = scores.size()[1];
        let k = (self.k.max(self.min_keep) as i64).min(vocab);
        let (top, _) = scores.f_topk(k, -1, true, true)?;
        let kth = top.f_narrow(-1, k - 1, 1)?; // [rows, 1]
        let remove = scores.f_lt_tensor(&kth)?;
        Ok(scores.f_masked_fill(&remove, f64::NEG_INFINITY)?)
    }
}

/// Nucleus filtering: keep the smallest set of most probable tokens whose probabilities sum
/// to at least `p`, `-inf` the rest.
#[derive(Debug, Clone)]
pub struct TopP {
    p: f64,
    min_keep: usize,
}

impl TopP {
    /// Keep probability mass `p` in (0, 1], and at least `min_keep` tokens.
    pub fn new(p: f64, min_keep: usize) -> Self {
        TopP { p, min_keep }
    }
}

impl LogitsProcessor for TopP {
    fn process(&self, _ids: &[Vec<i64>], scores: &Tensor) -> Result<Tensor> {
        let vocab = scores.size()[1];
        // Ascending order: the tokens to drop are a prefix whose total mass is ≤ 1 − p.
        let (sorted, order) = scores.f_sort(-1, false)?;
        let cumulative = sorted
            .f_softmax(-1, Kind::Float)?
            .f_cumsum(-1, Kind::Float)?;
        let remove_sorted = cumulative.f_le(1.0 - self.p)?;
        let keep = (self.min_keep as i64).min(vocab);
        let mut kept = remove_sorted.f_narrow(-1, vocab - keep, keep)?;
        let _ = kept.f_fill_(0)?;
        let remove = remove_sorted.f_scatter(1, &order, &remove_sorted)?;
        Ok(scores.f_masked_fill(&remove, f64::NEG_INFINITY)?)
    }
}

/// Make tokens already in the sequence less likely: a positive score is divided by the
/// penalty, a negative one multiplied (so both move down for a penalty > 1).
#[derive(Debug, Clone)]
pub struct RepetitionPenalty {
    penalty: f64,
}

impl RepetitionPenalty {
    /// `penalty` > 0; 1 changes nothing.
    pub fn new(penalty: f64) -> Self {
        RepetitionPenalty { penalty }
    }
}

impl LogitsProcessor for RepetitionPenalty {
    fn process(&self, ids: &[Vec<i64>], scores: &Tensor) -> Result<Tensor> {
        let len = ids.first().map_or(0, Vec::len);
        if len == 0 {
            return Ok(scores.shallow_clone());
        }
        let flat: Vec<i64> = ids.iter().flatten().copied().collect();
        let index = Tensor::f_from_slice(&flat)?
            .f_view([ids.len() as i64, len as i64])?
            .f_to(scores.device())?;
        let seen = scores.f_gather(1, &index, false)?; // [rows, len]
        let penalised = seen
            .f_mul_scalar(self.penalty)?
            .f_where_self(&seen.f_lt(0.0)?, &seen.f_div_scalar(self.penalty)?)?;
        Ok(scores.f_scatter(1, &index, &penalised)?)
    }
}

/// Forbid any n-gram from occurring twice: a token that would complete an n-gram already in
/// the sequence gets `-inf`.
#[derive(Debug, Clone)]
pub struct NoRepeatNGram {
    n: usize,
}

impl NoRepeatNGram {
    /// n-grams of size `n` ≥ 1.
    pub fn new(n: usize) -> Self {
        NoRepeatNGram { n }
    }

    /// Tokens that would repeat an n-gram of `row`.
    pub fn banned(&self, row: &[i64]) -> Vec<i64> {
        let n = self.n;
        // The next token makes an n-gram only once the row holds n − 1 tokens.
        if n == 0 || row.len() + 1 < n {
            return Vec::new();
        }
        let mut next_of: HashMap<&[i64], Vec<i64>> = HashMap::new();
        for gram in row.windows(n) {
            next_of.entry(&gram[..n - 1]).or_default().push(gram[n - 1]);
        }
        next_of
            .get(&row[row.len() + 1 - n..])
            .cloned()
            .unwrap_or_default()
    }
}

impl LogitsProcessor for NoRepeatNGram {
    fn process(&self, ids: &[Vec<i64>], scores: &Tensor) -> Result<Tensor> {
        let banned: Vec<(usize, i64)> = ids
            .iter()
            .enumerate()
            .flat_map(|(r, row)| self.banned(row).into_iter().map(move |t| (r, t)))
            .collect();
        if banned.is_empty() {
            return Ok(scores.shallow_clone());
        }
        ban(scores, &banned)
    }
}

/// Never generate the given token sequences: the last token of a bad sequence gets `-inf`
/// when the sequence so far ends with the rest of it (always, for one-token sequences).
#[derive(Debug, Clone)]
pub struct BadWords {
    sequences: Vec<Vec<i64>>,
}

impl BadWords {
    /// Bad sequences; a sequence that is just an EOS id is dropped, since banning EOS would
    /// make every output run to the length limit (transformers does the same).
    pub fn new(sequences: Vec<Vec<i64>>, eos: &[i64]) -> Self {
        let sequences = sequences
            .into_iter()
            .filter(|s| match s.as_slice() {
                [] => false,
                [one] => !eos.contains(one),
                _ => true,
            })
            .collect();
        BadWords { sequences }
    }
}

impl LogitsProcessor for BadWords {
    fn process(&self, ids: &[Vec<i64>], scores: &Tensor) -> Result<Tensor> {
        let mut banned = HashSet::new();
        for (r, row) in ids.iter().enumerate() {
            for seq in &self.sequences {
                let (last, prefix) = seq.split_last().map_or((0, &[][..]), |(l, p)| (*l, p));
                if row.ends_with(prefix) {
                    banned.insert((r, last));
                }
            }
        }
        if banned.is_empty() {
            return Ok(scores.shallow_clone());
        }
        let banned: Vec<(usize, i64)> = banned.into_iter().collect();
        ban(scores, &banned)
    }
}

/// Forbid EOS while the whole sequence (start token or prompt included) is shorter than
/// `min_length`.
#[derive(Debug, Clone)]
pub struct MinLength {
    min_length: usize,
    eos: Vec<i64>,
}

impl MinLength {
    /// EOS ids `eos` are banned below `min_length`.
    pub fn new(min_length: usize, eos: Vec<i64>) -> Self {
        MinLength { min_length, eos }
    }
}

impl LogitsProcessor for MinLength {
    fn process(&self, ids: &[Vec<i64>], scores: &Tensor) -> Result<Tensor> {
        let len = ids.first().map_or(0, Vec::len);
        if len >= self.min_length {
            return Ok(scores.shallow_clone());
        }
        ban_eos(scores, &self.eos)
    }
}

/// At one length of the output, allow only one token: every other score becomes `-inf` and
/// the forced token's 0. transformers' `ForcedBOSTokenLogitsProcessor` (the first token
/// after the decoder start: BART's `<s>`, M2M100/NLLB's target language) and
/// `ForcedEOSTokenLogitsProcessor` (the last token the length limit allows) are both this.
#[derive(Debug, Clone)]
pub struct ForcedToken {
    at_length: usize,
    tokens: Vec<i64>,
}

impl ForcedToken {
    /// When the sequences are `at_length` long, the next token is one of `tokens` (several
    /// EOS ids share the probability: all of them get 0).
    pub fn new(at_length: usize, tokens: Vec<i64>) -> Self {
        ForcedToken { at_length, tokens }
    }
}

impl LogitsProcessor for ForcedToken {
    fn process(&self, ids: &[Vec<i64>], scores: &Tensor) -> Result<Tensor> {
        if ids.first().map_or(0, Vec::len) != self.at_length || self.tokens.is_empty() {
            return Ok(scores.shallow_clone());
        }
        let rows = scores.size()[0] as usize;
        let allowed: Vec<(usize, i64)> = (0..rows)
            .flat_map(|r| self.tokens.iter().map(move |&t| (r, t)))
            .collect();
        let keep = mask_of(scores, &allowed)?;
        Ok(scores
            .f_zeros_like()?
            .f_masked_fill(&keep.f_logical_not()?, f64::NEG_INFINITY)?)
    }
}

/// Scores back to log-probabilities (`log_softmax`) after the processors before it removed
/// tokens: transformers' `LogitNormalization` (`renormalize_logits`, set by OPUS-MT's
/// generation_config.json). It changes beam scores, not which token is most likely.
#[derive(Debug, Clone)]
pub struct Renormalize;

impl LogitsProcessor for Renormalize {
    fn process(&self, _ids: &[Vec<i64>], scores: &Tensor) -> Result<Tensor> {
        Ok(scores.f_log_softmax(-1, Kind::Float)?)
    }
}

/// Forbid EOS until `min_new_tokens` tokens follow the first `prompt_len` ones.
#[derive(Debug, Clone)]
pub struct MinNewTokens {
    prompt_len: usize,
    min_new_tokens: usize,
    eos: Vec<i64>,
}

impl MinNewTokens {
    /// EOS ids `eos` are banned until `min_new_tokens` follow `prompt_len` given ids.
    pub fn new(prompt_len: usize, min_new_tokens: usize, eos: Vec<i64>) -> Self {
        MinNewTokens {
            prompt_len,
            min_new_tokens,
            eos,
        }
    }
}

impl LogitsProcessor for MinNewTokens {
    fn process(&self, ids: &[Vec<i64>], scores: &Tensor) -> Result<Tensor> {
        let len = ids.first().map_or(0, Vec::len);
        if len.saturating_sub(self.prompt_len) >= self.min_new_tokens {
            return Ok(scores.shallow_clone());
        }
        ban_eos(scores, &self.eos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(t: &Tensor, r: i64) -> Vec<f32> {
        Vec::<f32>::try_from(t.get(r)).unwrap()
    }

    #[test]
    fn no_repeat_ngram_bans_the_completion_of_a_seen_bigram() {
        let p = NoRepeatNGram::new(2);
        assert_eq!(p.banned(&[3, 7, 7, 12, 3]), vec![7]);
        assert_eq!(p.banned(&[1]), Vec::<i64>::new());
        let p3 = NoRepeatNGram::new(3);
        assert_eq!(p3.banned(&[5, 9, 5, 9]), vec![5]);
    }

    #[test]
    fn a_forced_token_is_the_only_one_left_at_its_length_only() {
        let p = ForcedToken::new(1, vec![3]);
        let scores =
            Tensor::from_slice(&[0.5f32, -1.0, 2.0, 0.1, 9.0, 0.0, 1.0, 1.0]).reshape([2, 4]);
        let out = p.process(&[vec![2], vec![2]], &scores).unwrap();
        let inf = f32::NEG_INFINITY;
        assert_eq!(row(&out, 0), vec![inf, inf, inf, 0.0]);
        assert_eq!(row(&out, 1), vec![inf, inf, inf, 0.0]);
        // Any other length: unchanged.
        let later = p.process(&[vec![2, 3], vec![2, 3]], &scores).unwrap();
        assert_eq!(row(&later, 0), vec![0.5, -1.0, 2.0, 0.1]);
    }

    #[test]
    fn bad_words_ban_single_tokens_always_and_sequences_after_their_prefix() {
        let p = BadWords::new(vec![vec![4], vec![2, 3], vec![1]], &[1]);
        let scores = Tensor::zeros([2, 6], (Kind::Float, tch::Device::Cpu));
        let out = p.process(&[vec![0, 2], vec![0, 3]], &scores).unwrap();
        let inf = f32::NEG_INFINITY;
        assert_eq!(row(&out, 0), vec![0.0, 0.0, 0.0, inf, inf, 0.0]);
        // EOS (1) stays allowed: a lone EOS is not a bad word.
        assert_eq!(row(&out, 1), vec![0.0, 0.0, 0.0, 0.0, inf, 0.0]);
    }

    #[test]
    fn min_length_counts_the_whole_sequence() {
        let p = MinLength::new(3, vec![2]);
        // Fresh scores each time: a processor may write into the scores it is given.
        let scores = || Tensor::zeros([1, 4], (Kind::Float, tch::Device::Cpu));
        let out = p.process(&[vec![0, 5]], &scores()).unwrap();
        assert_eq!(row(&out, 0)[2], f32::NEG_INFINITY);
        let out = p.process(&[vec![0, 5, 6]], &scores()).unwrap();
        assert_eq!(row(&out, 0)[2], 0.0);
    }
}
