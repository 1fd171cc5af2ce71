//! Translation: `translate English to German: ` + text → German (transformers'
//! `TranslationPipeline` with a `translation_en_to_de` task).

use crate::model::T5ForConditionalGeneration;
use serde::Serialize;
use trident_core::generation::GenerationConfig;
use trident_core::seq2seq::{Seq2SeqPipeline, Seq2SeqRequest};
use trident_core::{Error, LoadOptions, ModelFiles, Result};

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
    /// Source language code (`en`).
    pub source: String,
    /// Target language code (`de`, `fr`, `ro`, …).
    pub target: String,
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
            source: source.to_string(),
            target: target.to_string(),
            generation: GenerationConfig::default(),
            max_input_tokens: None,
            batch_size: 8,
        }
    }
}

/// Language names T5's prompts use, by code.
const LANGUAGES: &[(&str, &str)] = &[
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

fn language_name(code: &str) -> Result<&'static str> {
    LANGUAGES
        .iter()
        .find(|(c, _)| c.eq_ignore_ascii_case(code))
        .map(|(_, name)| *name)
        .ok_or_else(|| {
            let known: Vec<&str> = LANGUAGES.iter().map(|(c, _)| *c).collect();
            Error::Input(format!(
                "unknown language code '{code}' (known: {})",
                known.join(", ")
            ))
        })
}

/// Translates documents with a T5 checkpoint. Loaded once, it serves any number of calls,
/// from any number of threads, each with its own [`TranslateOptions`] (language pair
/// included).
pub struct Translator {
    inner: Seq2SeqPipeline<T5ForConditionalGeneration>,
    /// The `translation_*` tasks of `task_specific_params`.
    tasks: Vec<String>,
}

/// What a language pair asks of the pipeline.
struct Pair {
    task: Option<String>,
    default_prefix: String,
}

impl Translator {
    /// Load the model and tokenizer.
    pub fn from_pretrained(files: &ModelFiles, options: &LoadOptions) -> Result<Self> {
        let inner = super::load(files, options)?;
        let tasks = inner
            .tasks()
            .filter(|k| k.starts_with("translation_"))
            .map(String::from)
            .collect();
        Ok(Translator { inner, tasks })
    }

    /// The task of `task_specific_params` for the pair, or T5's prompt for a checkpoint with
    /// no translation tasks at all (flan-t5: `translate English to German: `). A checkpoint
    /// with translation tasks but not this pair is an error that lists the pairs it has.
    fn pair(&self, options: &TranslateOptions) -> Result<Pair> {
        let (src, tgt) = (
            options.source.to_ascii_lowercase(),
            options.target.to_ascii_lowercase(),
        );
        let key = format!("translation_{src}_to_{tgt}");
        if self.tasks.contains(&key) {
            return Ok(Pair {
                task: Some(key),
                default_prefix: String::new(),
            });
        }
        if !self.tasks.is_empty() {
            let pairs: Vec<String> = self
                .tasks
                .iter()
                .filter_map(|k| k.strip_prefix("translation_"))
                .map(|p| p.replace("_to_", " → "))
                .collect();
            return Err(Error::Input(format!(
                "{} has no {src} → {tgt} translation; it translates {}",
                self.inner.files().name(),
                pairs.join(", ")
            )));
        }
        Ok(Pair {
            task: None,
            default_prefix: format!(
                "translate {} to {}: ",
                language_name(&src)?,
                language_name(&tgt)?
            ),
        })
    }

    fn request<'a>(&self, pair: &'a Pair, options: &'a TranslateOptions) -> Seq2SeqRequest<'a> {
        Seq2SeqRequest {
            task: pair.task.as_deref(),
            default_prefix: &pair.default_prefix,
            generation: &options.generation,
            max_input_tokens: options.max_input_tokens,
            batch_size: options.batch_size,
            what: "translate",
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
}
