//! Logits processors: small units that reshape next-token scores before a token is chosen,
//! each equal to its transformers counterpart (`RepetitionPenaltyLogitsProcessor`,
//! `TopPLogitsWarper`, …).
//!
//! Every processor sees `ids`, the sequences so far (start token or prompt included, one row
//! per sequence, all of the same length), and `scores`, `[rows, vocab]` float32, and returns
//! new scores. Banned tokens get `-inf`.

use crate::Result;
use std::collections::{HashMap, HashSet};
use tch::{Device, Kind, Tensor};

/// One step of score shaping.
pub trait LogitsProcessor: std::fmt::Debug {
    /// New scores `[rows, vocab]` for the next token of the sequences `ids`. A processor may
    /// write into `scores` and return it: the engine hands over scores it owns and reads only
    /// what is returned, and a `[rows, vocab]` copy per processor and step is what beam search
    /// over a large vocabulary would otherwise spend its time on (each fresh block of tens of
    /// MB is new memory the kernel must zero).
    fn process(&self, ids: &[Vec<i64>], scores: &Tensor) -> Result<Tensor>;

    /// [`LogitsProcessor::process`], given `spare`: a tensor of the scores' shape and kind
    /// whose contents nobody needs, which a processor that makes new scores may write them
    /// into rather than allocate (see [`apply_with_spare`]). By default it is not used.
    fn process_into(&self, ids: &[Vec<i64>], scores: &Tensor, _spare: &Tensor) -> Result<Tensor> {
        self.process(ids, scores)
    }
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

/// [`apply`], with `spare`, a `[rows, vocab]` tensor whose contents are no longer needed (beam
/// search's raw logits, once their log-softmax is taken): a processor that computes new
/// scores writes them there, and the scores it replaced become the spare for the next one.
/// OPUS-MT's `renormalize_logits` took a fresh `[256, 58101]` block (60 MB) a step for its
/// second log-softmax, which the heap then kept.
pub fn apply_with_spare(
    processors: &[Box<dyn LogitsProcessor>],
    ids: &[Vec<i64>],
    scores: Tensor,
    spare: Tensor,
) -> Result<Tensor> {
    let usable = |spare: &Tensor, scores: &Tensor| {
        spare.size() == scores.size() && spare.kind() == scores.kind() && spare.is_contiguous()
    };
    let mut spare = usable(&spare, &scores).then_some(spare);
    let mut scores = scores;
    for p in processors {
        let out = match &spare {
            Some(s) => p.process_into(ids, &scores, s)?,
            None => p.process(ids, &scores)?,
        };
        if spare
            .as_ref()
            .is_some_and(|s| s.data_ptr() == out.data_ptr())
        {
            spare = Some(std::mem::replace(&mut scores, out)).filter(|s| usable(s, &scores));
        } else {
            scores = out;
        }
    }
    Ok(scores)
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
        let (sorted, order) = sort_ascending(scores)?;
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

/// `scores` `[rows, vocab]` sorted ascending along the vocabulary, and the order: what
/// libtorch's stable sort returns (equal scores in index order, −0 equal to +0, NaN last).
/// CPU f32 scores are sorted by a radix sort on their bits: 0.5 ms for GPT-2's 50,257 scores,
/// where libtorch's sort took 2.9 ms on a 2-core Zen 5 (a fifth of a top-p decoding step).
/// Anything else goes to libtorch's sort.
fn sort_ascending(scores: &Tensor) -> Result<(Tensor, Tensor)> {
    let size = scores.size();
    if scores.device() != Device::Cpu || scores.kind() != Kind::Float || size.len() != 2 {
        return Ok(scores.f_sort(-1, false)?);
    }
    let vocab = size[1] as usize;
    let values = Vec::<f32>::try_from(&scores.f_contiguous()?.f_view([-1])?)?;
    let mut sorted = Vec::with_capacity(values.len());
    let mut order = Vec::with_capacity(values.len());
    for row in values.chunks(vocab.max(1)) {
        for i in radix_order(row) {
            sorted.push(row[i as usize]);
            order.push(i64::from(i));
        }
    }
    Ok((
        Tensor::f_from_slice(&sorted)?.f_view([size[0], size[1]])?,
        Tensor::f_from_slice(&order)?.f_view([size[0], size[1]])?,
    ))
}

/// The indices of `values` in ascending order of value, equal values in index order, −0
/// equal to +0, NaN last: a least-significant-digit radix sort, one byte per pass, of each
/// value's bits mapped to an unsigned key that orders as the floats do (negatives: every bit
/// flipped; the rest: the sign bit set). Each pass is stable, so ties keep index order.
fn radix_order(values: &[f32]) -> Vec<u32> {
    let key = |v: f32| -> u32 {
        if v.is_nan() {
            return u32::MAX;
        }
        let bits = (v + 0.0).to_bits(); // −0 + 0 = +0
        if bits >> 31 == 1 {
            !bits
        } else {
            bits | 0x8000_0000
        }
    };
    let keys: Vec<u32> = values.iter().map(|&v| key(v)).collect();
    let mut order: Vec<u32> = (0..values.len() as u32).collect();
    let mut next = vec![0u32; values.len()];
    for shift in [0, 8, 16, 24] {
        let digit = |i: u32| ((keys[i as usize] >> shift) & 0xff) as usize;
        // Where each digit's run starts in `next`: counts, then running sums.
        let mut start = [0usize; 257];
        for &i in &order {
            start[digit(i) + 1] += 1;
        }
        for d in 0..256 {
            start[d + 1] += start[d];
        }
        for &i in &order {
            let d = digit(i);
            next[start[d]] = i;
            start[d] += 1;
        }
        std::mem::swap(&mut order, &mut next);
    }
    order
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
        // Written in place: every score -inf, then 0 at the forced tokens. (A zeros tensor,
        // a mask and its negation, and a masked fill took 150 MB of new memory on OPUS-MT's
        // last beam step, the run's peak.)
        let vocab = scores.size()[1];
        let (rows, tokens): (Vec<i64>, Vec<i64>) = (0..scores.size()[0])
            .flat_map(|r| self.tokens.iter().map(move |&t| (r, t)))
            .filter(|&(_, t)| (0..vocab).contains(&t))
            .unzip();
        let mut out = scores.shallow_clone();
        let _ = out.f_fill_(f64::NEG_INFINITY)?;
        if !rows.is_empty() {
            let device = scores.device();
            let index = [
                Some(Tensor::f_from_slice(&rows)?.f_to(device)?),
                Some(Tensor::f_from_slice(&tokens)?.f_to(device)?),
            ];
            let zero = Tensor::f_zeros([1], (scores.kind(), device))?;
            let _ = out.f_index_put_(&index, &zero, false)?;
        }
        Ok(out)
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

    /// The same kernel as `log_softmax`, written into `spare`.
    fn process_into(&self, ids: &[Vec<i64>], scores: &Tensor, spare: &Tensor) -> Result<Tensor> {
        if scores.kind() != Kind::Float
            || spare.kind() != Kind::Float
            || spare.size() != scores.size()
            || !spare.is_contiguous()
        {
            return self.process(ids, scores);
        }
        Ok(scores.f_internal_log_softmax_out(spare, -1, false)?)
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

    /// The radix sort gives libtorch's stable sort exactly: values and order, with ties,
    /// −inf (banned tokens), −0 and +0, and over several rows.
    #[test]
    fn the_radix_sort_equals_libtorchs_stable_sort() {
        tch::manual_seed(7);
        // Rounded to quarters, so that many scores tie.
        let scores = (Tensor::randn([3, 5000], (Kind::Float, Device::Cpu)) * 8.0)
            .round()
            .g_div_scalar(4.0);
        let _ = scores.get(0).narrow(0, 0, 50).fill_(f64::NEG_INFINITY);
        let _ = scores.get(1).narrow(0, 10, 5).fill_(-0.0);
        let _ = scores.get(1).narrow(0, 20, 5).fill_(0.0);
        let _ = scores.get(2).narrow(0, 0, 3).fill_(f64::INFINITY);
        let (values, order) = sort_ascending(&scores).unwrap();
        let (values_ref, order_ref) = scores.sort_stable(true, -1, false);
        assert!(values.equal(&values_ref));
        assert!(order.equal(&order_ref));
        assert_eq!(radix_order(&[f32::NAN, 1.0, -1.0]), [2, 1, 0]);
        assert!(radix_order(&[]).is_empty());
    }

    /// Top-p over the radix sort keeps exactly the tokens that transformers' filter over
    /// libtorch's sort keeps: always, with libtorch's stable sort; with its default sort
    /// (transformers' `torch.sort`) wherever no two scores tie, since that one orders equal
    /// scores arbitrarily.
    #[test]
    fn top_p_keeps_what_the_library_sort_keeps() {
        let filtered = |scores: &Tensor, p: f64, stable: bool| {
            let (sorted, order) = scores.sort_stable(stable, -1, false);
            let cumulative = sorted.softmax(-1, Kind::Float).cumsum(-1, Kind::Float);
            let remove_sorted = cumulative.le(1.0 - p);
            let vocab = scores.size()[1];
            let _ = remove_sorted.narrow(-1, vocab - 1, 1).fill_(0);
            let remove = remove_sorted.scatter(1, &order, &remove_sorted);
            scores.masked_fill(&remove, f64::NEG_INFINITY)
        };
        tch::manual_seed(8);
        let distinct = Tensor::randn([2, 50257], (Kind::Float, Device::Cpu)) * 3.0;
        let tied = distinct.round();
        for p in [0.5, 0.9, 0.99] {
            let ours = TopP::new(p, 1).process(&[], &distinct).unwrap();
            assert!(ours.equal(&filtered(&distinct, p, false)), "top-p {p}");
            let ours = TopP::new(p, 1).process(&[], &tied).unwrap();
            assert!(ours.equal(&filtered(&tied, p, true)), "top-p {p}, ties");
        }
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
        // Fresh scores each time: the processor writes into the scores it is given.
        let scores =
            || Tensor::from_slice(&[0.5f32, -1.0, 2.0, 0.1, 9.0, 0.0, 1.0, 1.0]).reshape([2, 4]);
        let out = p.process(&[vec![2], vec![2]], &scores()).unwrap();
        let inf = f32::NEG_INFINITY;
        assert_eq!(row(&out, 0), vec![inf, inf, inf, 0.0]);
        assert_eq!(row(&out, 1), vec![inf, inf, inf, 0.0]);
        // Any other length: unchanged.
        let later = p.process(&[vec![2, 3], vec![2, 3]], &scores()).unwrap();
        assert_eq!(row(&later, 0), vec![0.5, -1.0, 2.0, 0.1]);
        // Two forced tokens share it; one outside the vocabulary is left out.
        let two = ForcedToken::new(1, vec![0, 2, 7]);
        let out = two.process(&[vec![2], vec![2]], &scores()).unwrap();
        assert_eq!(row(&out, 1), vec![0.0, inf, 0.0, inf]);
    }

    /// With a spare, the processors give the same scores as without one, and a processor that
    /// makes new scores writes them into the spare (then into the scores it replaced).
    #[test]
    fn the_spare_takes_new_scores_and_changes_nothing() {
        tch::manual_seed(3);
        let logits = Tensor::randn([4, 50], (Kind::Float, Device::Cpu));
        let processors: Vec<Box<dyn LogitsProcessor>> = vec![
            Box::new(BadWords::new(vec![vec![7]], &[1])),
            Box::new(Renormalize),
            Box::new(MinLength::new(5, vec![1])),
            Box::new(Renormalize),
        ];
        let ids = vec![vec![0, 2]; 4];
        let plain = apply(&processors, &ids, logits.log_softmax(-1, Kind::Float)).unwrap();
        let (scores, spare) = (logits.log_softmax(-1, Kind::Float), logits.copy());
        let (first, second) = (spare.data_ptr(), scores.data_ptr());
        let with = apply_with_spare(&processors, &ids, scores, spare).unwrap();
        assert!(with.equal(&plain));
        // Two renormalizations: into the spare, then back into the first scores' memory.
        assert_eq!(with.data_ptr(), second);
        assert_ne!(first, second);
        // A spare of another shape is not used.
        let (scores, odd) = (logits.log_softmax(-1, Kind::Float), logits.narrow(1, 0, 10));
        let with = apply_with_spare(&processors, &ids, scores, odd).unwrap();
        assert!(with.equal(&plain));
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
