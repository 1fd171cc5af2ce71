//! Fine-tuning the sequence- and token-classification models: the very modules inference
//! runs ([`SequenceClassificationModel`], [`TokenClassificationModel`]), loaded in f32 with
//! weights that require grad, run with the dropout config.json gives, and saved back as a
//! Hugging Face checkpoint. The loop, optimizer and scores are core's ([`trident_core::train`]).
//!
//! ```no_run
//! use trident_bert::train::{label_order, TrainableModel};
//! use trident_core::train::{data, train, TaskKind, TrainConfig, TrainData};
//! use trident_core::{ModelFiles, TextEncoder};
//! use std::path::Path;
//! let files = ModelFiles::local("weights/bert-tiny-sentiment")?;
//! let texts = data::read_labelled_texts(Path::new("train.csv"), "text", "label")?;
//! let labels = label_order(&files, TaskKind::Classification, data::class_labels(&texts))?;
//! let tokenizer = TextEncoder::from_files(&files)?;
//! let model = TrainableModel::load(&files, TaskKind::Classification, &labels, tch::Device::Cpu, 42)?;
//! let data = TrainData {
//!     kind: TaskKind::Classification,
//!     train: data::encode_labelled_texts(&tokenizer, &texts, &labels, 128)?,
//!     eval: Vec::new(),
//!     labels,
//!     pad_id: tokenizer.pad_id,
//! };
//! let config = TrainConfig::default();
//! train(&model, &data, &config, Path::new("out"), false, serde_json::json!({}), None, &mut ())?;
//! # Ok::<(), trident_core::Error>(())
//! ```

use crate::config::{EncoderConfig, Family};
use crate::heads::{SequenceClassificationModel, SequenceHead, TokenClassificationModel};
use crate::model::{Encoder, EncoderDropout};
use serde_json::{json, Map, Value};
use std::path::Path;
use tch::{Device, Kind, Tensor};
use trident_core::nn::{dropout, Linear, SublayerDropout};
use trident_core::train::checkpoint::{save_tensors, write_error};
use trident_core::train::{TaskKind, Trainable};
use trident_core::weights::Fresh;
use trident_core::{Batch, Dtype, Error, ModelFiles, Result, Weights};

/// The tokenizer files a trained checkpoint takes from its base, when the base has them.
pub const TOKENIZER_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "sentencepiece.bpe.model",
    "spiece.model",
];

/// The head a task puts on the encoder.
#[derive(Debug)]
enum Model {
    Sequence(SequenceClassificationModel),
    Token(TokenClassificationModel),
}

/// A BERT, DistilBERT or RoBERTa classification model being trained.
#[derive(Debug)]
pub struct TrainableModel {
    model: Model,
    parameters: Vec<(String, Tensor)>,
    dropout: EncoderDropout,
    /// The base's config.json, which the saved checkpoint's extends.
    config_json: Map<String, Value>,
    config: EncoderConfig,
    labels: Vec<String>,
    files: ModelFiles,
}

fn suffix(kind: TaskKind) -> &'static str {
    match kind {
        TaskKind::Classification => "ForSequenceClassification",
        TaskKind::TokenClassification => "ForTokenClassification",
    }
}

/// The class name transformers gives a model of `model_type` for `kind`
/// (`BertForSequenceClassification`, `XLMRobertaForTokenClassification`, …).
pub fn architecture(model_type: &str, kind: TaskKind) -> String {
    let stem = match model_type {
        "bert" => "Bert",
        "distilbert" => "DistilBert",
        "xlm-roberta" => "XLMRoberta",
        "camembert" => "Camembert",
        _ => "Roberta",
    };
    format!("{stem}{}", suffix(kind))
}

/// The label order to train `files` with on data whose labels are `labels`: the checkpoint's
/// own (its `id2label`) when it already is a model of this task with exactly these labels, so
/// that its head carries on; otherwise `labels` as they are.
pub fn label_order(files: &ModelFiles, kind: TaskKind, labels: Vec<String>) -> Result<Vec<String>> {
    let path = files.get("config.json")?;
    let config = EncoderConfig::from_file(&path)?;
    let same_task = config
        .common
        .architectures
        .first()
        .is_some_and(|a| a.ends_with(suffix(kind)));
    let own = config.common.labels(&path)?;
    let mut a = own.clone();
    let mut b = labels.clone();
    a.sort();
    b.sort();
    Ok(if same_task && a == b { own } else { labels })
}

/// A float from config.json, or `default`.
fn float(config: &Map<String, Value>, key: &str, default: f64) -> f64 {
    config.get(key).and_then(Value::as_f64).unwrap_or(default)
}

/// The dropout transformers applies in training, from config.json.
fn dropout_of(config: &Map<String, Value>, family: Family, kind: TaskKind) -> EncoderDropout {
    match family {
        Family::DistilBert => {
            let p = float(config, "dropout", 0.1);
            EncoderDropout {
                embeddings: p,
                // DistilBERT has none after its attention's out_lin.
                layers: SublayerDropout {
                    attention_probs: float(config, "attention_dropout", 0.1),
                    attention: 0.0,
                    feed_forward: p,
                },
                classifier: match kind {
                    TaskKind::Classification => float(config, "seq_classif_dropout", 0.2),
                    TaskKind::TokenClassification => p,
                },
            }
        }
        Family::Bert | Family::Roberta => {
            let p = float(config, "hidden_dropout_prob", 0.1);
            EncoderDropout {
                embeddings: p,
                layers: SublayerDropout {
                    attention_probs: float(config, "attention_probs_dropout_prob", 0.1),
                    attention: p,
                    feed_forward: p,
                },
                classifier: float(config, "classifier_dropout", p),
            }
        }
    }
}

impl TrainableModel {
    /// Load `files` (a base encoder such as `BertModel`, or a classifier) to train it for
    /// `kind` with `labels`, on `device`, in f32. The head is read from the checkpoint when
    /// it is a model of this task with as many labels; otherwise it is new, initialized as
    /// transformers initializes it (normal with `initializer_range`, zero biases) from `seed`.
    /// A missing pooler (BERT) is new too.
    pub fn load(
        files: &ModelFiles,
        kind: TaskKind,
        labels: &[String],
        device: Device,
        seed: u64,
    ) -> Result<Self> {
        if labels.is_empty() {
            return Err(Error::Input("no labels to train".into()));
        }
        let path = files.get("config.json")?;
        let config = EncoderConfig::from_file(&path)?;
        let config_json: Map<String, Value> = trident_core::config::read_json(&path)?;
        let same_task = config
            .common
            .architectures
            .first()
            .is_none_or(|a| a.ends_with(suffix(kind)));
        let prefix = format!("{}.", config.family.prefix());
        let pooler = format!("{prefix}pooler.");
        let weights = Weights::open(files, device, Dtype::F32)?.for_training(move |name| {
            if name.starts_with(&pooler) {
                Fresh::IfAbsent
            } else if name.starts_with(&prefix) {
                Fresh::No
            } else if same_task {
                Fresh::IfAbsent
            } else {
                Fresh::Always
            }
        })?;
        let root = weights.root();
        let n = labels.len() as i64;
        let encoder = Encoder::new(&(&root / config.family.prefix()), &config)?;
        let model = match kind {
            TaskKind::Classification => Model::Sequence(SequenceClassificationModel {
                encoder,
                head: SequenceHead::new(&root, &config, n)?,
            }),
            TaskKind::TokenClassification => Model::Token(TokenClassificationModel {
                encoder,
                classifier: Linear::new(&(&root / "classifier"), config.hidden_size, n, true)?,
            }),
        };
        let report = weights.finish()?;
        let std = float(&config_json, "initializer_range", 0.02);
        tch::manual_seed(seed as i64);
        tch::no_grad(|| -> Result<()> {
            for (name, p) in &report.parameters {
                if !report.created.contains(name) {
                    continue;
                }
                let mut p = p.shallow_clone();
                let _ = if name.ends_with(".bias") {
                    p.f_zero_()?
                } else if p.dim() == 1 {
                    p.f_fill_(1.0)? // a norm's scale
                } else {
                    p.f_normal_(0.0, std)?
                };
            }
            Ok(())
        })?;
        for (_, p) in &report.parameters {
            let _ = p.set_requires_grad(true);
        }
        Ok(TrainableModel {
            model,
            parameters: report.parameters,
            dropout: dropout_of(&config_json, config.family, kind),
            config_json,
            config,
            labels: labels.to_vec(),
            files: files.clone(),
        })
    }

    /// The dropout the model trains with.
    pub fn dropout(&self) -> EncoderDropout {
        self.dropout
    }

    /// Train without dropout (for step-by-step comparisons with a reference).
    pub fn without_dropout(mut self) -> Self {
        self.dropout = EncoderDropout::default();
        self
    }

    /// The task.
    pub fn kind(&self) -> TaskKind {
        match self.model {
            Model::Sequence(_) => TaskKind::Classification,
            Model::Token(_) => TaskKind::TokenClassification,
        }
    }

    /// The config.json of the trained checkpoint: the base's, with the task's architecture
    /// and the labels.
    pub fn config_json(&self) -> Value {
        let mut c = self.config_json.clone();
        let kind = self.kind();
        c.insert(
            "architectures".into(),
            json!([architecture(&self.config.common.model_type, kind)]),
        );
        let id2label: Map<String, Value> = self
            .labels
            .iter()
            .enumerate()
            .map(|(i, l)| (i.to_string(), json!(l)))
            .collect();
        let label2id: Map<String, Value> = self
            .labels
            .iter()
            .enumerate()
            .map(|(i, l)| (l.clone(), json!(i)))
            .collect();
        c.insert("id2label".into(), Value::Object(id2label));
        c.insert("label2id".into(), Value::Object(label2id));
        for stale in ["num_labels", "_num_labels", "torch_dtype"] {
            c.remove(stale);
        }
        c.insert("dtype".into(), json!("float32"));
        match kind {
            TaskKind::Classification => {
                c.insert("problem_type".into(), json!("single_label_classification"));
            }
            TaskKind::TokenClassification => {
                c.remove("problem_type");
            }
        }
        Value::Object(c)
    }
}

impl Trainable for TrainableModel {
    fn parameters(&self) -> &[(String, Tensor)] {
        &self.parameters
    }

    fn logits(&self, batch: &Batch, train: bool) -> Result<Tensor> {
        let none = EncoderDropout::default();
        let p = if train { &self.dropout } else { &none };
        let hidden = |encoder: &Encoder| {
            encoder.forward_with_dropout(
                &batch.input_ids,
                &batch.attention_mask,
                Some(&batch.token_type_ids),
                p,
            )
        };
        let logits = match &self.model {
            Model::Sequence(m) => m
                .head
                .forward_with_dropout(&hidden(&m.encoder)?, p.classifier)?,
            Model::Token(m) => m
                .classifier
                .forward(&dropout(&hidden(&m.encoder)?, p.classifier)?)?,
        };
        Ok(logits.f_to_kind(Kind::Float)?)
    }

    fn save_pretrained(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| write_error(dir, e))?;
        save_tensors(&dir.join("model.safetensors"), &self.parameters)?;
        let config = dir.join("config.json");
        let text = serde_json::to_string_pretty(&self.config_json())
            .map_err(|e| write_error(&config, e))?;
        std::fs::write(&config, text + "\n").map_err(|e| write_error(&config, e))?;
        for name in TOKENIZER_FILES {
            if let Some(src) = self.files.get_optional(name)? {
                let dst = dir.join(name);
                std::fs::copy(&src, &dst).map_err(|e| write_error(&dst, e))?;
            }
        }
        Ok(())
    }
}
