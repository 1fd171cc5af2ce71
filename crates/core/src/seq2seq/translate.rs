//! Translation (transformers' `TranslationPipeline`) with any encoder-decoder model. How a
//! model is told the languages depends on its family, read from config.json's `model_type`:
//!
//! - **T5**: a prompt. The `translation_{src}_to_{tgt}` task of `task_specific_params` gives
//!   it (t5-small: `translate English to German: `); a checkpoint with no such tasks
//!   (flan-t5) gets `translate {Source} to {Target}: `.
//! - **Marian / OPUS-MT**: nothing; one model translates one pair (`opus-mt-fr-en`), read
//!   from tokenizer_config.json (`source_lang`, `target_lang`) or the model's name. A model
//!   with several target languages (`opus-mt-en-ROMANCE`) has a `>>fr<<` token for each,
//!   put before the text.
//! - **M2M100 / NLLB**: language tokens (`__fr__`; `fra_Latn`). The source language's token
//!   starts the input, the target language's is forced as the first generated token.

use super::{AnySeq2SeqLm, Seq2SeqPipeline, Seq2SeqRequest, SourceLanguage};
use crate::config::read_json;
use crate::generation::GenerationConfig;
use crate::{Error, ModelFiles, Result};
use serde::Serialize;
use std::collections::BTreeMap;

/// One translation, serialized as transformers prints it: `{"translation_text": …}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Translation {
    /// The translated text.
    pub translation_text: String,
    /// Pieces the document was split into to fit the encoder (1 when it fit whole).
    #[serde(skip)]
    pub chunks: usize,
    /// Tokens generated for this translation (EOS included).
    #[serde(skip)]
    pub generated_tokens: usize,
    /// The generated token ids (a split document's pieces in order), what transformers'
    /// pipeline returns with `return_tensors=True`.
    #[serde(skip)]
    pub token_ids: Vec<i64>,
}

/// One call's options of a [`Translator`].
#[derive(Debug, Clone)]
pub struct TranslateOptions {
    /// Source language code (`en`; `fra_Latn` for NLLB). `None`: the model's own (a Marian
    /// model's pair; English for T5).
    pub source: Option<String>,
    /// Target language code (`de`; `eng_Latn` for NLLB). `None`: the model's own (a Marian
    /// model's pair).
    pub target: Option<String>,
    /// Generation settings over the checkpoint's task defaults.
    pub generation: GenerationConfig,
    /// Longest input in tokens before a document is split (default: the tokenizer's
    /// `model_max_length`, else 512).
    pub max_input_tokens: Option<usize>,
    /// Pieces generated together in one batch.
    pub batch_size: usize,
}

impl TranslateOptions {
    /// Translate from `source` to `target` (language codes such as `en`, `de`).
    pub fn new(source: &str, target: &str) -> Self {
        TranslateOptions {
            source: Some(source.to_string()),
            target: Some(target.to_string()),
            ..Self::model_pair()
        }
    }

    /// Translate the pair the model was trained for (a Marian model).
    pub fn model_pair() -> Self {
        TranslateOptions {
            source: None,
            target: None,
            generation: GenerationConfig::default(),
            max_input_tokens: None,
            batch_size: 8,
        }
    }
}

/// Language names T5's prompts use, by code.
const T5_LANGUAGES: &[(&str, &str)] = &[
    ("en", "English"),
    ("de", "German"),
    ("fr", "French"),
    ("ro", "Romanian"),
    ("es", "Spanish"),
    ("it", "Italian"),
    ("pt", "Portuguese"),
    ("nl", "Dutch"),
    ("ru", "Russian"),
    ("zh", "Chinese"),
    ("ja", "Japanese"),
];

fn t5_language_name(code: &str) -> Result<&'static str> {
    T5_LANGUAGES
        .iter()
        .find(|(c, _)| c.eq_ignore_ascii_case(code))
        .map(|(_, name)| *name)
        .ok_or_else(|| {
            let known: Vec<&str> = T5_LANGUAGES.iter().map(|(c, _)| *c).collect();
            Error::Input(format!(
                "unknown language code '{code}' (known: {})",
                known.join(", ")
            ))
        })
}

/// How the model is told the languages.
#[derive(Debug)]
enum Languages {
    /// T5: a prompt; the `translation_*` tasks of `task_specific_params`.
    Prompt { tasks: Vec<String> },
    /// Marian: one pair (either side unknown when neither the files nor the name say), and
    /// the `>>xx<<` target tokens of a multi-target model.
    Pair {
        source: Option<String>,
        target: Option<String>,
        target_tokens: BTreeMap<String, String>,
    },
    /// M2M100 / NLLB: code → (token, id), and every language token's id.
    Tokens {
        codes: BTreeMap<String, (String, i64)>,
        ids: Vec<i64>,
    },
}

/// What a language pair asks of the pipeline for one call.
struct Pair {
    task: Option<String>,
    default_prefix: String,
    generation: GenerationConfig,
    source: Option<(String, i64)>,
}

/// Translates documents with an encoder-decoder checkpoint. Loaded once, it serves any number
/// of calls, from any number of threads, each with its own [`TranslateOptions`] (language
/// pair included).
pub struct Translator {
    inner: Seq2SeqPipeline<AnySeq2SeqLm>,
    languages: Languages,
}

impl Translator {
    /// Wrap a loaded `model` with the tokenizer and generation settings of `files` (the
    /// `trident` crate's `translator()` loads the model of any family).
    pub fn new(model: AnySeq2SeqLm, files: &ModelFiles) -> Result<Self> {
        let inner = Seq2SeqPipeline::new(model, files)?;
        let languages = Self::languages(&inner, files)?;
        Ok(Translator { inner, languages })
    }

    fn languages(inner: &Seq2SeqPipeline<AnySeq2SeqLm>, files: &ModelFiles) -> Result<Languages> {
        #[derive(serde::Deserialize, Default)]
        struct ModelType {
            #[serde(default)]
            model_type: String,
        }
        #[derive(serde::Deserialize, Default)]
        struct Sides {
            source_lang: Option<String>,
            target_lang: Option<String>,
        }
        let model_type = read_json::<ModelType>(&files.get("config.json")?)?.model_type;
        // The model's vocabulary (vocab.json's for SentencePiece-only checkpoints, where the
        // `>>fr<<` tokens of a multi-target OPUS-MT model live).
        let vocab: Vec<String> = inner.tokenizer.vocab().into_keys().collect();
        let lookup = |token: &str| inner.tokenizer.token_id(token);
        Ok(match model_type.as_str() {
            "m2m_100" | "nllb" | "nllb-moe" => {
                let mut codes = BTreeMap::new();
                for token in &vocab {
                    let code = if let Some(c) = m2m100_code(token) {
                        c
                    } else if is_nllb_code(token) {
                        token.clone()
                    } else {
                        continue;
                    };
                    if let Some(id) = lookup(token) {
                        codes.insert(code, (token.clone(), id));
                    }
                }
                let ids = codes.values().map(|(_, id)| *id).collect();
                Languages::Tokens { codes, ids }
            }
            "marian" => {
                let sides = match files.get_optional("tokenizer_config.json")? {
                    Some(path) => read_json::<Sides>(&path)?,
                    None => Sides::default(),
                };
                let (name_src, name_tgt) = opus_mt_pair(&files.name());
                let target_tokens = vocab
                    .iter()
                    .filter_map(|t| {
                        let code = t.strip_prefix(">>")?.strip_suffix("<<")?;
                        Some((code.to_string(), t.clone()))
                    })
                    .collect();
                Languages::Pair {
                    source: sides.source_lang.or(name_src),
                    target: sides.target_lang.or(name_tgt),
                    target_tokens,
                }
            }
            _ => Languages::Prompt {
                tasks: inner
                    .tasks()
                    .filter(|k| k.starts_with("translation_"))
                    .map(String::from)
                    .collect(),
            },
        })
    }

    /// What the call's language pair asks of the pipeline; a pair the model cannot translate
    /// is an error that says what it can.
    fn pair(&self, options: &TranslateOptions) -> Result<Pair> {
        let name = self.inner.files().name();
        let mut pair = Pair {
            task: None,
            default_prefix: String::new(),
            generation: options.generation.clone(),
            source: None,
        };
        match &self.languages {
            Languages::Prompt { tasks } => {
                let src = options
                    .source
                    .as_deref()
                    .unwrap_or("en")
                    .to_ascii_lowercase();
                let Some(tgt) = options.target.as_deref().map(str::to_ascii_lowercase) else {
                    return Err(Error::Input(format!(
                        "{name} needs a target language (--to): it is told the languages by a prompt"
                    )));
                };
                let key = format!("translation_{src}_to_{tgt}");
                if tasks.contains(&key) {
                    pair.task = Some(key);
                } else if !tasks.is_empty() {
                    let pairs: Vec<String> = tasks
                        .iter()
                        .filter_map(|k| k.strip_prefix("translation_"))
                        .map(|p| p.replace("_to_", " → "))
                        .collect();
                    return Err(Error::Input(format!(
                        "{name} has no {src} → {tgt} translation; it translates {}",
                        pairs.join(", ")
                    )));
                } else {
                    pair.default_prefix = format!(
                        "translate {} to {}: ",
                        t5_language_name(&src)?,
                        t5_language_name(&tgt)?
                    );
                }
            }
            Languages::Pair {
                source,
                target,
                target_tokens,
            } => {
                let same = |asked: &Option<String>, own: &Option<String>| match (asked, own) {
                    (Some(a), Some(o)) => a.eq_ignore_ascii_case(o),
                    _ => true,
                };
                let show = |s: &Option<String>| s.clone().unwrap_or_else(|| "?".into());
                if !same(&options.source, source)
                    || (target_tokens.is_empty() && !same(&options.target, target))
                {
                    return Err(Error::Input(format!(
                        "{name} translates {} → {} only, not {} → {}: pick the OPUS-MT model of \
                         that pair (Helsinki-NLP/opus-mt-{}-{}), or a multilingual one such as \
                         facebook/nllb-200-distilled-600M",
                        show(source),
                        show(target),
                        show(&options.source.clone().or(source.clone())),
                        show(&options.target.clone().or(target.clone())),
                        show(&options.source.clone().or(source.clone())),
                        show(&options.target.clone().or(target.clone())),
                    )));
                }
                if !target_tokens.is_empty() {
                    // A multi-target model: `>>fr<< ` before the text chooses the language.
                    let tgt = options.target.as_deref().ok_or_else(|| {
                        Error::Input(format!(
                            "{name} translates into several languages: pass --to with one of {}",
                            target_tokens.keys().cloned().collect::<Vec<_>>().join(", ")
                        ))
                    })?;
                    let token = target_tokens.get(tgt).ok_or_else(|| {
                        Error::Input(unknown_code(
                            &name,
                            tgt,
                            target_tokens.keys().map(String::as_str),
                        ))
                    })?;
                    pair.default_prefix = format!("{token} ");
                }
            }
            Languages::Tokens { codes, .. } => {
                let code = |which: &str, asked: Option<&str>| -> Result<(String, i64)> {
                    let asked = asked.ok_or_else(|| {
                        Error::Input(format!(
                            "{name} translates between many languages: pass --from and --to \
                             (its codes: {})",
                            sample(codes.keys().map(String::as_str))
                        ))
                    })?;
                    let key = asked.trim_start_matches("__").trim_end_matches("__");
                    codes.get(key).cloned().ok_or_else(|| {
                        Error::Input(format!(
                            "{} (the {which} language)",
                            unknown_code(&name, asked, codes.keys().map(String::as_str))
                        ))
                    })
                };
                let source = code("source", options.source.as_deref())?;
                let (_, target) = code("target", options.target.as_deref())?;
                pair.generation.forced_bos_token_id = Some(target);
                pair.source = Some(source);
            }
        }
        Ok(pair)
    }

    fn request<'a>(&'a self, pair: &'a Pair, options: &'a TranslateOptions) -> Seq2SeqRequest<'a> {
        let all: &[i64] = match &self.languages {
            Languages::Tokens { ids, .. } => ids,
            _ => &[],
        };
        Seq2SeqRequest {
            task: pair.task.as_deref(),
            default_prefix: &pair.default_prefix,
            generation: &pair.generation,
            max_input_tokens: options.max_input_tokens,
            batch_size: options.batch_size,
            what: "translate",
            source_language: pair.source.as_ref().map(|(token, id)| SourceLanguage {
                id: *id,
                token,
                all,
            }),
        }
    }

    /// Translations of `texts`: for each text, `num_return_sequences` translations.
    pub fn run(&self, texts: &[&str], options: &TranslateOptions) -> Result<Vec<Vec<Translation>>> {
        self.run_with_progress(texts, options, &mut |_, _| {})
    }

    /// [`run`](Self::run), calling `on_progress(pieces done, pieces in all)` as the pieces of
    /// the documents are translated.
    pub fn run_with_progress(
        &self,
        texts: &[&str],
        options: &TranslateOptions,
        on_progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Vec<Vec<Translation>>> {
        let pair = self.pair(options)?;
        Ok(self
            .inner
            .run_with_progress(texts, &self.request(&pair, options), on_progress)?
            .into_iter()
            .map(|r| {
                r.texts
                    .into_iter()
                    .zip(r.token_ids)
                    .map(|(translation_text, token_ids)| Translation {
                        translation_text,
                        chunks: r.chunks,
                        generated_tokens: r.generated_tokens,
                        token_ids,
                    })
                    .collect()
            })
            .collect())
    }

    /// The generation settings (prefix included) a call with `options` runs with.
    pub fn settings(&self, options: &TranslateOptions) -> Result<GenerationConfig> {
        let pair = self.pair(options)?;
        self.inner.settings(&self.request(&pair, options))
    }

    /// Longest input in tokens before a document is split, for `options`.
    pub fn max_input_tokens(&self, options: &TranslateOptions) -> usize {
        self.inner.max_input_tokens(options.max_input_tokens)
    }

    /// The encoder inputs of `text` for a call with `options` (prefix or source-language
    /// token included; one per piece of a long document), as [`run`](Self::run) tokenizes
    /// them.
    pub fn inputs(&self, text: &str, options: &TranslateOptions) -> Result<Vec<crate::Encoded>> {
        let pair = self.pair(options)?;
        self.inner.inputs(text, &self.request(&pair, options))
    }

    /// The model, tokenizer and checkpoint settings underneath.
    pub fn pipeline(&self) -> &Seq2SeqPipeline<AnySeq2SeqLm> {
        &self.inner
    }

    /// The language codes the model takes (`fr`, `fra_Latn`, …), or its one pair.
    pub fn language_codes(&self) -> Vec<String> {
        match &self.languages {
            Languages::Tokens { codes, .. } => codes.keys().cloned().collect(),
            Languages::Pair {
                source,
                target,
                target_tokens,
            } => source
                .iter()
                .chain(target)
                .cloned()
                .chain(target_tokens.keys().cloned())
                .collect(),
            Languages::Prompt { .. } => T5_LANGUAGES.iter().map(|(c, _)| c.to_string()).collect(),
        }
    }
}

/// M2M100's `__fr__` → `fr`.
fn m2m100_code(token: &str) -> Option<String> {
    let code = token.strip_prefix("__")?.strip_suffix("__")?;
    // ISO 639-1/-3 codes: two or three lowercase letters.
    let ok = (2..=3).contains(&code.len()) && code.chars().all(|c| c.is_ascii_lowercase());
    ok.then(|| code.to_string())
}

/// NLLB's codes: ISO 639-3 and script, `fra_Latn`.
fn is_nllb_code(token: &str) -> bool {
    let b = token.as_bytes();
    b.len() == 8
        && b[..3].iter().all(u8::is_ascii_lowercase)
        && b[3] == b'_'
        && b[4].is_ascii_uppercase()
        && b[5..].iter().all(u8::is_ascii_lowercase)
}

/// The pair in an OPUS-MT model name: `Helsinki-NLP/opus-mt-fr-en` → (fr, en).
fn opus_mt_pair(name: &str) -> (Option<String>, Option<String>) {
    let base = name.rsplit(['/', '\\']).next().unwrap_or(name);
    let Some(rest) = base.strip_prefix("opus-mt-") else {
        return (None, None);
    };
    match rest.split_once('-') {
        Some((s, t)) if !s.is_empty() && !t.is_empty() && !t.contains('-') => {
            (Some(s.to_string()), Some(t.to_string()))
        }
        _ => (None, None),
    }
}

/// A few of `codes`, for a message.
fn sample<'a>(codes: impl Iterator<Item = &'a str>) -> String {
    let all: Vec<&str> = codes.collect();
    let shown = all.iter().take(12).copied().collect::<Vec<_>>().join(", ");
    if all.len() > 12 {
        format!("{shown}, … ({} in all)", all.len())
    } else {
        shown
    }
}

/// "`code` is not a language of `model`; did you mean …": the closest valid codes first.
fn unknown_code<'a>(model: &str, code: &str, codes: impl Iterator<Item = &'a str>) -> String {
    let asked = code.to_ascii_lowercase();
    let mut ranked: Vec<(usize, &str)> = codes
        .map(|c| {
            let lower = c.to_ascii_lowercase();
            // A code that starts like the asked one (fr → fra_Latn) is as close as it gets.
            let d = if lower.starts_with(&asked) || asked.starts_with(&lower) {
                0
            } else {
                strsim::levenshtein(&asked, &lower)
            };
            (d, c)
        })
        .collect();
    ranked.sort();
    let close: Vec<&str> = ranked.iter().take(5).map(|(_, c)| *c).collect();
    format!(
        "'{code}' is not a language code of {model}; close ones: {}",
        close.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn language_codes_are_recognised_by_family() {
        assert_eq!(m2m100_code("__fr__").as_deref(), Some("fr"));
        assert_eq!(m2m100_code("__ast__").as_deref(), Some("ast"));
        assert_eq!(m2m100_code("__init__"), None);
        assert_eq!(m2m100_code("fr"), None);
        assert!(is_nllb_code("fra_Latn"));
        assert!(!is_nllb_code("fra_latn"));
        assert_eq!(
            opus_mt_pair("Helsinki-NLP/opus-mt-fr-en"),
            (Some("fr".into()), Some("en".into()))
        );
        assert_eq!(
            opus_mt_pair("opus-mt-en-ROMANCE").1.as_deref(),
            Some("ROMANCE")
        );
        assert_eq!(opus_mt_pair("t5-small"), (None, None));
    }

    #[test]
    fn an_unknown_code_lists_the_close_ones_first() {
        let codes = ["eng_Latn", "fra_Latn", "deu_Latn", "fur_Latn", "zho_Hans"];
        let msg = unknown_code("nllb", "fr", codes.iter().copied());
        assert!(msg.contains("close ones: fra_Latn"), "{msg}");
        let msg = unknown_code("nllb", "fra_Latm", codes.iter().copied());
        assert!(msg.contains("close ones: fra_Latn"), "{msg}");
    }
}
