//! The training loop: epochs of shuffled batches, AdamW with the linear schedule and gradient
//! clipping, an evaluation after each epoch with the best epoch kept, and checkpoints from
//! which `resume` continues to exactly the result of an uninterrupted run.
//!
//! A run is a pure function of its inputs: the data order of epoch `e` is a permutation drawn
//! from `(seed, e)`, and the dropout of step `t` from `(seed, t)`, so a resumed run draws what
//! the uninterrupted one would have drawn.

use super::checkpoint::{load_tensors, replace_dir, restore, save_tensors, write_error};
use super::data::{Example, SplitMix64, IGNORE};
use super::metrics::{classification_scores, entity_scores, ClassificationScores, EntityScores};
use super::optim::{clip_coefficient, AdamW, AdamWConfig};
use super::schedule::LinearSchedule;
use crate::text::{Batch, PaddingSide};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::{Kind, Reduction, Tensor};

/// What the trainer needs from a model being trained.
pub trait Trainable {
    /// Every parameter under its Hugging Face name: tensors that require grad, which the
    /// optimizer updates in place.
    fn parameters(&self) -> &[(String, Tensor)];

    /// Logits of a padded batch, `[batch, labels]` for classification or
    /// `[batch, seq, labels]` for token classification; with dropout when `train`.
    fn logits(&self, batch: &Batch, train: bool) -> Result<Tensor>;

    /// Write the model as a Hugging Face checkpoint into `dir` (config.json with its labels,
    /// model.safetensors, the tokenizer's files).
    fn save_pretrained(&self, dir: &Path) -> Result<()>;
}

/// The two tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskKind {
    /// One label per text.
    Classification,
    /// One tag per word, scored by entities.
    TokenClassification,
}

/// Encoded data and what its labels are.
#[derive(Debug)]
pub struct TrainData {
    /// The task.
    pub kind: TaskKind,
    /// Label names, by id.
    pub labels: Vec<String>,
    /// Training examples.
    pub train: Vec<Example>,
    /// Evaluation examples (none: no evaluation, the last epoch is kept).
    pub eval: Vec<Example>,
    /// The tokenizer's padding id.
    pub pad_id: i64,
}

/// The settings of a run; the defaults are transformers' Trainer's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Passes over the training data.
    pub epochs: u64,
    /// The peak learning rate.
    pub learning_rate: f64,
    /// Examples per optimizer step.
    pub batch_size: usize,
    /// Share of the steps spent warming up (rounded up).
    pub warmup_ratio: f64,
    /// AdamW's decoupled weight decay (not on biases and norms).
    pub weight_decay: f64,
    /// Gradients are scaled to at most this global norm.
    pub max_grad_norm: f64,
    /// Seeds the data order, dropout and new parameters.
    pub seed: u64,
    /// Save a checkpoint every this many steps (and at the end of every epoch).
    pub save_steps: Option<u64>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            epochs: 3,
            learning_rate: 5e-5,
            batch_size: 8,
            warmup_ratio: 0.0,
            weight_decay: 0.0,
            max_grad_norm: 1.0,
            seed: 42,
            save_steps: Some(500),
        }
    }
}

impl TrainConfig {
    /// Refuse settings that cannot train.
    pub fn check(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Input(m));
        if self.epochs == 0 {
            return bad("epochs must be at least 1".into());
        }
        if self.batch_size == 0 {
            return bad("batch_size must be at least 1".into());
        }
        if !(self.learning_rate > 0.0 && self.learning_rate.is_finite()) {
            return bad(format!(
                "learning_rate {} must be positive",
                self.learning_rate
            ));
        }
        if !(0.0..1.0).contains(&self.warmup_ratio) {
            return bad(format!(
                "warmup_ratio {} must be in [0, 1)",
                self.warmup_ratio
            ));
        }
        if !(self.weight_decay >= 0.0 && self.weight_decay.is_finite()) {
            return bad(format!(
                "weight_decay {} must be 0 or more",
                self.weight_decay
            ));
        }
        if self.save_steps == Some(0) {
            return bad("save_steps must be at least 1".into());
        }
        Ok(())
    }
}

/// Evaluation scores of one epoch.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum EvalScores {
    /// Classification: accuracy and macro-F1.
    Classification {
        /// Mean cross-entropy over the evaluation examples.
        loss: f64,
        /// The scores.
        #[serde(flatten)]
        scores: ClassificationScores,
    },
    /// Token classification: entity-level scores.
    Entities {
        /// Mean cross-entropy over the labelled tokens.
        loss: f64,
        /// The scores.
        #[serde(flatten)]
        scores: EntityScores,
    },
}

impl EvalScores {
    /// The score that picks the best epoch: macro-F1, or the overall entity F1.
    pub fn primary(&self) -> f64 {
        match self {
            EvalScores::Classification { scores, .. } => scores.macro_f1,
            EvalScores::Entities { scores, .. } => scores.overall.f1,
        }
    }

    /// The evaluation loss.
    pub fn loss(&self) -> f64 {
        match self {
            EvalScores::Classification { loss, .. } | EvalScores::Entities { loss, .. } => *loss,
        }
    }
}

/// After each optimizer step.
#[derive(Debug, Clone, PartialEq)]
pub struct StepReport {
    /// Steps done (1 after the first).
    pub step: u64,
    /// Steps of the whole run.
    pub total: u64,
    /// The epoch (1-based).
    pub epoch: u64,
    /// This step's loss.
    pub loss: f64,
    /// The mean loss of the epoch so far.
    pub mean_loss: f64,
    /// The learning rate this step used.
    pub lr: f64,
    /// The gradients' global norm before clipping.
    pub grad_norm: f64,
    /// Training examples per second in this session (evaluation excluded).
    pub examples_per_second: f64,
}

/// After each epoch.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EpochReport {
    /// The epoch (1-based).
    pub epoch: u64,
    /// Its mean training loss.
    pub train_loss: f64,
    /// Its evaluation, when there is evaluation data.
    pub eval: Option<EvalScores>,
    /// Whether it is the best so far (its model was saved).
    pub best: bool,
}

/// What a run reports as it goes (a progress bar, a log).
pub trait Hooks {
    /// Before the first step: the run's steps, and how many a resumed run has done already.
    fn started(&mut self, _total_steps: u64, _done: u64) {}
    /// After each step.
    fn step(&mut self, _report: &StepReport) {}
    /// After each epoch's evaluation.
    fn epoch(&mut self, _report: &EpochReport) {}
}

/// Hooks that report nothing.
impl Hooks for () {}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Outcome {
    /// Stopped on request before the end (`stop_after_steps`); `resume` continues it.
    pub stopped: bool,
    /// Optimizer steps done.
    pub steps: u64,
    /// The epochs finished, with their scores.
    pub history: Vec<EpochReport>,
    /// The epoch whose model is in the output directory.
    pub best_epoch: Option<u64>,
    /// Training examples per second of this session (evaluation excluded).
    pub examples_per_second: f64,
    /// Seconds of training in this session (evaluation excluded).
    pub train_seconds: f64,
}

/// What a checkpoint records besides tensors (`trainer_state.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct State {
    /// What the run was started with; a resume must match.
    fingerprint: serde_json::Value,
    global_step: u64,
    /// The epoch in progress (0-based) and the batches of it done.
    epoch: u64,
    step_in_epoch: u64,
    epoch_loss_sum: f64,
    best_epoch: Option<u64>,
    best_score: Option<f64>,
    history: Vec<serde_json::Value>,
}

/// One optimizer step after another: the model's loss on a batch, its gradients clipped,
/// AdamW at the schedule's learning rate. [`train`] runs it over epochs; a test can run it over
/// given batches.
#[derive(Debug)]
pub struct Optimization {
    /// The optimizer and its state.
    pub optimizer: AdamW,
    /// The learning-rate schedule.
    pub schedule: LinearSchedule,
    /// Gradients are scaled to at most this global norm.
    pub max_grad_norm: f64,
}

/// What one optimizer step did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Step {
    /// The batch's loss before the update.
    pub loss: f64,
    /// The learning rate used.
    pub lr: f64,
    /// The gradients' global norm before clipping.
    pub grad_norm: f64,
}

impl Optimization {
    /// AdamW over `model`'s parameters with `config`'s settings, for a run of `total` steps.
    pub fn new(model: &dyn Trainable, config: &TrainConfig, total: u64) -> Result<Self> {
        Ok(Optimization {
            optimizer: AdamW::new(
                model.parameters(),
                AdamWConfig {
                    weight_decay: config.weight_decay,
                    ..Default::default()
                },
            )?,
            schedule: LinearSchedule::with_ratio(config.learning_rate, total, config.warmup_ratio),
            max_grad_norm: config.max_grad_norm,
        })
    }

    /// One step on `examples` (padded with `pad_id` into one batch), with the model's dropout.
    pub fn step(
        &mut self,
        model: &dyn Trainable,
        examples: &[&Example],
        kind: TaskKind,
        pad_id: i64,
    ) -> Result<Step> {
        let batch = batch_of(examples, pad_id, model)?;
        let logits = model.logits(&batch, true)?;
        let loss = loss_of(&logits, &labels_of(examples, kind, &batch)?)?;
        let grads = self.optimizer.gradients(&loss)?;
        let (grad_norm, clip) = clip_coefficient(&grads, self.max_grad_norm)?;
        let lr = self.schedule.lr(self.optimizer.steps());
        self.optimizer.step(lr, &grads, clip)?;
        Ok(Step {
            loss: loss.f_double_value(&[])?,
            lr,
            grad_norm,
        })
    }
}

/// The checkpoint directory inside the output directory.
pub fn checkpoint_dir(output: &Path) -> PathBuf {
    output.join("checkpoint")
}

/// Where to resume from: the checkpoint, or a complete one left by an interrupted save.
fn saved_checkpoint(output: &Path) -> Option<PathBuf> {
    let dir = checkpoint_dir(output);
    [dir.clone(), dir.with_extension("tmp")]
        .into_iter()
        .find(|d| d.join("trainer_state.json").is_file())
}

/// The seed of step `step`'s dropout.
fn step_seed(seed: u64, step: u64) -> i64 {
    (SplitMix64::new(seed, step).next_u64() >> 1) as i64
}

/// Train `model` on `data` into `output`; with `resume`, continue the run whose checkpoint
/// is in `output` (its `fingerprint`, what the run was started with, must match). With
/// `stop_after_steps`, stop after that many steps in all, saving a checkpoint.
#[allow(clippy::too_many_arguments)]
pub fn train(
    model: &dyn Trainable,
    data: &TrainData,
    config: &TrainConfig,
    output: &Path,
    resume: bool,
    fingerprint: serde_json::Value,
    stop_after_steps: Option<u64>,
    hooks: &mut dyn Hooks,
) -> Result<Outcome> {
    config.check()?;
    if data.train.is_empty() {
        return Err(Error::Input("no training examples".into()));
    }
    let n = data.train.len();
    let per_epoch = n.div_ceil(config.batch_size) as u64;
    let total = per_epoch * config.epochs;
    let mut optimization = Optimization::new(model, config, total)?;
    let mut state = State {
        fingerprint: fingerprint.clone(),
        global_step: 0,
        epoch: 0,
        step_in_epoch: 0,
        epoch_loss_sum: 0.0,
        best_epoch: None,
        best_score: None,
        history: Vec::new(),
    };
    std::fs::create_dir_all(output).map_err(|e| write_error(output, e))?;
    if resume {
        let dir = saved_checkpoint(output).ok_or_else(|| {
            Error::Input(format!(
                "resume: {} holds no checkpoint to continue (a finished run removes it)",
                output.display()
            ))
        })?;
        let state_file = dir.join("trainer_state.json");
        let saved: State = crate::config::read_json(&state_file)?;
        check_fingerprint(&saved.fingerprint, &fingerprint)?;
        let model_file = dir.join("model.safetensors");
        restore(model.parameters(), &load_tensors(&model_file)?, &model_file)?;
        let optimizer_file = dir.join("optimizer.safetensors");
        let moments = load_tensors(&optimizer_file)?;
        optimization
            .optimizer
            .load_state(saved.global_step, |name| {
                moments.get(name).map(Tensor::shallow_clone).ok_or_else(|| {
                    Error::weights(&optimizer_file, format!("tensor {name} is missing"))
                })
            })?;
        state = saved;
    } else if saved_checkpoint(output).is_some() {
        return Err(Error::Input(format!(
            "{} holds an unfinished run: resume it, or choose another output directory",
            output.display()
        )));
    }
    let mut history: Vec<EpochReport> = Vec::new();
    hooks.started(total, state.global_step);
    let (mut seen, mut seconds) = (0usize, 0.0f64);
    let mut stopped = false;
    'epochs: while state.epoch < config.epochs {
        let epoch = state.epoch;
        let order = SplitMix64::new(config.seed, epoch).permutation(n);
        let batches: Vec<&[usize]> = order.chunks(config.batch_size).collect();
        for (b, rows) in batches
            .iter()
            .enumerate()
            .skip(state.step_in_epoch as usize)
        {
            let start = Instant::now();
            tch::manual_seed(step_seed(config.seed, state.global_step));
            let examples: Vec<&Example> = rows.iter().map(|&i| &data.train[i]).collect();
            let Step {
                loss,
                lr,
                grad_norm,
            } = optimization.step(model, &examples, data.kind, data.pad_id)?;
            state.global_step += 1;
            state.step_in_epoch = b as u64 + 1;
            state.epoch_loss_sum += loss;
            seen += rows.len();
            seconds += start.elapsed().as_secs_f64();
            hooks.step(&StepReport {
                step: state.global_step,
                total,
                epoch: epoch + 1,
                loss,
                mean_loss: state.epoch_loss_sum / state.step_in_epoch as f64,
                lr,
                grad_norm,
                examples_per_second: seen as f64 / seconds.max(1e-9),
            });
            let stop = stop_after_steps.is_some_and(|s| state.global_step >= s);
            let last_of_epoch = b + 1 == batches.len();
            if !last_of_epoch
                && (stop
                    || config
                        .save_steps
                        .is_some_and(|s| state.global_step.is_multiple_of(s)))
            {
                save_checkpoint(output, model, &optimization.optimizer, &state)?;
            }
            if stop && !last_of_epoch {
                stopped = true;
                break 'epochs;
            }
        }
        // The epoch is done: evaluate, keep the model when it is the best so far.
        let eval = if data.eval.is_empty() {
            None
        } else {
            Some(evaluate(model, data, config.batch_size)?)
        };
        let best = match &eval {
            None => true,
            Some(e) => state.best_score.is_none_or(|b| e.primary() > b),
        };
        if best {
            state.best_epoch = Some(epoch + 1);
            state.best_score = eval.as_ref().map(EvalScores::primary);
            save_model(model, output)?;
        }
        let report = EpochReport {
            epoch: epoch + 1,
            train_loss: state.epoch_loss_sum / per_epoch as f64,
            eval,
            best,
        };
        hooks.epoch(&report);
        state
            .history
            .push(serde_json::to_value(&report).map_err(|e| Error::Input(e.to_string()))?);
        history.push(report);
        state.epoch += 1;
        state.step_in_epoch = 0;
        state.epoch_loss_sum = 0.0;
        let stop = stop_after_steps.is_some_and(|s| state.global_step >= s);
        if state.epoch < config.epochs {
            // The next epoch starts from here after an interruption.
            save_checkpoint(output, model, &optimization.optimizer, &state)?;
            if stop {
                stopped = true;
                break;
            }
        }
    }
    let outcome = Outcome {
        stopped,
        steps: state.global_step,
        history,
        best_epoch: state.best_epoch,
        examples_per_second: seen as f64 / seconds.max(1e-9),
        train_seconds: seconds,
    };
    if !stopped {
        let results = serde_json::json!({
            "steps": state.global_step,
            "best_epoch": state.best_epoch,
            "best_score": state.best_score,
            "epochs": state.history,
            "config": fingerprint,
        });
        let path = output.join("train_results.json");
        let text = serde_json::to_string_pretty(&results).map_err(|e| write_error(&path, e))?;
        std::fs::write(&path, text + "\n").map_err(|e| write_error(&path, e))?;
        for dir in [
            checkpoint_dir(output),
            checkpoint_dir(output).with_extension("tmp"),
        ] {
            if dir.exists() {
                std::fs::remove_dir_all(&dir).map_err(|e| write_error(&dir, e))?;
            }
        }
    }
    Ok(outcome)
}

/// A resumed run must be the run that was started: the same settings and data.
fn check_fingerprint(saved: &serde_json::Value, now: &serde_json::Value) -> Result<()> {
    if saved == now {
        return Ok(());
    }
    let differing = match (saved.as_object(), now.as_object()) {
        (Some(a), Some(b)) => a
            .keys()
            .chain(b.keys())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .filter(|k| a.get(*k) != b.get(*k))
            .map(|k| format!("{k} was {} and is now {}", show(a.get(k)), show(b.get(k))))
            .collect::<Vec<_>>(),
        _ => vec![],
    };
    Err(Error::Input(format!(
        "resume: the checkpoint is of another run ({}); resume with the options it was started \
         with, or start afresh in another output directory",
        if differing.is_empty() {
            "its settings differ".to_string()
        } else {
            differing.join("; ")
        }
    )))
}

fn show(v: Option<&serde_json::Value>) -> String {
    v.map_or("unset".into(), |v| v.to_string())
}

fn save_model(model: &dyn Trainable, output: &Path) -> Result<()> {
    model.save_pretrained(output)
}

fn save_checkpoint(
    output: &Path,
    model: &dyn Trainable,
    optimizer: &AdamW,
    state: &State,
) -> Result<()> {
    replace_dir(&checkpoint_dir(output), |dir| {
        save_tensors(&dir.join("model.safetensors"), model.parameters())?;
        save_tensors(&dir.join("optimizer.safetensors"), &optimizer.state())?;
        let path = dir.join("trainer_state.json");
        let text = serde_json::to_string_pretty(state).map_err(|e| write_error(&path, e))?;
        std::fs::write(&path, text).map_err(|e| write_error(&path, e))
    })
}

/// Pad the examples' tokens into a batch on the model's device.
fn batch_of(examples: &[&Example], pad_id: i64, model: &dyn Trainable) -> Result<Batch> {
    let device = model
        .parameters()
        .first()
        .map_or(tch::Device::Cpu, |(_, p)| p.device());
    Batch::new(
        examples.iter().map(|e| e.encoded.clone()).collect(),
        pad_id,
        PaddingSide::Right,
        device,
    )
}

/// `[batch]` label ids, or `[batch, seq]` with [`IGNORE`] on padding.
fn labels_of(examples: &[&Example], kind: TaskKind, batch: &Batch) -> Result<Tensor> {
    let device = batch.input_ids.device();
    Ok(match kind {
        TaskKind::Classification => {
            let ids: Vec<i64> = examples.iter().map(|e| e.labels[0]).collect();
            Tensor::f_from_slice(&ids)?.f_to(device)?
        }
        TaskKind::TokenClassification => {
            let width = batch.input_ids.size()[1] as usize;
            let mut ids = Vec::with_capacity(examples.len() * width);
            for e in examples {
                ids.extend_from_slice(&e.labels);
                ids.extend(std::iter::repeat_n(IGNORE, width - e.labels.len()));
            }
            Tensor::f_from_slice(&ids)?
                .f_view([examples.len() as i64, width as i64])?
                .f_to(device)?
        }
    })
}

/// Mean cross-entropy over the labels that count (transformers' `CrossEntropyLoss()` on
/// `logits.view(-1, labels)`); 0 (with a gradient of 0) when none counts.
pub fn loss_of(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let classes = *logits.size().last().unwrap_or(&1);
    let flat_logits = logits.f_reshape([-1, classes])?;
    let flat_labels = labels.f_reshape([-1])?;
    if flat_labels.f_ne(IGNORE)?.f_any()?.f_int64_value(&[])? == 0 {
        return Ok(flat_logits.f_sum(Kind::Float)?.f_mul_scalar(0.0)?);
    }
    Ok(flat_logits.f_cross_entropy_loss::<Tensor>(
        &flat_labels,
        None,
        Reduction::Mean,
        IGNORE,
        0.0,
    )?)
}

/// Evaluate on `data.eval` without dropout or gradients.
pub fn evaluate(model: &dyn Trainable, data: &TrainData, batch_size: usize) -> Result<EvalScores> {
    let (mut loss_sum, mut counted) = (0.0f64, 0usize);
    let (mut truth, mut predicted) = (Vec::new(), Vec::new());
    let (mut true_tags, mut pred_tags) = (Vec::new(), Vec::new());
    for chunk in data.eval.chunks(batch_size.max(1)) {
        let examples: Vec<&Example> = chunk.iter().collect();
        let batch = batch_of(&examples, data.pad_id, model)?;
        let (logits, labels) = tch::no_grad(|| -> Result<(Tensor, Tensor)> {
            Ok((
                model.logits(&batch, false)?,
                labels_of(&examples, data.kind, &batch)?,
            ))
        })?;
        let n = labels
            .f_ne(IGNORE)?
            .f_sum(Kind::Int64)?
            .f_int64_value(&[])? as usize;
        if n > 0 {
            let loss = tch::no_grad(|| loss_of(&logits, &labels))?.f_double_value(&[])?;
            loss_sum += loss * n as f64;
            counted += n;
        }
        let best = logits.f_argmax(-1, false)?.f_to(tch::Device::Cpu)?;
        match data.kind {
            TaskKind::Classification => {
                let best = Vec::<i64>::try_from(&best)?;
                for (e, p) in chunk.iter().zip(best) {
                    truth.push(e.labels[0] as usize);
                    predicted.push(p as usize);
                }
            }
            TaskKind::TokenClassification => {
                for (row, e) in chunk.iter().enumerate() {
                    let best = Vec::<i64>::try_from(&best.f_get(row as i64)?)?;
                    let name = |i: i64| data.labels.get(i as usize).cloned().unwrap_or_default();
                    let (mut t, mut p) = (Vec::new(), Vec::new());
                    for (pos, &label) in e.labels.iter().enumerate() {
                        if label != IGNORE {
                            t.push(name(label));
                            p.push(name(best[pos]));
                        }
                    }
                    true_tags.push(t);
                    pred_tags.push(p);
                }
            }
        }
    }
    let loss = if counted == 0 {
        0.0
    } else {
        loss_sum / counted as f64
    };
    Ok(match data.kind {
        TaskKind::Classification => EvalScores::Classification {
            loss,
            scores: classification_scores(&truth, &predicted, &data.labels),
        },
        TaskKind::TokenClassification => EvalScores::Entities {
            loss,
            scores: entity_scores(&true_tags, &pred_tags),
        },
    })
}
