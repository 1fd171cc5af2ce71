//! Token classification (NER), with transformers' `token-classification` semantics:
//! aggregation strategies `none`, `simple`, `first`, `average`, `max`; B-/I- grouping;
//! `ignore_labels` (default `["O"]`); character offsets into the original text; and long
//! texts split into overlapping windows whose entities are merged.

use super::{check_batch_size, load_common, max_tokens, run_batches, DEFAULT_BATCH_SIZE};
use crate::heads::TokenClassificationModel;
use serde::Serialize;
use std::collections::BTreeMap;
use std::str::FromStr;
use tch::Kind;
use trident_core::{Encoded, Error, LoadOptions, ModelFiles, Result, TextEncoder};

/// How token predictions become entities.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Aggregation {
    /// One entity per token, with its own label (`entity`, `index`).
    None,
    /// Adjacent tokens with the same tag are grouped (`entity_group`).
    #[default]
    Simple,
    /// Words take the label of their first token, then are grouped.
    First,
    /// Words take the label with the best average score over their tokens.
    Average,
    /// Words take the label of their most confident token.
    Max,
}

impl FromStr for Aggregation {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "none" => Aggregation::None,
            "simple" => Aggregation::Simple,
            "first" => Aggregation::First,
            "average" => Aggregation::Average,
            "max" => Aggregation::Max,
            other => {
                return Err(Error::Input(format!(
                    "unknown aggregation '{other}': use none, simple, first, average or max"
                )))
            }
        })
    }
}

/// One entity. Field names and order are transformers' pipeline output.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(untagged)]
pub enum Entity {
    /// A single token (aggregation `none`).
    Token {
        /// Its label (`B-PER`, …).
        entity: String,
        /// The label's probability.
        score: f32,
        /// Token index in the model input (special tokens counted).
        index: usize,
        /// The token as the vocabulary spells it.
        word: String,
        /// Start character offset in the text.
        start: usize,
        /// End character offset (exclusive).
        end: usize,
    },
    /// A group of tokens or words with one tag.
    Group {
        /// The tag without its B-/I- prefix (`PER`, `LOC`, …).
        entity_group: String,
        /// The mean score of the grouped tokens or words.
        score: f32,
        /// The grouped text, as the tokenizer's decoder joins the tokens.
        word: String,
        /// Start character offset in the text.
        start: usize,
        /// End character offset (exclusive).
        end: usize,
    },
}

impl Entity {
    fn span(&self) -> (usize, usize, f32) {
        match self {
            Entity::Token {
                start, end, score, ..
            }
            | Entity::Group {
                start, end, score, ..
            } => (*start, *end, *score),
        }
    }

    fn label(&self) -> &str {
        match self {
            Entity::Token { entity, .. } => entity,
            Entity::Group { entity_group, .. } => entity_group,
        }
    }
}

/// One call's options of a [`TokenClassifier`].
#[derive(Debug, Clone)]
pub struct NerOptions {
    /// Windows per forward pass.
    pub batch_size: usize,
    /// Aggregation strategy.
    pub aggregation: Aggregation,
    /// Tokens shared by consecutive windows of a long text. `None`: texts that fit are run
    /// whole, longer ones are split with a stride of a quarter window.
    pub stride: Option<usize>,
    /// Labels (or groups) to drop from the output.
    pub ignore_labels: Vec<String>,
}

impl Default for NerOptions {
    fn default() -> Self {
        NerOptions {
            batch_size: DEFAULT_BATCH_SIZE,
            aggregation: Aggregation::Simple,
            stride: None,
            ignore_labels: vec!["O".into()],
        }
    }
}

/// A token of one window with its scores, before aggregation (transformers' "pre-entity").
struct PreEntity {
    word: String,
    scores: Vec<f32>,
    start: usize,
    end: usize,
    index: usize,
    is_subword: bool,
}

/// An entity label decision for a token or word, before grouping.
struct Tagged {
    entity: String,
    score: f32,
    word: String,
    start: usize,
    end: usize,
    index: usize,
}

/// A token-classification (NER) pipeline. Loaded once, it serves any number of calls, from
/// any number of threads, each with its own [`NerOptions`].
pub struct TokenClassifier {
    tokens: std::sync::atomic::AtomicUsize,
    model: TokenClassificationModel,
    tokenizer: TextEncoder,
    labels: Vec<String>,
    max_len: usize,
    subword_prefix: Option<String>,
    unk_id: Option<i64>,
}

/// One window of one text.
struct Window {
    text: usize,
    encoding: Encoded,
    /// Global index of this window's first text token, for `index` in `none` output.
    index_offset: usize,
}

impl TokenClassifier {
    /// Load a `*ForTokenClassification` checkpoint.
    pub fn from_pretrained(files: &ModelFiles, options: &LoadOptions) -> Result<Self> {
        let (config, tokenizer, device) = load_common(files, options)?;
        let labels = config.common.labels(&files.get("config.json")?)?;
        let model = TokenClassificationModel::load(files, &config, device, options.dtype)?;
        let max_len = max_tokens(&config, &tokenizer);
        Ok(TokenClassifier {
            tokens: Default::default(),
            subword_prefix: tokenizer.continuing_subword_prefix(),
            unk_id: tokenizer.unk_id(),
            model,
            tokenizer,
            labels,
            max_len,
        })
    }

    /// An error when `options` cannot be used with this model, naming the option.
    pub fn check(&self, options: &NerOptions) -> Result<()> {
        check_batch_size(options.batch_size)?;
        if let Some(stride) = options.stride {
            if options.aggregation == Aggregation::None {
                return Err(Error::Input("stride needs an aggregation other than none (as in transformers): tokens of overlapping windows cannot be matched up otherwise".into()));
            }
            let room = self
                .max_len
                .saturating_sub(self.tokenizer.num_special_tokens());
            if stride >= room {
                return Err(Error::Input(format!(
                    "stride {stride} must be smaller than the {room} text tokens of a window"
                )));
            }
        }
        Ok(())
    }

    /// The windows of one text: one when it fits (and no stride is asked), else overlapping
    /// windows of the model's length.
    fn windows(&self, text: &str, index: usize, options: &NerOptions) -> Result<Vec<Window>> {
        // With --stride every text is windowed directly; otherwise a text that fits is run
        // whole, and only a longer one is tokenized again into windows.
        let whole_len = match options.stride {
            Some(_) => None,
            None => {
                let whole = self.tokenizer.encode(text)?;
                if whole.len() <= self.max_len {
                    return Ok(vec![Window {
                        text: index,
                        encoding: whole,
                        index_offset: 0,
                    }]);
                }
                Some(whole.len())
            }
        };
        let room = self
            .max_len
            .saturating_sub(self.tokenizer.num_special_tokens());
        let stride = options.stride.unwrap_or(room / 4);
        let windows = self.tokenizer.encode_windows(text, self.max_len, stride)?;
        if let Some(len) = whole_len {
            tracing::warn!(
                "a text of {len} tokens was split into {} overlapping windows (stride {stride})",
                windows.len()
            );
        }
        Ok(windows
            .into_iter()
            .enumerate()
            .map(|(w, encoding)| Window {
                text: index,
                encoding,
                index_offset: w * (room - stride),
            })
            .collect())
    }

    /// The model underneath (encoder and classifier).
    pub fn model(&self) -> &TokenClassificationModel {
        &self.model
    }

    /// The label names (`O`, `B-PER`, …), in index order.
    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    /// Tokens run through the model so far (for throughput summaries).
    pub fn tokens_processed(&self) -> usize {
        self.tokens.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Find the entities of each text; results are in input order.
    pub fn run(&self, texts: &[&str], options: &NerOptions) -> Result<Vec<Vec<Entity>>> {
        self.check(options)?;
        let mut windows = Vec::new();
        for (i, text) in texts.iter().enumerate() {
            windows.extend(self.windows(text, i, options)?);
        }
        let (batch_size, device) = (options.batch_size, self.model.encoder.device());
        // Scores [seq, labels] per window.
        let scores = run_batches(
            &windows,
            |w| &w.encoding,
            batch_size,
            &self.tokenizer,
            device,
            &self.tokens,
            |batch, group| {
                let logits = self.model.forward_unpadded(batch)?; // [batch, seq, labels] f32
                let probs = logits
                    .f_softmax(-1, Kind::Float)?
                    .f_to_device(tch::Device::Cpu)?;
                group
                    .iter()
                    .enumerate()
                    .map(|(row, w)| {
                        Ok(Vec::<Vec<f32>>::try_from(
                            &probs
                                .f_get(row as i64)?
                                .f_narrow(0, 0, w.encoding.len() as i64)?,
                        )?)
                    })
                    .collect()
            },
        )?;
        let mut windows_per_text = vec![0usize; texts.len()];
        for w in &windows {
            windows_per_text[w.text] += 1;
        }
        let ignored = |e: &Entity| options.ignore_labels.iter().any(|l| l == e.label());
        let mut per_text: Vec<Vec<Entity>> = vec![Vec::new(); texts.len()];
        // `none` over several windows: each token once, by its index in the whole text, from
        // the window where it lies farthest from an edge (distance, entity).
        let mut by_index: Vec<BTreeMap<usize, (usize, Entity)>> =
            vec![BTreeMap::new(); texts.len()];
        for (w, s) in windows.iter().zip(scores) {
            let pre = self.pre_entities(texts[w.text], w, s);
            let tokens = pre.len();
            let entities = self.aggregate(pre, options.aggregation)?;
            if options.aggregation == Aggregation::None && windows_per_text[w.text] > 1 {
                for (k, e) in entities.into_iter().enumerate() {
                    let distance = k.min(tokens - 1 - k);
                    let Entity::Token { index, .. } = e else {
                        continue;
                    };
                    match by_index[w.text].get(&index) {
                        Some((best, _)) if *best >= distance => {}
                        _ => {
                            by_index[w.text].insert(index, (distance, e));
                        }
                    }
                }
            } else {
                per_text[w.text].extend(entities.into_iter().filter(|e| !ignored(e)));
            }
        }
        Ok(per_text
            .into_iter()
            .zip(windows_per_text)
            .zip(by_index)
            .map(|((entities, n), tokens)| match (n, options.aggregation) {
                (0 | 1, _) => entities,
                (_, Aggregation::None) => tokens
                    .into_values()
                    .map(|(_, e)| e)
                    .filter(|e| !ignored(e))
                    .collect(),
                // Grouped entities: transformers' `stride` rule, one per overlapping span.
                _ => merge_overlapping(entities),
            })
            .collect())
    }

    /// Tokens with scores, offsets, and whether each continues a word.
    fn pre_entities(&self, text: &str, window: &Window, scores: Vec<Vec<f32>>) -> Vec<PreEntity> {
        let chars = CharIndex::new(text);
        let e = &window.encoding;
        let leading_specials = e.special.iter().take_while(|&&s| s).count();
        let mut out = Vec::new();
        for (idx, token_scores) in scores.into_iter().enumerate() {
            if e.special[idx] {
                continue;
            }
            let (start, end) = e.offsets[idx];
            let word_ref = chars.slice(start, end);
            let mut word = e.tokens[idx].clone();
            let mut is_subword = match &self.subword_prefix {
                // A word-aware vocabulary: a token whose text differs in length from its
                // span carries the continuation prefix.
                Some(_) => word.chars().count() != word_ref.chars().count(),
                // Otherwise transformers' heuristic: a token not preceded by a space.
                None => start > 0 && !chars.slice(start - 1, start + 1).contains(' '),
            };
            if Some(e.ids[idx]) == self.unk_id {
                word = word_ref.to_string();
                is_subword = false;
            }
            let index = if window.index_offset == 0 {
                idx
            } else {
                leading_specials + window.index_offset + (idx - leading_specials)
            };
            out.push(PreEntity {
                word,
                scores: token_scores,
                start,
                end,
                index,
                is_subword,
            });
        }
        out
    }

    fn label(&self, scores: &[f32]) -> (String, f32) {
        let (i, s) = argmax(scores);
        (
            self.labels
                .get(i)
                .cloned()
                .unwrap_or_else(|| format!("LABEL_{i}")),
            s,
        )
    }

    fn aggregate(&self, pre: Vec<PreEntity>, strategy: Aggregation) -> Result<Vec<Entity>> {
        let tagged: Vec<Tagged> = match strategy {
            Aggregation::None | Aggregation::Simple => pre
                .into_iter()
                .map(|p| {
                    let (entity, score) = self.label(&p.scores);
                    Tagged {
                        entity,
                        score,
                        word: p.word,
                        start: p.start,
                        end: p.end,
                        index: p.index,
                    }
                })
                .collect(),
            _ => self.aggregate_words(pre, strategy)?,
        };
        if strategy == Aggregation::None {
            return Ok(tagged
                .into_iter()
                .map(|t| Entity::Token {
                    entity: t.entity,
                    score: t.score,
                    index: t.index,
                    word: t.word,
                    start: t.start,
                    end: t.end,
                })
                .collect());
        }
        self.group(tagged)
    }

    /// Join subword tokens into words and give each word one label (first/average/max).
    fn aggregate_words(&self, pre: Vec<PreEntity>, strategy: Aggregation) -> Result<Vec<Tagged>> {
        let mut words: Vec<Vec<PreEntity>> = Vec::new();
        for p in pre {
            match words.last_mut() {
                Some(word) if p.is_subword => word.push(p),
                _ => words.push(vec![p]),
            }
        }
        words
            .into_iter()
            .map(|w| self.aggregate_word(w, strategy))
            .collect()
    }

    fn aggregate_word(&self, tokens: Vec<PreEntity>, strategy: Aggregation) -> Result<Tagged> {
        let word = self
            .tokenizer
            .tokens_to_string(&tokens.iter().map(|t| t.word.clone()).collect::<Vec<_>>())?;
        let (entity, score) = match strategy {
            Aggregation::First => self.label(&tokens[0].scores),
            Aggregation::Max => {
                // The first token whose best score is highest.
                let best = tokens
                    .iter()
                    .fold(None::<&PreEntity>, |best, t| match best {
                        Some(b) if argmax(&b.scores).1 >= argmax(&t.scores).1 => Some(b),
                        _ => Some(t),
                    })
                    .ok_or_else(|| Error::Input("empty word".into()))?;
                self.label(&best.scores)
            }
            _ => {
                let n = tokens.len() as f32;
                let mean: Vec<f32> = (0..tokens[0].scores.len())
                    .map(|j| tokens.iter().map(|t| t.scores[j]).sum::<f32>() / n)
                    .collect();
                self.label(&mean)
            }
        };
        let (start, end) = (tokens[0].start, tokens[tokens.len() - 1].end);
        Ok(Tagged {
            entity,
            score,
            word,
            start,
            end,
            index: tokens[0].index,
        })
    }

    /// Group adjacent entities with the same tag; a `B-` tag starts a new group.
    fn group(&self, tagged: Vec<Tagged>) -> Result<Vec<Entity>> {
        let mut groups = Vec::new();
        let mut current: Vec<Tagged> = Vec::new();
        for t in tagged {
            let continues = current.last().is_some_and(|last| {
                let (bi, tag) = split_tag(&t.entity);
                tag == split_tag(&last.entity).1 && bi != "B"
            });
            if !continues && !current.is_empty() {
                groups.push(self.close_group(std::mem::take(&mut current))?);
            }
            current.push(t);
        }
        if !current.is_empty() {
            groups.push(self.close_group(current)?);
        }
        Ok(groups)
    }

    fn close_group(&self, members: Vec<Tagged>) -> Result<Entity> {
        let entity_group = members[0]
            .entity
            .split_once('-')
            .map_or(members[0].entity.as_str(), |(_, t)| t)
            .to_string();
        let score = members.iter().map(|m| m.score).sum::<f32>() / members.len() as f32;
        let word = self
            .tokenizer
            .tokens_to_string(&members.iter().map(|m| m.word.clone()).collect::<Vec<_>>())?;
        Ok(Entity::Group {
            entity_group,
            score,
            word,
            start: members[0].start,
            end: members[members.len() - 1].end,
        })
    }
}

/// `("B", "PER")` for `B-PER`; a label without a B-/I- prefix counts as a continuation.
fn split_tag(label: &str) -> (&str, &str) {
    if let Some(tag) = label.strip_prefix("B-") {
        ("B", tag)
    } else if let Some(tag) = label.strip_prefix("I-") {
        ("I", tag)
    } else {
        ("I", label)
    }
}

/// The first index of the largest value, and the value.
fn argmax(scores: &[f32]) -> (usize, f32) {
    scores
        .iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |(bi, bs), (i, &s)| {
            if s > bs {
                (i, s)
            } else {
                (bi, bs)
            }
        })
}

/// Entities of overlapping windows: sorted by start; of two that overlap, the longer (then
/// the more confident) one stays.
fn merge_overlapping(mut entities: Vec<Entity>) -> Vec<Entity> {
    entities.sort_by_key(|e| e.span().0);
    let mut out: Vec<Entity> = Vec::new();
    let mut iter = entities.into_iter();
    let Some(mut previous) = iter.next() else {
        return out;
    };
    for e in iter {
        let (ps, pe, pscore) = previous.span();
        let (s, end, score) = e.span();
        if ps <= s && s < pe {
            let (len, plen) = (end - s, pe - ps);
            if len > plen || (len == plen && score > pscore) {
                previous = e;
            }
        } else {
            out.push(std::mem::replace(&mut previous, e));
        }
    }
    out.push(previous);
    out
}

/// Slicing a text by character offsets (tokenizers give character, not byte, offsets).
struct CharIndex<'a> {
    text: &'a str,
    bytes: Vec<usize>,
}

impl<'a> CharIndex<'a> {
    fn new(text: &'a str) -> Self {
        let mut bytes: Vec<usize> = text.char_indices().map(|(b, _)| b).collect();
        bytes.push(text.len());
        CharIndex { text, bytes }
    }

    /// Characters `[start, end)`, clamped to the text.
    fn slice(&self, start: usize, end: usize) -> &'a str {
        let last = self.bytes.len() - 1;
        let (s, e) = (self.bytes[start.min(last)], self.bytes[end.min(last)]);
        self.text.get(s..e.max(s)).unwrap_or("")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(label: &str, start: usize, end: usize, score: f32) -> Entity {
        Entity::Group {
            entity_group: label.into(),
            score,
            word: String::new(),
            start,
            end,
        }
    }

    #[test]
    fn overlapping_window_entities_keep_the_longest() {
        let merged = merge_overlapping(vec![
            group("PER", 10, 15, 0.9),
            group("PER", 0, 4, 0.5),
            group("PER", 10, 20, 0.4),
            group("LOC", 30, 35, 0.7),
        ]);
        let spans: Vec<(usize, usize)> = merged.iter().map(|e| (e.span().0, e.span().1)).collect();
        assert_eq!(spans, vec![(0, 4), (10, 20), (30, 35)]);
    }

    #[test]
    fn tags_split_like_transformers() {
        assert_eq!(split_tag("B-PER"), ("B", "PER"));
        assert_eq!(split_tag("I-LOC"), ("I", "LOC"));
        assert_eq!(split_tag("MISC"), ("I", "MISC"));
    }

    #[test]
    fn char_offsets_slice_multibyte_text() {
        let idx = CharIndex::new("Zoë in 東京");
        assert_eq!(idx.slice(0, 3), "Zoë");
        assert_eq!(idx.slice(7, 9), "東京");
        assert_eq!(idx.slice(8, 99), "京");
    }
}
