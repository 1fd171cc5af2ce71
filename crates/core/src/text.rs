//! Text to tensors: tokenize a batch of texts with padding and truncation, keeping every
//! token's character offsets into the original string (as transformers' fast tokenizers do).
//!
//! The tokenizer comes from tokenizer.json when the checkpoint has one. Otherwise it is built
//! from the files transformers' slow tokenizers read: vocab.txt (WordPiece), vocab.json +
//! merges.txt (byte-level BPE), or a SentencePiece model ([`crate::sentencepiece`]): T5's
//! `spiece.model`, Marian's `source.spm` + `target.spm` + `vocab.json`, M2M100's
//! `sentencepiece.bpe.model` + `vocab.json`. For the last two, ids come from vocab.json, and
//! every method here (encode, token_id, decode, …) speaks those ids.

use crate::files::ModelFiles;
use crate::sentencepiece::{self, JoinStyle, SentencePieceModel, VocabMap};
use crate::{Error, Result};
use std::path::Path;
use std::sync::Arc;
use tch::{Device, Kind, Tensor};
use tokenizers::{Encoding, Token, Tokenizer, TruncationDirection};

/// One text, tokenized.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Encoded {
    /// Token ids.
    pub ids: Vec<i64>,
    /// Segment ids (all 0 for a single text).
    pub type_ids: Vec<i64>,
    /// Token strings, as the vocabulary spells them.
    pub tokens: Vec<String>,
    /// Character (not byte) offsets `[start, end)` of each token in the text; `(0, 0)` for
    /// special tokens.
    pub offsets: Vec<(usize, usize)>,
    /// Whether each token is a special token (`[CLS]`, `</s>`, …).
    pub special: Vec<bool>,
    /// The index of the word each token belongs to, if any.
    pub word_ids: Vec<Option<u32>>,
}

impl Encoded {
    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether there are no tokens at all.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    fn from_encoding(e: &Encoding) -> Self {
        Encoded {
            ids: e.get_ids().iter().map(|&i| i as i64).collect(),
            type_ids: e.get_type_ids().iter().map(|&i| i as i64).collect(),
            tokens: e.get_tokens().to_vec(),
            offsets: e.get_offsets().to_vec(),
            special: e
                .get_special_tokens_mask()
                .iter()
                .map(|&m| m == 1)
                .collect(),
            word_ids: e.get_word_ids().to_vec(),
        }
    }
}

/// Which side padding goes on: right for encoders, left for decoder-only generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PaddingSide {
    /// Pad after the tokens.
    #[default]
    Right,
    /// Pad before the tokens.
    Left,
}

/// Several texts as padded tensors, `[batch, seq]` each.
#[derive(Debug)]
pub struct Batch {
    /// `[batch, seq]` int64 token ids.
    pub input_ids: Tensor,
    /// `[batch, seq]` int64, 1 for a real token and 0 for padding.
    pub attention_mask: Tensor,
    /// `[batch, seq]` int64 segment ids.
    pub token_type_ids: Tensor,
    /// The unpadded encodings, in batch order.
    pub encodings: Vec<Encoded>,
    /// Where the padding went.
    pub padding_side: PaddingSide,
}

impl Batch {
    /// Pad `encodings` to the longest one with `pad_id` and stack them on `device`.
    pub fn new(
        encodings: Vec<Encoded>,
        pad_id: i64,
        side: PaddingSide,
        device: Device,
    ) -> Result<Self> {
        if encodings.is_empty() {
            return Err(Error::Input(
                "an empty batch: give at least one text".into(),
            ));
        }
        let width = encodings.iter().map(Encoded::len).max().unwrap_or(0);
        let rows = encodings.len();
        let mut ids = Vec::with_capacity(rows * width);
        let mut mask = Vec::with_capacity(rows * width);
        let mut types = Vec::with_capacity(rows * width);
        for e in &encodings {
            let pad = width - e.len();
            let (left, right) = match side {
                PaddingSide::Right => (0, pad),
                PaddingSide::Left => (pad, 0),
            };
            ids.extend(std::iter::repeat_n(pad_id, left));
            mask.extend(std::iter::repeat_n(0i64, left));
            types.extend(std::iter::repeat_n(0i64, left));
            ids.extend_from_slice(&e.ids);
            mask.extend(std::iter::repeat_n(1i64, e.len()));
            types.extend_from_slice(&e.type_ids);
            ids.extend(std::iter::repeat_n(pad_id, right));
            mask.extend(std::iter::repeat_n(0i64, right));
            types.extend(std::iter::repeat_n(0i64, right));
        }
        let shape = [rows as i64, width as i64];
        let make = |v: &[i64]| -> Result<Tensor> {
            Ok(Tensor::f_from_slice(v)?.f_reshape(shape)?.f_to(device)?)
        };
        Ok(Batch {
            input_ids: make(&ids)?,
            attention_mask: make(&mask)?,
            token_type_ids: make(&types)?,
            encodings,
            padding_side: side,
        })
    }

    /// Number of texts.
    pub fn len(&self) -> usize {
        self.encodings.len()
    }

    /// Whether the batch is empty (never true for a batch built by [`Batch::new`]).
    pub fn is_empty(&self) -> bool {
        self.encodings.is_empty()
    }
}

/// A Hugging Face tokenizer plus what tokenizer_config.json says about lengths and padding.
#[derive(Clone)]
pub struct TextEncoder {
    tokenizer: Tokenizer,
    /// The same tokenizer without its post-processor: windowing runs the post-processor once
    /// per window itself (running it twice would trim byte-level offsets twice).
    raw: Tokenizer,
    /// Marian and M2M100: the vocab.json numbering of the pieces `tokenizer` produces.
    vocab: Option<Arc<VocabMap>>,
    /// The longest input the model takes, when the checkpoint says.
    pub model_max_length: Option<usize>,
    /// The id used for padding.
    pub pad_id: i64,
}

#[derive(serde::Deserialize, Default)]
struct TokenizerConfig {
    model_max_length: Option<f64>,
    pad_token: Option<serde_json::Value>,
    do_lower_case: Option<bool>,
    add_prefix_space: Option<bool>,
    tokenizer_class: Option<String>,
    eos_token: Option<serde_json::Value>,
    unk_token: Option<serde_json::Value>,
    bos_token: Option<serde_json::Value>,
    sep_token: Option<serde_json::Value>,
    /// T5: how many `<extra_id_N>` sentinels follow the vocabulary.
    extra_ids: Option<usize>,
    /// transformers 4 name of the extra special tokens.
    additional_special_tokens: Option<serde_json::Value>,
    /// transformers 5 name (a list, or a map of names to tokens).
    extra_special_tokens: Option<serde_json::Value>,
    /// Marian: decoding uses target_vocab.json.
    separate_vocabs: Option<bool>,
    /// M2M100: which language list (`m2m100` or `wmt21`).
    language_codes: Option<String>,
}

impl TokenizerConfig {
    /// A special token's text, or `default` when the config does not name it.
    fn token(&self, value: &Option<serde_json::Value>, default: &str) -> String {
        value
            .as_ref()
            .and_then(token_content)
            .unwrap_or_else(|| default.to_string())
    }

    /// The extra special tokens, under either name.
    fn extra_tokens(&self) -> Vec<String> {
        let mut out = Vec::new();
        for v in [&self.additional_special_tokens, &self.extra_special_tokens]
            .into_iter()
            .flatten()
        {
            match v {
                serde_json::Value::Array(a) => out.extend(a.iter().filter_map(token_content)),
                serde_json::Value::Object(o) => out.extend(o.values().filter_map(token_content)),
                _ => {}
            }
        }
        out
    }

    /// Refuse a tokenizer class that reads these files differently from `expected`.
    fn check_class(&self, expected: &[&str], file: &Path) -> Result<()> {
        match &self.tokenizer_class {
            Some(c) if !expected.contains(&c.as_str()) => Err(Error::Unsupported(format!(
                "{}: tokenizer_config.json names {c}, and without a tokenizer.json Trident reads \
                 this file only for {}. Create tokenizer.json once with Python: \
                 `AutoTokenizer.from_pretrained(DIR).save_pretrained(DIR)`",
                file.display(),
                expected.join(" / ")
            ))),
            _ => Ok(()),
        }
    }
}

fn token_content(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o.get("content").and_then(|c| c.as_str()).map(String::from),
        _ => None,
    }
}

impl TextEncoder {
    /// Load tokenizer.json (or build the tokenizer from vocab.txt, or vocab.json + merges.txt,
    /// when tokenizer.json is absent), with tokenizer_config.json when present.
    pub fn from_files(files: &ModelFiles) -> Result<Self> {
        let config: TokenizerConfig = match files.get_optional("tokenizer_config.json")? {
            Some(p) => crate::config::read_json(&p)?,
            None => TokenizerConfig::default(),
        };
        let mut vocab = None;
        let tokenizer = if let Some(path) = files.get_optional("tokenizer.json")? {
            load_tokenizer_json(&path)?
        } else if let Some(vocab) = files.get_optional("vocab.txt")? {
            build_wordpiece(&vocab, config.do_lower_case.unwrap_or(true))?
        } else if let (Some(vocab), Some(merges)) = (
            files.get_optional("vocab.json")?,
            files.get_optional("merges.txt")?,
        ) {
            build_byte_level_bpe(&vocab, &merges, config.add_prefix_space.unwrap_or(false))?
        } else if let Some(spiece) = files.get_optional("spiece.model")? {
            build_t5(&spiece, &config)?
        } else if let (Some(source), Some(target), Some(vocab_json)) = (
            files.get_optional("source.spm")?,
            files.get_optional("target.spm")?,
            files.get_optional("vocab.json")?,
        ) {
            let (tok, map) = build_marian(files, &source, &target, &vocab_json, &config)?;
            vocab = Some(Arc::new(map));
            tok
        } else if let (Some(spm), Some(vocab_json)) = (
            files.get_optional("sentencepiece.bpe.model")?,
            files.get_optional("vocab.json")?,
        ) {
            let (tok, map) = build_m2m100(&spm, &vocab_json, &config)?;
            vocab = Some(Arc::new(map));
            tok
        } else {
            return Err(files.missing("tokenizer.json"));
        };
        Self::new(tokenizer, &config, vocab)
    }

    /// Load from a tokenizer.json file alone.
    pub fn from_tokenizer_file(path: &Path) -> Result<Self> {
        Self::new(
            load_tokenizer_json(path)?,
            &TokenizerConfig::default(),
            None,
        )
    }

    fn new(
        mut tokenizer: Tokenizer,
        config: &TokenizerConfig,
        vocab: Option<Arc<VocabMap>>,
    ) -> Result<Self> {
        // We pad and truncate ourselves; a tokenizer.json may carry its own settings.
        tokenizer
            .with_truncation(None)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        tokenizer.with_padding(None);
        let pad_from_config = config.pad_token.as_ref().and_then(token_content);
        let lookup = |t: &str| match &vocab {
            Some(v) => v.token_id(t),
            None => tokenizer.token_to_id(t),
        };
        let pad_id = pad_from_config
            .iter()
            .map(String::as_str)
            .chain(["[PAD]", "<pad>", "<|endoftext|>"])
            .find_map(lookup)
            .unwrap_or(0) as i64;
        // HF writes a huge sentinel (1e30) when the length is unknown.
        let model_max_length = config
            .model_max_length
            .filter(|&m| m > 0.0 && m < 1e9)
            .map(|m| m as usize);
        let mut raw = tokenizer.clone();
        raw.with_post_processor(None::<tokenizers::PostProcessorWrapper>);
        Ok(TextEncoder {
            tokenizer,
            raw,
            vocab,
            model_max_length,
            pad_id,
        })
    }

    /// The underlying `tokenizers` tokenizer. For a Marian or M2M100 checkpoint read from its
    /// SentencePiece files, this is the segmenter, whose ids are the `.spm` file's and not the
    /// model's: use this type's methods ([`encode`](Self::encode),
    /// [`encode_plain`](Self::encode_plain), [`token_id`](Self::token_id),
    /// [`decode`](Self::decode)) for model ids.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Id of a token string, if the vocabulary has it (M2M100: also the `__xx__` language
    /// tokens).
    pub fn token_id(&self, token: &str) -> Option<i64> {
        match &self.vocab {
            Some(v) => v.token_id(token).map(i64::from),
            None => self.tokenizer.token_to_id(token).map(i64::from),
        }
    }

    /// The model's vocabulary, token → id, added tokens included (vocab.json plus M2M100's
    /// language tokens for Marian and M2M100 read from their SentencePiece files).
    pub fn vocab(&self) -> std::collections::HashMap<String, i64> {
        match &self.vocab {
            Some(v) => v
                .vocab()
                .iter()
                .map(|(t, &id)| (t.clone(), i64::from(id)))
                .collect(),
            None => self
                .tokenizer
                .get_vocab(true)
                .into_iter()
                .map(|(t, id)| (t, i64::from(id)))
                .collect(),
        }
    }

    /// Split `text` into tokens without special tokens, with character offsets (ids still the
    /// segmenter's: [`Self::encoded`] maps them). Marian: a leading `>>xx<<` language code is one
    /// token, as MarianTokenizer makes it.
    fn segment(&self, text: &str) -> Result<Encoding> {
        let err = |e: tokenizers::Error| Error::Tokenizer(e.to_string());
        match self
            .vocab
            .as_ref()
            .and_then(|v| v.split_language_code(text))
        {
            None => self.raw.encode_char_offsets(text, false).map_err(err),
            Some((code, rest)) => {
                let n = code.chars().count();
                let head = Encoding::from_tokens(vec![Token::new(0, code.to_string(), (0, n))], 0);
                let tail = self.raw.encode_char_offsets(rest, false).map_err(err)?;
                // Offsets of the rest move by the code's length.
                Ok(Encoding::merge([head, tail], true))
            }
        }
    }

    /// An [`Encoded`] in the model's ids (vocab.json's for Marian and M2M100).
    fn encoded(&self, e: &Encoding) -> Encoded {
        let mut out = Encoded::from_encoding(e);
        // An added token that strips the space before it (`lstrip`, NLLB's `<mask>`) comes
        // back from `tokenizers` with that space; the vocabulary spells it without, as
        // transformers' `convert_ids_to_tokens` does.
        for (id, token) in e.get_ids().iter().zip(out.tokens.iter_mut()) {
            if token.starts_with(char::is_whitespace) {
                if let Some(added) = self
                    .tokenizer
                    .get_added_vocabulary()
                    .simple_id_to_token(*id)
                {
                    *token = added;
                }
            }
        }
        if let Some(v) = &self.vocab {
            for (id, token) in out.ids.iter_mut().zip(out.tokens.iter_mut()) {
                let (mapped, spelled) = v.map_piece(token);
                *id = i64::from(mapped);
                if spelled != token.as_str() {
                    *token = spelled.to_string();
                }
            }
        }
        out
    }

    /// How many special tokens the post-processor adds around one text.
    pub fn num_special_tokens(&self) -> usize {
        use tokenizers::PostProcessor;
        self.tokenizer
            .get_post_processor()
            .map(|p| p.added_tokens(false))
            .unwrap_or(0)
    }

    /// Tokenize one text with the model's special tokens and no truncation. The special tokens
    /// are the post-processor's: `[CLS] … [SEP]` (BERT), `<s> … </s>` (RoBERTa), `… </s>` (T5,
    /// Marian, M2M100). M2M100's source language token is not among them: the translation
    /// pipeline puts `__xx__` ([`token_id`](Self::token_id)) in front itself.
    pub fn encode(&self, text: &str) -> Result<Encoded> {
        let e = self.segment(text)?;
        let e = self
            .tokenizer
            .post_process(e, None, true)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(self.encoded(&e))
    }

    /// Tokenize one text without any special tokens (special tokens written in the text are
    /// still recognized), with model ids and character offsets.
    pub fn encode_plain(&self, text: &str) -> Result<Encoded> {
        Ok(self.encoded(&self.segment(text)?))
    }

    /// Tokenize one text into windows of at most `max_len` tokens (special tokens included),
    /// consecutive windows sharing `stride` tokens, as transformers does with
    /// `return_overflowing_tokens=True, stride=…`. A short text gives one window.
    pub fn encode_windows(
        &self,
        text: &str,
        max_len: usize,
        stride: usize,
    ) -> Result<Vec<Encoded>> {
        let specials = self.num_special_tokens();
        let room = max_len
            .checked_sub(specials)
            .filter(|&r| r > 0)
            .ok_or_else(|| {
                Error::Input(format!(
                    "max length {max_len} leaves no room for text after {specials} special tokens"
                ))
            })?;
        if stride >= room {
            return Err(Error::Input(format!(
                "stride {stride} must be smaller than the {room} text tokens that fit in one window"
            )));
        }
        let mut e = self.segment(text)?;
        e.truncate(room, stride, TruncationDirection::Right);
        let e = self
            .tokenizer
            .post_process(e, None, true)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        let mut windows = vec![self.encoded(&e)];
        windows.extend(e.get_overflowing().iter().map(|o| self.encoded(o)));
        Ok(windows)
    }

    /// Tokenize one text, keeping at most `max_len` tokens (special tokens included) from the
    /// start. Returns the encoding and whether anything was cut.
    pub fn encode_truncated(&self, text: &str, max_len: usize) -> Result<(Encoded, bool)> {
        let room = max_len.saturating_sub(self.num_special_tokens()).max(1);
        let mut e = self.segment(text)?;
        let cut = e.len() > room;
        if cut {
            e.truncate(room, 0, TruncationDirection::Right);
            e.take_overflowing();
        }
        let e = self
            .tokenizer
            .post_process(e, None, true)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok((self.encoded(&e), cut))
    }

    /// Tokenize and pad several texts; each is truncated to `max_len` tokens when given.
    pub fn encode_batch(
        &self,
        texts: &[&str],
        max_len: Option<usize>,
        side: PaddingSide,
        device: Device,
    ) -> Result<Batch> {
        let encodings = texts
            .iter()
            .map(|t| match max_len {
                Some(m) => self.encode_truncated(t, m).map(|(e, _)| e),
                None => self.encode(t),
            })
            .collect::<Result<Vec<_>>>()?;
        Batch::new(encodings, self.pad_id, side, device)
    }

    /// The id of the unknown-token, when the vocabulary has one.
    pub fn unk_id(&self) -> Option<i64> {
        use tokenizers::models::ModelWrapper;
        if let Some(v) = &self.vocab {
            return Some(i64::from(v.unk_id()));
        }
        let unk = match self.tokenizer.get_model() {
            ModelWrapper::WordPiece(m) => Some(m.unk_token.clone()),
            ModelWrapper::BPE(m) => m.unk_token.clone(),
            ModelWrapper::WordLevel(m) => Some(m.unk_token.clone()),
            ModelWrapper::Unigram(_) => None,
        };
        match unk {
            Some(t) => self.token_id(&t),
            None => ["<unk>", "[UNK]"].iter().find_map(|t| self.token_id(t)),
        }
    }

    /// The prefix that marks a token continuing a word (`##` for WordPiece), if the model
    /// has one; BPE vocabularies like GPT-2's and RoBERTa's do not.
    pub fn continuing_subword_prefix(&self) -> Option<String> {
        use tokenizers::models::ModelWrapper;
        match self.tokenizer.get_model() {
            ModelWrapper::WordPiece(m) => Some(m.continuing_subword_prefix.clone()),
            ModelWrapper::BPE(m) => m.continuing_subword_prefix.clone(),
            _ => None,
        }
        .filter(|p| !p.is_empty())
    }

    /// Join token strings into text with the tokenizer's decoder (`##ing` joins its word,
    /// byte-level `Ġ` becomes a space), or with spaces when it has none.
    pub fn tokens_to_string(&self, tokens: &[String]) -> Result<String> {
        use tokenizers::Decoder;
        if let Some(v) = &self.vocab {
            return Ok(v.join(tokens));
        }
        match self.tokenizer.get_decoder() {
            Some(d) => d
                .decode(tokens.to_vec())
                .map_err(|e| Error::Tokenizer(e.to_string())),
            None => Ok(tokens.join(" ")),
        }
    }

    /// Turn ids back into text (Marian, M2M100: as their slow tokenizers join pieces).
    pub fn decode(&self, ids: &[i64], skip_special_tokens: bool) -> Result<String> {
        let ids: Vec<u32> = ids.iter().filter_map(|&i| u32::try_from(i).ok()).collect();
        if let Some(v) = &self.vocab {
            return Ok(v.decode(&ids, skip_special_tokens));
        }
        self.tokenizer
            .decode(&ids, skip_special_tokens)
            .map_err(|e| Error::Tokenizer(e.to_string()))
    }
}

/// T5: `spiece.model` alone, read as transformers' `T5Tokenizer` reads it.
fn build_t5(spiece: &Path, config: &TokenizerConfig) -> Result<Tokenizer> {
    config.check_class(&["T5Tokenizer", "T5TokenizerFast"], spiece)?;
    let model = SentencePieceModel::from_file(spiece)?;
    let listed = config
        .extra_tokens()
        .iter()
        .filter(|t| t.starts_with("<extra_id_"))
        .count();
    let extra_ids = config
        .extra_ids
        .unwrap_or(if listed > 0 { listed } else { 100 });
    let eos = config.token(&config.eos_token, "</s>");
    let specials = [
        config.token(&config.pad_token, "<pad>"),
        eos.clone(),
        config.token(&config.unk_token, "<unk>"),
    ];
    model.t5_tokenizer(extra_ids, &specials, &eos)
}

/// Marian (OPUS-MT): the source model splits, vocab.json numbers (see [`sentencepiece`]).
fn build_marian(
    files: &ModelFiles,
    source: &Path,
    target: &Path,
    vocab_json: &Path,
    config: &TokenizerConfig,
) -> Result<(Tokenizer, VocabMap)> {
    config.check_class(&["MarianTokenizer"], source)?;
    let source_model = SentencePieceModel::from_file(source)?;
    let target_model = SentencePieceModel::from_file(target)?;
    let encoder = sentencepiece::read_vocab_json(vocab_json)?;
    let separate = config.separate_vocabs.unwrap_or(false);
    let decoder = if separate {
        Some(sentencepiece::read_vocab_json(
            &files.get("target_vocab.json")?,
        )?)
    } else {
        None
    };
    let eos = config.token(&config.eos_token, "</s>");
    let unk = config.token(&config.unk_token, "<unk>");
    let mut specials = vec![
        eos.clone(),
        unk.clone(),
        config.token(&config.pad_token, "<pad>"),
    ];
    specials.extend(config.extra_tokens());
    let segmenter = sentencepiece::segmenter(&source_model, &specials, &eos)?;
    // transformers 5.24 joins with the source model unless the vocabularies are separate.
    let joiner = if separate { target_model } else { source_model };
    let map = VocabMap::new(
        encoder,
        decoder,
        &[],
        &unk,
        &specials,
        joiner,
        JoinStyle::Marian,
        vocab_json,
    )?;
    Ok((segmenter, map))
}

/// M2M100: the model splits, vocab.json numbers, the `__xx__` language tokens follow it.
fn build_m2m100(
    spm: &Path,
    vocab_json: &Path,
    config: &TokenizerConfig,
) -> Result<(Tokenizer, VocabMap)> {
    config.check_class(&["M2M100Tokenizer"], spm)?;
    let model = SentencePieceModel::from_file(spm)?;
    let encoder = sentencepiece::read_vocab_json(vocab_json)?;
    let list = config.language_codes.as_deref().unwrap_or("m2m100");
    let codes = sentencepiece::m2m100_language_codes(list).ok_or_else(|| {
        Error::Unsupported(format!(
            "{}: language_codes {list:?} is not one M2M100Tokenizer knows (m2m100, wmt21)",
            vocab_json.display()
        ))
    })?;
    let first = encoder.len() as u32;
    let languages: Vec<(String, u32)> = codes
        .iter()
        .enumerate()
        .map(|(i, c)| (format!("__{c}__"), first + i as u32))
        .collect();
    let eos = config.token(&config.eos_token, "</s>");
    let unk = config.token(&config.unk_token, "<unk>");
    let mut specials = vec![
        config.token(&config.bos_token, "<s>"),
        eos.clone(),
        config.token(&config.sep_token, "</s>"),
        config.token(&config.pad_token, "<pad>"),
        unk.clone(),
    ];
    specials.extend(languages.iter().map(|(t, _)| t.clone()));
    specials.extend(config.extra_tokens());
    let segmenter = sentencepiece::segmenter(&model, &specials, &eos)?;
    let map = VocabMap::new(
        encoder,
        None,
        &languages,
        &unk,
        &specials,
        model,
        JoinStyle::M2M100,
        vocab_json,
    )?;
    Ok((segmenter, map))
}

fn load_tokenizer_json(path: &Path) -> Result<Tokenizer> {
    Tokenizer::from_file(path).map_err(|e| Error::Tokenizer(format!("{}: {e}", path.display())))
}

fn build_wordpiece(vocab: &Path, lowercase: bool) -> Result<Tokenizer> {
    use tokenizers::models::wordpiece::WordPiece;
    use tokenizers::normalizers::BertNormalizer;
    use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
    use tokenizers::processors::bert::BertProcessing;
    let err = |e: tokenizers::Error| Error::Tokenizer(format!("{}: {e}", vocab.display()));
    let model = WordPiece::from_file(&vocab.to_string_lossy())
        .build()
        .map_err(err)?;
    let mut tok = Tokenizer::new(model);
    let id = |t: &str| {
        tok.token_to_id(t).ok_or_else(|| {
            Error::Tokenizer(format!("{}: vocab.txt has no {t} token", vocab.display()))
        })
    };
    let (cls, sep) = (id("[CLS]")?, id("[SEP]")?);
    tok.with_normalizer(Some(BertNormalizer::new(true, true, None, lowercase)))
        .with_pre_tokenizer(Some(BertPreTokenizer))
        .with_post_processor(Some(BertProcessing::new(
            ("[SEP]".into(), sep),
            ("[CLS]".into(), cls),
        )))
        .with_decoder(Some(tokenizers::decoders::wordpiece::WordPiece::default()));
    Ok(tok)
}

fn build_byte_level_bpe(vocab: &Path, merges: &Path, add_prefix_space: bool) -> Result<Tokenizer> {
    use tokenizers::models::bpe::BPE;
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;
    let model = BPE::from_file(&vocab.to_string_lossy(), &merges.to_string_lossy())
        .build()
        .map_err(|e| Error::Tokenizer(format!("{}: {e}", vocab.display())))?;
    let mut tok = Tokenizer::new(model);
    let byte_level = ByteLevel::new(add_prefix_space, true, true);
    // No post-processor: like transformers' GPT2TokenizerFast, no special tokens are added and
    // offsets keep their leading space (a byte-level post-processor would trim it).
    tok.with_pre_tokenizer(Some(byte_level))
        .with_decoder(Some(byte_level));
    // GPT-2's end-of-text marker is one token even inside text, as in the released tokenizer.
    if tok.token_to_id("<|endoftext|>").is_some() {
        tok.add_special_tokens(&[tokenizers::AddedToken::from("<|endoftext|>", true)]);
    }
    Ok(tok)
}

/// Run `f` over `items` in batches of up to `batch_size`, grouping items of similar length
/// (`len`) so that little compute goes to padding, and return the results in input order.
/// `f` gets a slice of items and must return one result per item.
pub fn by_length_batches<I, T>(
    items: &[I],
    batch_size: usize,
    len: impl Fn(&I) -> usize,
    mut f: impl FnMut(&[&I]) -> Result<Vec<T>>,
) -> Result<Vec<T>> {
    let batch_size = batch_size.max(1);
    let mut order: Vec<usize> = (0..items.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(len(&items[i])));
    let mut out: Vec<Option<T>> = (0..items.len()).map(|_| None).collect();
    for chunk in order.chunks(batch_size) {
        let group: Vec<&I> = chunk.iter().map(|&i| &items[i]).collect();
        let results = f(&group)?;
        if results.len() != chunk.len() {
            return Err(Error::Input(format!(
                "a batch of {} gave {} results",
                chunk.len(),
                results.len()
            )));
        }
        for (&i, r) in chunk.iter().zip(results) {
            out[i] = Some(r);
        }
    }
    out.into_iter()
        .map(|r| r.ok_or_else(|| Error::Input("a batch result is missing".into())))
        .collect()
}

/// Convert a `[batch, seq]` int64 tensor to rows of ids.
pub fn tensor_to_rows(t: &Tensor) -> Result<Vec<Vec<i64>>> {
    let t = t
        .f_to_kind(Kind::Int64)?
        .f_to(Device::Cpu)?
        .f_contiguous()?;
    Ok(Vec::<Vec<i64>>::try_from(&t)?)
}
