//! SentencePiece model files (`spiece.model`, `source.spm`, `sentencepiece.bpe.model`), read
//! without Python and turned into a `tokenizers` pipeline.
//!
//! # How SentencePiece tokenizes
//!
//! A SentencePiece model is one protobuf file: a list of pieces (a string, a score and a type
//! each; a piece's id is its position), the trainer's settings and the normalizer's. Encoding
//! a text takes three steps:
//!
//! 1. **Normalize.** A compiled character map (`precompiled_charsmap`, e.g. NFKC plus a few
//!    extras for `nmt_nfkc`) rewrites the text; then runs of spaces collapse to one and spaces
//!    at both ends go (`remove_extra_whitespaces`), every space becomes `▁` (U+2581,
//!    `escape_whitespaces`) and one `▁` is put in front (`add_dummy_prefix`). `"Hello  world"`
//!    becomes `"▁Hello▁world"`: a word's piece carries its leading space, which is how decoding
//!    knows where spaces were.
//! 2. **Split into pieces.** A *Unigram* model scores every way of cutting the normalized text
//!    into vocabulary pieces (a piece's score is its log-probability) and keeps the best one
//!    (Viterbi over the lattice of matches). A *BPE* model starts from characters and keeps
//!    merging the adjacent pair whose merged piece scores highest, until no pair is a piece.
//!    A character outside the vocabulary becomes the unknown piece (`<unk>`; consecutive ones
//!    fuse into one), unless the model has **byte fallback**: then it becomes the pieces
//!    `<0xE4>`, `<0xB8>`, `<0xAD>` of its UTF-8 bytes, so nothing is ever unknown.
//! 3. **Number.** Each piece's id is its index in the file, unless the checkpoint numbers pieces
//!    itself (Marian's and M2M100's `vocab.json`, below).
//!
//! Decoding joins the pieces, turns `▁` back into spaces, drops the one leading space the dummy
//! prefix added, and turns runs of byte pieces back into characters.
//!
//! # What this module builds
//!
//! [`SentencePieceModel`] parses the file (a small protobuf reader: every field Trident needs is
//! a varint, a float or a length-delimited string, so no code generator is needed; a truncated
//! or garbled file is an error, never a panic). From it:
//!
//! - [`SentencePieceModel::tokenizer`]: a `tokenizers::Tokenizer` that encodes like
//!   `SentencePieceProcessor.encode` (the pipeline transformers' `convert_slow_tokenizer`
//!   builds from a model's own settings: `Precompiled` normalizer, the whitespace rules as
//!   `Replace` normalizers, the dummy prefix, user-defined pieces kept whole, a Unigram or BPE
//!   model with byte fallback when set; decoder: `▁` → space, byte fallback, fuse, strip one
//!   leading space), and [`SentencePieceModel::decode_pieces`], which joins pieces exactly as
//!   `SentencePieceProcessor.decode_pieces` does;
//! - [`SentencePieceModel::t5_tokenizer`]: what transformers' `T5Tokenizer` builds from a bare
//!   `spiece.model` (Unigram without byte fallback, the charsmap, whitespace split + Metaspace,
//!   `</s>` appended, the `<extra_id_N>` sentinels at the end of the vocabulary, highest N
//!   first);
//! - [`VocabMap`]: the id mapping of checkpoints that number pieces through a `vocab.json`.
//!
//! # Ids from a vocab.json (Marian, M2M100)
//!
//! Marian (OPUS-MT) and M2M100 do not use the model's own piece ids. Their slow tokenizers
//! split the text with the SentencePiece model into piece *strings*, then look each string up in
//! `vocab.json` (a string absent from it is `<unk>`). For Marian the vocabulary is usually shared
//! by a source and a target model that were trained separately, so it holds pieces the source
//! model never produces and may lack pieces it does produce: no single `tokenizers` model can be
//! both the source model's lattice and the vocabulary's numbering.
//!
//! So the mapping is kept where the slow tokenizers keep it, between strings and ids: the
//! `tokenizers` pipeline segments (its ids are the `.spm` file's and are never shown), and
//! [`VocabMap`] numbers the resulting piece strings (`vocab.json`, plus M2M100's `__xx__`
//! language tokens after it). `TextEncoder` applies it to every encoding it returns, so ids,
//! tokens (the vocabulary's spelling: an absent piece reads `<unk>`) and character offsets stay
//! aligned, and its `decode` maps ids back to strings (Marian's `target_vocab.json` when
//! `separate_vocabs` is set) and joins them as the slow tokenizer does. One detail follows
//! transformers 5.24 rather than intuition: with a shared vocabulary MarianTokenizer joins
//! decoded pieces with the *source* model (the target one only with `separate_vocabs`); the
//! two differ only when one has byte pieces or other whitespace settings, which OPUS-MT's pairs
//! do not.

use crate::{Error, Result};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::BPE;
use tokenizers::models::unigram::Unigram;
use tokenizers::normalizers::{Precompiled, Prepend, Replace, Sequence as NormalizerSequence};
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::pre_tokenizers::sequence::Sequence as PreTokenizerSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::whitespace::WhitespaceSplit;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{
    AddedToken, DecoderWrapper, NormalizerWrapper, PreTokenizerWrapper, SplitDelimiterBehavior,
    Tokenizer,
};

/// The space marker SentencePiece writes for a space (U+2581, "▁").
pub const SPACE: char = '\u{2581}';

/// What a piece is, as the model file says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PieceType {
    /// An ordinary piece, produced by segmentation.
    Normal,
    /// The unknown piece (`<unk>`).
    Unknown,
    /// A control symbol (`<s>`, `</s>`, `<pad>`): never produced from text, decodes to nothing.
    Control,
    /// A user-defined symbol: always kept whole, never merged or split.
    UserDefined,
    /// A byte piece `<0xXX>` (models trained with byte fallback).
    Byte,
    /// A piece reserved but not used.
    Unused,
}

/// One vocabulary entry; its id is its position in the file.
#[derive(Debug, Clone, PartialEq)]
pub struct Piece {
    /// The piece's text (`▁` for a space).
    pub piece: String,
    /// Its score: a log-probability for Unigram, minus the merge rank for BPE.
    pub score: f32,
    /// What kind of piece it is.
    pub kind: PieceType,
}

/// The segmentation algorithm a model was trained with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelType {
    /// Unigram language model (Viterbi over piece scores).
    Unigram,
    /// Byte-pair encoding (merges by piece score).
    Bpe,
    /// Whitespace-separated words (not supported for encoding).
    Word,
    /// Single characters (not supported for encoding).
    Char,
}

/// The parts of `TrainerSpec` that matter when encoding.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainerSpec {
    /// Unigram or BPE.
    pub model_type: ModelType,
    /// Id of the unknown piece.
    pub unk_id: i32,
    /// Id of `<s>`, or -1.
    pub bos_id: i32,
    /// Id of `</s>`, or -1.
    pub eos_id: i32,
    /// Id of `<pad>`, or -1.
    pub pad_id: i32,
    /// The unknown piece's text.
    pub unk_piece: String,
    /// What decoding writes for the unknown piece (" ⁇ ").
    pub unk_surface: String,
    /// Unknown characters become byte pieces instead of `<unk>`.
    pub byte_fallback: bool,
    /// Digits were split into single pieces during training.
    pub split_digits: bool,
    /// The space marker ends pieces instead of starting them (not supported).
    pub treat_whitespace_as_suffix: bool,
}

impl Default for TrainerSpec {
    fn default() -> Self {
        // The protobuf defaults.
        TrainerSpec {
            model_type: ModelType::Unigram,
            unk_id: 0,
            bos_id: 1,
            eos_id: 2,
            pad_id: -1,
            unk_piece: "<unk>".into(),
            unk_surface: " \u{2047} ".into(),
            byte_fallback: false,
            split_digits: false,
            treat_whitespace_as_suffix: false,
        }
    }
}

/// `NormalizerSpec`: how text is normalized before it is split.
#[derive(Debug, Clone, PartialEq)]
pub struct NormalizerSpec {
    /// The rule set's name (`nmt_nfkc`, `identity`, `user_defined`, …).
    pub name: String,
    /// The compiled character map (empty for `identity`).
    pub precompiled_charsmap: Vec<u8>,
    /// Put one `▁` in front of the text.
    pub add_dummy_prefix: bool,
    /// Drop spaces at both ends and collapse runs of spaces.
    pub remove_extra_whitespaces: bool,
    /// Write spaces as `▁`.
    pub escape_whitespaces: bool,
}

impl Default for NormalizerSpec {
    fn default() -> Self {
        NormalizerSpec {
            name: String::new(),
            precompiled_charsmap: Vec::new(),
            add_dummy_prefix: true,
            remove_extra_whitespaces: true,
            escape_whitespaces: true,
        }
    }
}

/// A parsed SentencePiece model file.
#[derive(Debug, Clone)]
pub struct SentencePieceModel {
    /// The vocabulary, in id order.
    pub pieces: Vec<Piece>,
    /// Trainer settings.
    pub trainer: TrainerSpec,
    /// Normalizer settings.
    pub normalizer: NormalizerSpec,
    path: PathBuf,
    ids: HashMap<String, u32>,
}

impl SentencePieceModel {
    /// Read and check a `.model` / `.spm` file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::from_bytes(&bytes, path)
    }

    /// Parse a serialized `ModelProto`; `path` names the file in error messages.
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Self> {
        let bad = |what: String| {
            Error::Tokenizer(format!(
                "{}: not a valid SentencePiece model ({what}). The file may be truncated or \
                 not a SentencePiece .model file; download it again from the model repository",
                path.display()
            ))
        };
        let (pieces, trainer, normalizer) = parse_model(bytes).map_err(bad)?;
        if pieces.is_empty() {
            return Err(bad("it holds no pieces".into()));
        }
        let mut ids = HashMap::with_capacity(pieces.len());
        for (i, p) in pieces.iter().enumerate() {
            // As SentencePiece: the first piece with a given text wins.
            ids.entry(p.piece.clone()).or_insert(i as u32);
        }
        let model = SentencePieceModel {
            pieces,
            trainer,
            normalizer,
            path: path.to_path_buf(),
            ids,
        };
        model.check().map_err(bad)?;
        Ok(model)
    }

    fn check(&self) -> std::result::Result<(), String> {
        let n = self.pieces.len();
        let unk = usize::try_from(self.trainer.unk_id)
            .ok()
            .filter(|&u| u < n)
            .ok_or_else(|| format!("unk_id {} is not a piece id (0..{n})", self.trainer.unk_id))?;
        if self.pieces[unk].kind != PieceType::Unknown {
            return Err(format!(
                "piece {unk} ({:?}) is the unk_id but not of type UNKNOWN",
                self.pieces[unk].piece
            ));
        }
        if let Some((i, p)) = self
            .pieces
            .iter()
            .enumerate()
            .find(|(_, p)| p.piece.is_empty())
        {
            return Err(format!("piece {i} is empty (type {:?})", p.kind));
        }
        if let Some((i, p)) = self
            .pieces
            .iter()
            .enumerate()
            .find(|(_, p)| p.kind == PieceType::Byte && byte_value(&p.piece).is_none())
        {
            return Err(format!(
                "piece {i} {:?} is a BYTE piece but not <0xXX>",
                p.piece
            ));
        }
        if !self.normalizer.precompiled_charsmap.is_empty() {
            check_charsmap(&self.normalizer.precompiled_charsmap)
                .map_err(|e| format!("precompiled_charsmap: {e}"))?;
        }
        Ok(())
    }

    /// The file this model was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Id of a piece string, if the model has it.
    pub fn piece_id(&self, piece: &str) -> Option<u32> {
        self.ids.get(piece).copied()
    }

    /// The unknown piece's id.
    pub fn unk_id(&self) -> u32 {
        self.trainer.unk_id as u32
    }

    fn unsupported(&self, what: &str) -> Error {
        Error::Unsupported(format!(
            "{}: SentencePiece {what} is not supported; give the checkpoint a tokenizer.json \
             (transformers: `AutoTokenizer.from_pretrained(DIR).save_pretrained(DIR)`)",
            self.path.display()
        ))
    }

    fn tok_err(&self, e: impl std::fmt::Display) -> Error {
        Error::Tokenizer(format!("{}: {e}", self.path.display()))
    }

    fn precompiled(&self) -> Result<Option<Precompiled>> {
        if self.normalizer.precompiled_charsmap.is_empty() {
            return Ok(None);
        }
        Precompiled::from(&self.normalizer.precompiled_charsmap)
            .map(Some)
            .map_err(|e| self.tok_err(format!("precompiled_charsmap: {e}")))
    }

    fn unigram(&self, extra: &[String], byte_fallback: bool) -> Result<Unigram> {
        let vocab = self
            .pieces
            .iter()
            .map(|p| (p.piece.clone(), f64::from(p.score)))
            .chain(extra.iter().map(|t| (t.clone(), 0.0)))
            .collect();
        Unigram::from(vocab, Some(self.unk_id() as usize), byte_fallback)
            .map_err(|e| self.tok_err(e))
    }

    fn bpe(&self) -> Result<BPE> {
        let vocab: ahash::AHashMap<String, u32> = self
            .pieces
            .iter()
            .enumerate()
            .rev() // the first piece with a given text keeps its id
            .map(|(i, p)| (p.piece.clone(), i as u32))
            .collect();
        // Merges ranked as SentencePiece applies them: by the merged piece's score (highest
        // first), then by its id; every split of a normal piece into two normal pieces is one.
        let normal: HashMap<&str, (f32, usize)> = self
            .pieces
            .iter()
            .enumerate()
            .filter(|(_, p)| p.kind == PieceType::Normal)
            .map(|(i, p)| (p.piece.as_str(), (p.score, i)))
            .collect();
        let mut ranked: Vec<(f32, usize, &str, &str)> = Vec::new();
        for (&piece, &(score, id)) in &normal {
            for (cut, _) in piece.char_indices().skip(1) {
                let (left, right) = piece.split_at(cut);
                if normal.contains_key(left) && normal.contains_key(right) {
                    ranked.push((score, id, left, right));
                }
            }
        }
        ranked.sort_by(|a, b| {
            b.0.total_cmp(&a.0)
                .then(a.1.cmp(&b.1))
                .then(a.2.cmp(b.2))
                .then(a.3.cmp(b.3))
        });
        let merges = ranked
            .into_iter()
            .map(|(_, _, l, r)| (l.to_string(), r.to_string()))
            .collect();
        let has_user_defined = self.pieces.iter().any(|p| p.kind == PieceType::UserDefined);
        BPE::builder()
            .vocab_and_merges(vocab, merges)
            .unk_token(self.trainer.unk_piece.clone())
            .fuse_unk(true)
            .byte_fallback(self.trainer.byte_fallback)
            .ignore_merges(has_user_defined)
            .build()
            .map_err(|e| self.tok_err(e))
    }

    /// A tokenizer that encodes like `SentencePieceProcessor.encode`: ids are the model's own,
    /// no special tokens are added and none are recognized in the text. Decoding joins pieces
    /// like SentencePiece, except that control and unknown pieces come out as their text (use
    /// [`decode_pieces`](Self::decode_pieces) for SentencePiece's exact rules).
    pub fn tokenizer(&self) -> Result<Tokenizer> {
        if self.trainer.treat_whitespace_as_suffix {
            return Err(self.unsupported("treat_whitespace_as_suffix"));
        }
        let mut tok = match self.trainer.model_type {
            ModelType::Unigram => Tokenizer::new(self.unigram(&[], self.trainer.byte_fallback)?),
            ModelType::Bpe => Tokenizer::new(self.bpe()?),
            ModelType::Word => return Err(self.unsupported("model_type WORD")),
            ModelType::Char => return Err(self.unsupported("model_type CHAR")),
        };
        let spec = &self.normalizer;
        let mut normalizers: Vec<NormalizerWrapper> = Vec::new();
        if let Some(p) = self.precompiled()? {
            normalizers.push(p.into());
        }
        let replace = |pattern: &str, regex: bool, with: &str| -> Result<NormalizerWrapper> {
            let r = if regex {
                Replace::new(
                    tokenizers::normalizers::replace::ReplacePattern::Regex(pattern.into()),
                    with,
                )
            } else {
                Replace::new(pattern, with)
            };
            r.map(Into::into).map_err(|e| self.tok_err(e))
        };
        if spec.remove_extra_whitespaces {
            // Only U+0020 counts, after the character map (which may turn tabs into spaces).
            normalizers.push(replace(r"\A +| +\z", true, "")?);
            normalizers.push(replace(" {2,}", true, " ")?);
        }
        let space = if spec.escape_whitespaces {
            normalizers.push(replace(" ", false, "▁")?);
            "▁"
        } else {
            " "
        };
        if spec.add_dummy_prefix {
            // Prepend skips an empty text, as SentencePiece does.
            normalizers.push(Prepend::new(space.into()).into());
        }
        tok.with_normalizer(Some(NormalizerSequence::new(normalizers)));
        // User-defined pieces are never cut: isolate them (longest first) before the model.
        let mut user: Vec<&str> = self
            .pieces
            .iter()
            .filter(|p| p.kind == PieceType::UserDefined)
            .map(|p| p.piece.as_str())
            .collect();
        if !user.is_empty() {
            user.sort_by_key(|p| std::cmp::Reverse(p.chars().count()));
            let pattern = user
                .iter()
                .map(|p| regex_escape(p))
                .collect::<Vec<_>>()
                .join("|");
            let split = Split::new(
                SplitPattern::Regex(pattern),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(|e| self.tok_err(e))?;
            tok.with_pre_tokenizer(Some(split));
        }
        let mut decoders: Vec<DecoderWrapper> =
            vec![Replace::new("▁", " ").map_err(|e| self.tok_err(e))?.into()];
        if self.trainer.byte_fallback {
            decoders.push(ByteFallback::new().into());
        }
        decoders.push(Fuse::new().into());
        if spec.add_dummy_prefix {
            decoders.push(Strip::new(' ', 1, 0).into());
        }
        tok.with_decoder(Some(DecoderSequence::new(decoders)));
        Ok(tok)
    }

    /// What transformers' `T5Tokenizer` builds from this `spiece.model` when there is no
    /// tokenizer.json: a Unigram model over the pieces (without byte fallback) followed by
    /// `extra_ids` sentinels `<extra_id_{extra_ids-1}>` … `<extra_id_0>`; the character map;
    /// a whitespace split with a `▁` put before every word; `</s>` appended to every text.
    /// `specials` (pad, eos, unk, as tokenizer_config.json names them) and the model's control
    /// and user-defined pieces are special tokens: recognized whole in text, skipped by
    /// `decode(…, skip_special_tokens=true)`.
    pub fn t5_tokenizer(
        &self,
        extra_ids: usize,
        specials: &[String],
        eos: &str,
    ) -> Result<Tokenizer> {
        // transformers uses a Unigram model whatever the file's type; so do we, to match it.
        let sentinels: Vec<String> = (0..extra_ids)
            .rev()
            .map(|i| format!("<extra_id_{i}>"))
            .collect();
        let mut tok = Tokenizer::new(self.unigram(&sentinels, false)?);
        if let Some(p) = self.precompiled()? {
            tok.with_normalizer(Some(p));
        }
        let pre: Vec<PreTokenizerWrapper> = vec![
            WhitespaceSplit.into(),
            Metaspace::new(SPACE, PrependScheme::Always, true).into(),
        ];
        tok.with_pre_tokenizer(Some(PreTokenizerSequence::new(pre)));
        tok.with_decoder(Some(Metaspace::new(SPACE, PrependScheme::Always, true)));
        let mut special: Vec<String> = specials.to_vec();
        special.extend(
            self.pieces
                .iter()
                .filter(|p| matches!(p.kind, PieceType::Control | PieceType::UserDefined))
                .map(|p| p.piece.clone()),
        );
        special.extend(sentinels.iter().rev().cloned());
        add_special_tokens(&mut tok, &special);
        let eos_id = tok.token_to_id(eos).ok_or_else(|| {
            self.tok_err(format!(
                "the end-of-sequence token {eos} is not in the vocabulary"
            ))
        })?;
        tok.with_post_processor(Some(eos_template(eos, eos_id)?));
        Ok(tok)
    }

    /// Join piece strings into text exactly as `SentencePieceProcessor.decode_pieces` does:
    /// `▁` becomes a space, the first piece loses its leading space, control pieces vanish, the
    /// unknown piece becomes " ⁇ ", runs of byte pieces become their UTF-8 characters (U+FFFD
    /// for an invalid byte), and a string the model does not know is copied as it is.
    pub fn decode_pieces<S: AsRef<str>>(&self, pieces: &[S]) -> String {
        let spec = &self.normalizer;
        let strip_bos = spec.add_dummy_prefix || spec.remove_extra_whitespaces;
        let mut text = String::new();
        let mut bytes: Vec<u8> = Vec::new();
        let mut is_bos_ws = true;
        let mut bos_ws_seen = false;
        for piece in pieces {
            let piece = piece.as_ref();
            let id = self.piece_id(piece).unwrap_or(self.unk_id()) as usize;
            let kind = self.pieces[id].kind;
            if kind == PieceType::Byte {
                bytes.extend(byte_value(&self.pieces[id].piece));
                continue;
            }
            push_bytes(&mut text, &mut bytes);
            if bos_ws_seen || !text.is_empty() {
                is_bos_ws = false;
            }
            bos_ws_seen = false;
            match kind {
                PieceType::Control => {}
                PieceType::Unknown if self.pieces[id].piece == piece => {
                    text.push_str(&self.trainer.unk_surface)
                }
                PieceType::Unknown => text.push_str(piece),
                _ => {
                    let mut p = piece;
                    if is_bos_ws && strip_bos {
                        if let Some(rest) = p.strip_prefix(SPACE) {
                            p = rest;
                            bos_ws_seen = !spec.remove_extra_whitespaces;
                        }
                    }
                    text.push_str(&p.replace(SPACE, " "));
                }
            }
        }
        push_bytes(&mut text, &mut bytes);
        text
    }

    /// Decode ids of this model as `SentencePieceProcessor.decode` does (see
    /// [`decode_pieces`](Self::decode_pieces)); ids out of range are skipped.
    pub fn decode(&self, ids: &[u32]) -> String {
        let pieces: Vec<&str> = ids
            .iter()
            .filter_map(|&i| self.pieces.get(i as usize))
            .map(|p| p.piece.as_str())
            .collect();
        self.decode_pieces(&pieces)
    }
}

/// Special tokens are matched whole in the raw text (not normalized) and skipped by decode.
fn add_special_tokens(tok: &mut Tokenizer, tokens: &[String]) {
    let mut seen = HashSet::new();
    let added: Vec<AddedToken> = tokens
        .iter()
        .filter(|t| !t.is_empty() && seen.insert(t.as_str()))
        .map(|t| AddedToken::from(t.clone(), true))
        .collect();
    tok.add_special_tokens(&added);
}

fn eos_template(eos: &str, eos_id: u32) -> Result<TemplateProcessing> {
    TemplateProcessing::builder()
        .try_single(format!("$A:0 {eos}:0"))
        .and_then(|b| b.try_pair(format!("$A:0 {eos}:0 $B:0 {eos}:0")))
        .map_err(|e| Error::Tokenizer(format!("end-of-sequence template: {e}")))?
        .special_tokens(vec![(eos.to_string(), eos_id)])
        .build()
        .map_err(|e| Error::Tokenizer(format!("end-of-sequence template: {e}")))
}

/// Escape a literal for Oniguruma (the regex engine of `tokenizers`): every character but
/// ASCII letters and digits as `\x{…}`.
fn regex_escape(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_string()
            } else {
                format!("\\x{{{:X}}}", c as u32)
            }
        })
        .collect()
}

/// The byte of a `<0xXX>` piece.
fn byte_value(piece: &str) -> Option<u8> {
    let hex = piece.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

/// Append pending byte pieces as UTF-8 characters, one U+FFFD per byte that starts no valid
/// character.
fn push_bytes(text: &mut String, bytes: &mut Vec<u8>) {
    let mut rest = &bytes[..];
    while !rest.is_empty() {
        match std::str::from_utf8(rest) {
            Ok(s) => {
                text.push_str(s);
                break;
            }
            Err(e) => {
                let valid = e.valid_up_to();
                // The prefix is valid UTF-8 by construction.
                text.push_str(std::str::from_utf8(&rest[..valid]).unwrap_or_default());
                text.push('\u{FFFD}');
                rest = &rest[valid + 1..];
            }
        }
    }
    bytes.clear();
}

/// Check a `precompiled_charsmap` so that the normalizer built from it can never index out of
/// bounds: its double-array trie is walked from the root, and every node reachable by a byte,
/// and every replacement it points to, must lie inside the data.
fn check_charsmap(data: &[u8]) -> std::result::Result<(), String> {
    let len_bytes: [u8; 4] = data
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .ok_or("shorter than its 4-byte header")?;
    let trie_bytes = u32::from_le_bytes(len_bytes) as usize;
    let trie = data
        .get(
            4..4usize
                .checked_add(trie_bytes)
                .ok_or("trie size overflows")?,
        )
        .ok_or_else(|| format!("its trie of {trie_bytes} bytes runs past the end"))?;
    let units: Vec<usize> = trie
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as usize)
        .collect();
    let normalized = std::str::from_utf8(&data[4 + trie_bytes..])
        .map_err(|_| "its replacement strings are not UTF-8".to_string())?;
    // darts-clone unit layout, as spm_precompiled reads it.
    let has_leaf = |u: usize| (u >> 8) & 1 == 1;
    let value = |u: usize| u & ((1usize << 31) - 1);
    let label = |u: usize| u & ((1usize << 31) | 0xFF);
    let offset = |u: usize| (u >> 10) << ((u & (1usize << 9)) >> 6);
    let root = *units.first().ok_or("its trie is empty")?;
    let mut seen = vec![false; units.len()];
    let mut stack = vec![offset(root)];
    while let Some(base) = stack.pop() {
        if base >= units.len() || std::mem::replace(&mut seen[base], true) {
            if base >= units.len() {
                return Err(format!(
                    "a trie node points to {base}, past {}",
                    units.len()
                ));
            }
            continue;
        }
        for c in 1..=255usize {
            let pos = base ^ c;
            let unit = *units
                .get(pos)
                .ok_or_else(|| format!("a trie node points to {pos}, past {}", units.len()))?;
            if label(unit) != c {
                continue;
            }
            let next = pos ^ offset(unit);
            if has_leaf(unit) {
                let leaf = *units
                    .get(next)
                    .ok_or_else(|| format!("a trie leaf points to {next}, past {}", units.len()))?;
                let start = value(leaf);
                if start > normalized.len() || !normalized.is_char_boundary(start) {
                    return Err(format!(
                        "a replacement starts at byte {start}, outside its strings"
                    ));
                }
            }
            stack.push(next);
        }
    }
    Ok(())
}

// ---- protobuf -------------------------------------------------------------------------------

/// One field value of the protobuf wire format.
enum Value<'a> {
    Varint(u64),
    Fixed64,
    Bytes(&'a [u8]),
    Fixed32(u32),
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    fn varint(&mut self) -> std::result::Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..70).step_by(7) {
            let b = *self
                .buf
                .get(self.pos)
                .ok_or_else(|| format!("a number is cut off at byte {}", self.pos))?;
            self.pos += 1;
            if shift == 63 && b > 1 {
                return Err(format!("a number overflows 64 bits at byte {}", self.pos));
            }
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(format!(
            "a number is longer than 10 bytes at byte {}",
            self.pos
        ))
    }

    fn take(&mut self, n: usize) -> std::result::Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| {
                format!(
                    "a field of {n} bytes at byte {} runs past the end ({} bytes)",
                    self.pos,
                    self.buf.len()
                )
            })?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    /// The next (field number, value), or None at the end.
    fn field(&mut self) -> std::result::Result<Option<(u64, Value<'a>)>, String> {
        if self.pos >= self.buf.len() {
            return Ok(None);
        }
        let at = self.pos;
        let key = self.varint()?;
        let number = key >> 3;
        if number == 0 {
            return Err(format!("field number 0 at byte {at}"));
        }
        let value = match key & 7 {
            0 => Value::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Value::Fixed64
            }
            2 => {
                let n = usize::try_from(self.varint()?).map_err(|_| "a length overflows")?;
                Value::Bytes(self.take(n)?)
            }
            5 => {
                let b = self.take(4)?;
                Value::Fixed32(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            }
            t => return Err(format!("unknown wire type {t} at byte {at}")),
        };
        Ok(Some((number, value)))
    }
}

fn as_bytes<'a>(v: &Value<'a>, what: &str) -> std::result::Result<&'a [u8], String> {
    match v {
        Value::Bytes(b) => Ok(b),
        _ => Err(format!("{what} is not a length-delimited field")),
    }
}

fn as_string(v: &Value, what: &str) -> std::result::Result<String, String> {
    String::from_utf8(as_bytes(v, what)?.to_vec()).map_err(|_| format!("{what} is not UTF-8"))
}

fn as_varint(v: &Value, what: &str) -> std::result::Result<u64, String> {
    match v {
        Value::Varint(n) => Ok(*n),
        _ => Err(format!("{what} is not a varint")),
    }
}

fn as_i32(v: &Value, what: &str) -> std::result::Result<i32, String> {
    // int32 is sent as a sign-extended 64-bit varint.
    let n = as_varint(v, what)? as i64;
    i32::try_from(n).map_err(|_| format!("{what} {n} does not fit in 32 bits"))
}

fn as_bool(v: &Value, what: &str) -> std::result::Result<bool, String> {
    Ok(as_varint(v, what)? != 0)
}

fn parse_piece(buf: &[u8]) -> std::result::Result<Piece, String> {
    let mut r = Reader::new(buf);
    let mut piece = Piece {
        piece: String::new(),
        score: 0.0,
        kind: PieceType::Normal,
    };
    while let Some((n, v)) = r.field()? {
        match n {
            1 => piece.piece = as_string(&v, "a piece's text")?,
            2 => match v {
                Value::Fixed32(bits) => piece.score = f32::from_bits(bits),
                _ => return Err("a piece's score is not a float".into()),
            },
            3 => {
                piece.kind = match as_varint(&v, "a piece's type")? {
                    1 => PieceType::Normal,
                    2 => PieceType::Unknown,
                    3 => PieceType::Control,
                    4 => PieceType::UserDefined,
                    5 => PieceType::Unused,
                    6 => PieceType::Byte,
                    t => return Err(format!("unknown piece type {t}")),
                }
            }
            _ => {}
        }
    }
    if !piece.score.is_finite() {
        return Err(format!("piece {:?} has score {}", piece.piece, piece.score));
    }
    Ok(piece)
}

fn parse_trainer(buf: &[u8]) -> std::result::Result<TrainerSpec, String> {
    let mut r = Reader::new(buf);
    let mut t = TrainerSpec::default();
    while let Some((n, v)) = r.field()? {
        match n {
            3 => {
                t.model_type = match as_varint(&v, "model_type")? {
                    1 => ModelType::Unigram,
                    2 => ModelType::Bpe,
                    3 => ModelType::Word,
                    4 => ModelType::Char,
                    m => return Err(format!("unknown model_type {m}")),
                }
            }
            24 => t.treat_whitespace_as_suffix = as_bool(&v, "treat_whitespace_as_suffix")?,
            25 => t.split_digits = as_bool(&v, "split_digits")?,
            35 => t.byte_fallback = as_bool(&v, "byte_fallback")?,
            40 => t.unk_id = as_i32(&v, "unk_id")?,
            41 => t.bos_id = as_i32(&v, "bos_id")?,
            42 => t.eos_id = as_i32(&v, "eos_id")?,
            43 => t.pad_id = as_i32(&v, "pad_id")?,
            44 => t.unk_surface = as_string(&v, "unk_surface")?,
            45 => t.unk_piece = as_string(&v, "unk_piece")?,
            _ => {}
        }
    }
    Ok(t)
}

fn parse_normalizer(buf: &[u8]) -> std::result::Result<NormalizerSpec, String> {
    let mut r = Reader::new(buf);
    let mut s = NormalizerSpec::default();
    while let Some((n, v)) = r.field()? {
        match n {
            1 => s.name = as_string(&v, "the normalizer's name")?,
            2 => s.precompiled_charsmap = as_bytes(&v, "precompiled_charsmap")?.to_vec(),
            3 => s.add_dummy_prefix = as_bool(&v, "add_dummy_prefix")?,
            4 => s.remove_extra_whitespaces = as_bool(&v, "remove_extra_whitespaces")?,
            5 => s.escape_whitespaces = as_bool(&v, "escape_whitespaces")?,
            _ => {}
        }
    }
    Ok(s)
}

type Parsed = (Vec<Piece>, TrainerSpec, NormalizerSpec);

fn parse_model(bytes: &[u8]) -> std::result::Result<Parsed, String> {
    let mut r = Reader::new(bytes);
    let mut pieces = Vec::new();
    let mut trainer = TrainerSpec::default();
    let mut normalizer = NormalizerSpec::default();
    while let Some((n, v)) = r.field()? {
        match n {
            1 => pieces.push(parse_piece(as_bytes(&v, "a piece")?)?),
            2 => trainer = parse_trainer(as_bytes(&v, "trainer_spec")?)?,
            3 => normalizer = parse_normalizer(as_bytes(&v, "normalizer_spec")?)?,
            _ => {}
        }
    }
    Ok((pieces, trainer, normalizer))
}

// ---- vocab.json layouts ---------------------------------------------------------------------

/// How the slow tokenizer joins decoded pieces into text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinStyle {
    /// MarianTokenizer: a special token kept in the text is followed by a space; every `▁`
    /// left over becomes a space; the result is stripped.
    Marian,
    /// M2M100Tokenizer: special tokens are written as they are; the result is stripped.
    M2M100,
}

/// The numbering of a checkpoint whose ids come from a `vocab.json` instead of the
/// SentencePiece model (see the module doc): piece strings ↔ model ids, the special tokens,
/// and the model that joins pieces back into text.
#[derive(Debug, Clone)]
pub struct VocabMap {
    encoder: HashMap<String, u32>,
    decoder: HashMap<u32, String>,
    unk_id: u32,
    unk_token: String,
    special_ids: HashSet<u32>,
    special_tokens: HashSet<String>,
    joiner: SentencePieceModel,
    style: JoinStyle,
    /// Marian: ids missing from the decoder fall back to the joining model's pieces.
    piece_fallback: bool,
    /// Marian: a `>>xx<<` language code at the start of the text is one token.
    language_code: bool,
}

/// Read a `vocab.json` (`{"piece": id, …}`).
pub fn read_vocab_json(path: &Path) -> Result<HashMap<String, u32>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let map: HashMap<String, i64> = serde_json::from_str(&text).map_err(|e| {
        Error::config(
            path,
            format!("expected a JSON object of piece → id ({e}); download it again"),
        )
    })?;
    map.into_iter()
        .map(|(k, v)| {
            u32::try_from(v)
                .map(|v| (k.clone(), v))
                .map_err(|_| Error::config(path, format!("piece {k:?} has the invalid id {v}")))
        })
        .collect()
}

impl VocabMap {
    /// Build the mapping. `encoder` numbers pieces for encoding (and, with `extra` — M2M100's
    /// language tokens and their ids — every token the text may hold); `decoder` numbers them
    /// for decoding (Marian's target vocabulary, or the reverse of `encoder`); `specials` are
    /// the tokenizer class's special tokens (their ids in `encoder` are skipped by decode);
    /// `joiner` is the SentencePiece model that joins decoded pieces.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        mut encoder: HashMap<String, u32>,
        decoder: Option<HashMap<String, u32>>,
        extra: &[(String, u32)],
        unk_token: &str,
        specials: &[String],
        joiner: SentencePieceModel,
        style: JoinStyle,
        path: &Path,
    ) -> Result<Self> {
        let unk_id = *encoder.get(unk_token).ok_or_else(|| {
            Error::config(
                path,
                format!("the unknown token {unk_token} is not in the vocabulary"),
            )
        })?;
        for (t, id) in extra {
            encoder.insert(t.clone(), *id);
        }
        let mut decoder: HashMap<u32, String> = match decoder {
            Some(d) => d.into_iter().map(|(k, v)| (v, k)).collect(),
            None => encoder.iter().map(|(k, &v)| (v, k.clone())).collect(),
        };
        for (t, id) in extra {
            decoder.insert(*id, t.clone());
        }
        let special_ids = specials
            .iter()
            .filter_map(|t| encoder.get(t))
            .copied()
            .collect();
        Ok(VocabMap {
            encoder,
            decoder,
            unk_id,
            unk_token: unk_token.to_string(),
            special_ids,
            special_tokens: specials.iter().cloned().collect(),
            joiner,
            style,
            piece_fallback: style == JoinStyle::Marian,
            language_code: style == JoinStyle::Marian,
        })
    }

    /// Every token string with its model id (language tokens included).
    pub fn vocab(&self) -> &HashMap<String, u32> {
        &self.encoder
    }

    /// The model id of a token string, if the vocabulary has it.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.encoder.get(token).copied()
    }

    /// The model id of a piece produced by the segmenter (`<unk>`'s when absent), and the
    /// vocabulary's spelling of it.
    pub fn map_piece<'a>(&'a self, piece: &'a str) -> (u32, &'a str) {
        match self.encoder.get(piece) {
            Some(&id) => (id, piece),
            None => (self.unk_id, &self.unk_token),
        }
    }

    /// The unknown token's id.
    pub fn unk_id(&self) -> u32 {
        self.unk_id
    }

    /// Marian: split a leading `>>xx<<` language code off the text, as MarianTokenizer does.
    pub fn split_language_code<'t>(&self, text: &'t str) -> Option<(&'t str, &'t str)> {
        if !self.language_code || !text.starts_with(">>") {
            return None;
        }
        let end = text.find("<<")? + 2;
        Some(text.split_at(end))
    }

    fn id_to_token(&self, id: u32) -> String {
        if let Some(t) = self.decoder.get(&id) {
            return t.clone();
        }
        if self.piece_fallback {
            if let Some(p) = self.joiner.pieces.get(id as usize) {
                return p.piece.clone();
            }
        }
        self.unk_token.clone()
    }

    /// Ids to text, as the slow tokenizer's `decode` does.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> String {
        let tokens: Vec<String> = ids
            .iter()
            .filter(|id| !(skip_special_tokens && self.special_ids.contains(id)))
            .map(|&id| self.id_to_token(id))
            .collect();
        self.join(&tokens)
    }

    /// Join token strings into text, special tokens kept as they are.
    pub fn join<S: AsRef<str>>(&self, tokens: &[S]) -> String {
        let mut out = String::new();
        let mut run: Vec<&str> = Vec::new();
        for t in tokens {
            let t = t.as_ref();
            if self.special_tokens.contains(t) {
                out.push_str(&self.joiner.decode_pieces(&run));
                out.push_str(t);
                if self.style == JoinStyle::Marian {
                    out.push(' ');
                }
                run.clear();
            } else {
                run.push(t);
            }
        }
        out.push_str(&self.joiner.decode_pieces(&run));
        if self.style == JoinStyle::Marian {
            out = out.replace(SPACE, " ");
        }
        python_strip(&out).to_string()
    }
}

/// Python's `str.strip()`: Unicode whitespace plus the separators U+001C–U+001F.
fn python_strip(s: &str) -> &str {
    s.trim_matches(|c: char| c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c))
}

/// The segmenter of a vocab.json layout: the model's own pipeline ([`SentencePieceModel::tokenizer`])
/// with the class's special tokens matched whole in the text and `eos` appended. Its ids are the
/// model file's; [`VocabMap`] renumbers its pieces.
pub fn segmenter(model: &SentencePieceModel, specials: &[String], eos: &str) -> Result<Tokenizer> {
    let mut tok = model.tokenizer()?;
    add_special_tokens(&mut tok, specials);
    // The id is the segmenter's; the vocabulary renumbers "</s>" like every other piece.
    let eos_id = tok.token_to_id(eos).unwrap_or(0);
    tok.with_post_processor(Some(eos_template(eos, eos_id)?));
    Ok(tok)
}

/// M2M100's language codes, in the order their tokens follow the vocabulary
/// (transformers' `FAIRSEQ_LANGUAGE_CODES`).
pub fn m2m100_language_codes(name: &str) -> Option<&'static [&'static str]> {
    const M2M100: &[&str] = &[
        "af", "am", "ar", "ast", "az", "ba", "be", "bg", "bn", "br", "bs", "ca", "ceb", "cs", "cy",
        "da", "de", "el", "en", "es", "et", "fa", "ff", "fi", "fr", "fy", "ga", "gd", "gl", "gu",
        "ha", "he", "hi", "hr", "ht", "hu", "hy", "id", "ig", "ilo", "is", "it", "ja", "jv", "ka",
        "kk", "km", "kn", "ko", "lb", "lg", "ln", "lo", "lt", "lv", "mg", "mk", "ml", "mn", "mr",
        "ms", "my", "ne", "nl", "no", "ns", "oc", "or", "pa", "pl", "ps", "pt", "ro", "ru", "sd",
        "si", "sk", "sl", "so", "sq", "sr", "ss", "su", "sv", "sw", "ta", "th", "tl", "tn", "tr",
        "uk", "ur", "uz", "vi", "wo", "xh", "yi", "yo", "zh", "zu",
    ];
    const WMT21: &[&str] = &["en", "ha", "is", "ja", "cs", "ru", "zh", "de"];
    match name {
        "m2m100" => Some(M2M100),
        "wmt21" => Some(WMT21),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_and_truncation() {
        let mut r = Reader::new(&[0x96, 0x01]);
        assert_eq!(r.varint().unwrap(), 150);
        assert!(Reader::new(&[0x96]).varint().is_err());
        // pad_id -1 is a 10-byte varint.
        let mut r = Reader::new(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]);
        assert_eq!(
            as_i32(&Value::Varint(r.varint().unwrap()), "x").unwrap(),
            -1
        );
        // A length-delimited field longer than the buffer.
        assert!(Reader::new(&[0x0a, 0x05, b'a']).field().is_err());
    }

    #[test]
    fn byte_pieces_and_escapes() {
        assert_eq!(byte_value("<0xE4>"), Some(0xE4));
        assert_eq!(byte_value("<0xE>"), None);
        assert_eq!(regex_escape("<sep>"), "\\x{3C}sep\\x{3E}");
        let mut s = String::new();
        push_bytes(&mut s, &mut vec![0xC3, 0xA9, 0xC3, b'a']);
        assert_eq!(s, "é\u{FFFD}a");
        assert_eq!(python_strip("\u{1f} a \n"), "a");
    }

    #[test]
    fn language_codes_are_transformers_lists() {
        let codes = m2m100_language_codes("m2m100").unwrap();
        assert_eq!(codes.len(), 100);
        assert_eq!((codes[0], codes[18], codes[99]), ("af", "en", "zu"));
        assert!(m2m100_language_codes("nllb").is_none());
    }
}
