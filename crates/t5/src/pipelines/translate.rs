//! Translation: `translate English to German: ` + text → German (transformers'
//! `TranslationPipeline` with a `translation_en_to_de` task).

use super::{task_params, Seq2Seq, Settings};
use serde::Serialize;
use trident_core::generation::{GenerationConfig, GenerationOptions};
use trident_core::{DeviceChoice, Dtype, Error, ModelFiles, Result};

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

/// How to load and run a [`Translator`].
#[derive(Debug, Clone)]
pub struct TranslatorOptions {
    /// Source language code (`en`).
    pub source: String,
    /// Target language code (`de`, `fr`, `ro`, …).
    pub target: String,
    /// Where the model runs (`Auto`: CUDA when present).
    pub device: DeviceChoice,
    /// The numeric format the model computes in.
    pub dtype: Dtype,
    /// Generation options overriding the checkpoint's task defaults.
    pub generation: GenerationOptions,
    /// Longest input in tokens before a document is split (default: the tokenizer's
    /// `model_max_length`, else 512).
    pub max_input_tokens: Option<usize>,
    /// Pieces generated together in one batch.
    pub batch_size: usize,
}

impl TranslatorOptions {
    /// Translate from `source` to `target` (language codes such as `en`, `de`).
    pub fn new(source: &str, target: &str) -> Self {
        TranslatorOptions {
            source: source.to_string(),
            target: target.to_string(),
            device: DeviceChoice::Auto,
            dtype: Dtype::F32,
            generation: GenerationOptions::default(),
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

/// Translates documents with a T5 checkpoint.
pub struct Translator {
    inner: Seq2Seq,
}

impl Translator {
    /// Load the model and apply `task_specific_params["translation_{source}_to_{target}"]`.
    ///
    /// A checkpoint with translation tasks but not this pair is an error that lists the pairs
    /// it has. One with no translation tasks at all (flan-t5) gets T5's prompt,
    /// `translate English to German: `.
    pub fn from_pretrained(files: &ModelFiles, options: TranslatorOptions) -> Result<Self> {
        let (src, tgt) = (
            options.source.to_ascii_lowercase(),
            options.target.to_ascii_lowercase(),
        );
        let params = task_params(files)?;
        let key = format!("translation_{src}_to_{tgt}");
        let pairs: Vec<String> = params
            .keys()
            .filter_map(|k| k.strip_prefix("translation_"))
            .map(|p| p.replace("_to_", " → "))
            .collect();
        let task = params.get(&key);
        let default_prefix = match task {
            Some(_) => String::new(),
            None if !pairs.is_empty() => {
                return Err(Error::Input(format!(
                    "{} has no {src} → {tgt} translation; it translates {}",
                    files.name(),
                    pairs.join(", ")
                )))
            }
            None => format!(
                "translate {} to {}: ",
                language_name(&src)?,
                language_name(&tgt)?
            ),
        };
        let inner = Seq2Seq::load(
            files,
            task,
            &default_prefix,
            Settings {
                device: options.device,
                dtype: options.dtype,
                generation: &options.generation,
                max_input_tokens: options.max_input_tokens,
                batch_size: options.batch_size,
            },
        )?;
        Ok(Translator { inner })
    }

    /// Translations of `texts`: for each text, `num_return_sequences` translations.
    pub fn run(&self, texts: &[&str]) -> Result<Vec<Vec<Translation>>> {
        Ok(self
            .inner
            .run(texts, "translate")?
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

    /// The text put before every document (`translate English to German: `).
    pub fn prefix(&self) -> &str {
        &self.inner.prefix
    }

    /// Longest input in tokens before a document is split.
    pub fn max_input_tokens(&self) -> usize {
        self.inner.max_input_tokens
    }

    /// The generation settings in effect.
    pub fn generation_config(&self) -> &GenerationConfig {
        &self.inner.generation
    }
}
