//! One worker thread per model, and how it batches the requests that arrive together.
//!
//! libtorch computes on its own threads, so each model gets one OS thread that takes jobs
//! from a queue. When it becomes free it takes every job waiting (up to
//! `max_batch_requests` requests and `max_batch_tokens` tokens, shortest inputs first),
//! groups the jobs whose options are the same, and runs each group as one call of the
//! pipeline: the texts of many requests share forward passes, and each request gets back
//! exactly its own results (the pipelines' results do not depend on how texts are batched;
//! tests check it). A group that fails is run again job by job, so one request's bad input
//! never fails another's. A job whose client has gone is dropped before it runs; a
//! generation whose client goes stops at the next token.
//!
//! Generation is batched continuously (`generation_loop`): a request that arrives while
//! others are decoding is prefilled and joins the running batch at the next step, and leaves
//! it the step it finishes, each with its own options; its output is what it would get alone
//! (core's `ContinuousGenerator`). Beam search requests run on their own, between two steps.

use crate::models::{LoadedModel, Pipeline};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc as tmpsc, oneshot};
use trident_bert::{ClassifyOptions, EmbedOptions, Embedding, Entity, Label, NerOptions};
use trident_core::causal::{Piece, TextGenerator};
use trident_core::seq2seq::{SummarizeOptions, Summary, TranslateOptions, Translation};
use trident_core::{Error, Result};
use trident_gpt::{GenerateOptions, GeneratedText};

/// What a job asks of its model.
pub enum Work {
    /// Entities of each text.
    Ner(Vec<String>, NerOptions),
    /// Labels of each text.
    Classify(Vec<String>, ClassifyOptions),
    /// The embedding of each text.
    Embed(Vec<String>),
    /// Summaries.
    Summarize(Vec<String>, SummarizeOptions),
    /// Translations.
    Translate(Vec<String>, TranslateOptions),
    /// Continuations; with a stream, text is sent as it is produced and the job runs alone.
    Generate(
        Vec<String>,
        GenerateOptions,
        Option<tmpsc::UnboundedSender<StreamPiece>>,
    ),
}

/// A piece of streamed text.
#[derive(Debug, Clone)]
pub struct StreamPiece {
    /// Which prompt.
    pub input: usize,
    /// Which of its returned sequences.
    pub sequence: usize,
    /// The new text.
    pub text: String,
}

/// What a job gives back.
pub enum Output {
    /// Per text, its entities.
    Ner(Vec<Vec<Entity>>),
    /// Per text, its labels.
    Classify(Vec<Vec<Label>>),
    /// Per text, its embedding.
    Embed(Vec<Embedding>),
    /// Per text, its summaries.
    Summarize(Vec<Vec<Summary>>),
    /// Per text, its translations.
    Translate(Vec<Vec<Translation>>),
    /// Per prompt, its continuations.
    Generate(Vec<Vec<GeneratedText>>),
}

/// A request's work, its reply channel and its cancellation flag.
pub struct Job {
    /// What to do.
    pub work: Work,
    /// Where the result goes.
    pub reply: oneshot::Sender<Result<Output>>,
    /// Set when the request timed out: the job stops (generation at its next token).
    pub cancelled: Arc<AtomicBool>,
    /// Tokens of its inputs (for the batch budget and metrics).
    pub tokens: usize,
}

impl Job {
    fn gone(&self) -> bool {
        self.reply.is_closed() || self.cancelled.load(Ordering::Relaxed)
    }

    /// Jobs with equal keys can share a pipeline call. Streaming jobs never do.
    fn key(&self) -> Option<String> {
        Some(match &self.work {
            Work::Ner(_, o) => format!(
                "ner {:?} {:?} {:?}",
                o.aggregation, o.stride, o.ignore_labels
            ),
            Work::Classify(_, o) => format!("classify {:?} {:?}", o.top_k, o.function),
            Work::Embed(_) => "embed".into(),
            Work::Summarize(_, o) => format!(
                "summarize {} {:?} {}",
                serde_json::to_string(&o.generation).ok()?,
                o.max_input_tokens,
                o.resummarize
            ),
            Work::Translate(_, o) => format!(
                "translate {:?} {:?} {} {:?}",
                o.source,
                o.target,
                serde_json::to_string(&o.generation).ok()?,
                o.max_input_tokens
            ),
            Work::Generate(_, _, Some(_)) => return None,
            Work::Generate(_, o, None) => format!(
                "generate {} {} {:?}",
                serde_json::to_string(&o.generation).ok()?,
                o.return_full_text,
                o.show_probs
            ),
        })
    }

    fn len(&self) -> usize {
        match &self.work {
            Work::Ner(t, _)
            | Work::Classify(t, _)
            | Work::Embed(t)
            | Work::Summarize(t, _)
            | Work::Translate(t, _)
            | Work::Generate(t, _, _) => t.len(),
        }
    }
}

/// Batch limits of a worker.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most requests per batch.
    pub max_batch_requests: usize,
    /// Most tokens per batch.
    pub max_batch_tokens: usize,
}

/// The sending side of a model's queue.
#[derive(Clone)]
pub struct WorkerHandle {
    sender: SyncSender<Job>,
    model: String,
}

impl WorkerHandle {
    /// Queue a job; `Err` when the queue is full (the server answers 429) or the worker has
    /// stopped.
    pub fn submit(&self, job: Job) -> std::result::Result<(), &'static str> {
        // Counted before it is sent (the worker may take it at once); the gauge moves by
        // increments, never set from two threads.
        let gauge = metrics::gauge!("trident_queue_depth", "model" => self.model.clone());
        gauge.increment(1.0);
        let sent = self.sender.try_send(job);
        if sent.is_err() {
            gauge.decrement(1.0);
        }
        match sent {
            Ok(()) => Ok(()),
            Err(std::sync::mpsc::TrySendError::Full(_)) => Err("the model's queue is full"),
            Err(std::sync::mpsc::TrySendError::Disconnected(_)) => Err("the model has stopped"),
        }
    }
}

/// Start the worker thread of `model`, with a queue of `capacity` jobs.
pub fn spawn(
    model: Arc<LoadedModel>,
    limits: Limits,
    capacity: usize,
) -> std::io::Result<WorkerHandle> {
    let (sender, receiver) = std::sync::mpsc::sync_channel(capacity.max(1));
    let handle = WorkerHandle {
        sender,
        model: model.name.clone(),
    };
    std::thread::Builder::new()
        .name(format!("trident-{}", model.name))
        .spawn(move || run(&model, &receiver, limits))?;
    Ok(handle)
}

/// How long a worker that has just run a batch of several jobs waits for more before it
/// starts the next one. Clients that got their answers together send their next requests
/// together, a few hundred microseconds apart; without the wait the first of them would run
/// alone and the rest wait for it. A worker serving one client at a time never waits.
const GATHER: Duration = Duration::from_millis(2);

fn run(model: &LoadedModel, queue: &Receiver<Job>, limits: Limits) {
    if let Pipeline::Generate(generator) = &model.pipeline {
        return generation_loop(model, generator, queue, limits);
    }
    let mut held: Option<Job> = None;
    let mut last_batch = 1;
    loop {
        // Wait for a job, then take what else is waiting, within the limits.
        let first = match held.take() {
            Some(job) => job,
            None => match queue.recv_timeout(Duration::from_secs(3600)) {
                Ok(job) => job,
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => return,
            },
        };
        let mut jobs = vec![first];
        let mut tokens = jobs[0].tokens;
        let mut requests = jobs[0].len();
        while requests < limits.max_batch_requests && tokens < limits.max_batch_tokens {
            match queue.try_recv() {
                Ok(job) => {
                    if requests + job.len() > limits.max_batch_requests
                        || tokens + job.tokens > limits.max_batch_tokens
                    {
                        held = Some(job);
                        break;
                    }
                    tokens += job.tokens;
                    requests += job.len();
                    jobs.push(job);
                }
                Err(TryRecvError::Empty) => {
                    // Under concurrency, gather the stragglers of the last wave.
                    if last_batch > 1 && jobs.len() < last_batch {
                        match queue.recv_timeout(GATHER) {
                            Ok(job) => {
                                if requests + job.len() > limits.max_batch_requests
                                    || tokens + job.tokens > limits.max_batch_tokens
                                {
                                    held = Some(job);
                                    break;
                                }
                                tokens += job.tokens;
                                requests += job.len();
                                jobs.push(job);
                                continue;
                            }
                            Err(_) => break,
                        }
                    }
                    break;
                }
                Err(TryRecvError::Disconnected) => break,
            }
        }
        metrics::gauge!("trident_queue_depth", "model" => model.name.clone())
            .decrement(jobs.len() as f64);
        last_batch = jobs.len();
        jobs.retain(|j| !j.gone());
        // Group jobs with the same options, keeping arrival order within a group.
        let mut groups: Vec<(Option<String>, Vec<Job>)> = Vec::new();
        for job in jobs {
            let key = job.key();
            match groups.iter_mut().find(|(k, _)| key.is_some() && *k == key) {
                Some((_, g)) => g.push(job),
                None => groups.push((key, vec![job])),
            }
        }
        for (_, group) in groups {
            // A panic in a pipeline must not take the worker (and every later request to
            // this model) with it: the group's clients get 500, the worker goes on.
            let replies =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_group(model, group)));
            if replies.is_err() {
                tracing::error!(model = %model.name, "a request panicked in the model; the worker goes on");
            }
        }
    }
}

/// A generation request decoding in the continuous batch.
struct Running {
    job: Job,
    started: Instant,
}

/// The worker of a text-generation model: continuous batching.
///
/// Each turn takes the jobs that have arrived (waiting for one only when nothing runs),
/// admits them while the batch has fewer than `max_batch_requests` sequences (each is
/// prefilled as it joins), drops the requests whose clients have gone, decodes one token for
/// every sequence, and answers the requests that have finished. A job the batch cannot take
/// (beam search) or whose options are invalid runs through the pipeline on its own, which
/// answers it (with its error, if any).
fn generation_loop(
    model: &LoadedModel,
    generator: &TextGenerator,
    queue: &Receiver<Job>,
    limits: Limits,
) {
    let mut batch = generator.continuous();
    let mut running: HashMap<u64, Running> = HashMap::new();
    let mut waiting: VecDeque<Job> = VecDeque::new();
    let mut next_key = 0u64;
    let depth = metrics::gauge!("trident_queue_depth", "model" => model.name.clone());
    loop {
        if batch.is_idle() && waiting.is_empty() {
            match queue.recv_timeout(Duration::from_secs(3600)) {
                Ok(job) => {
                    depth.decrement(1.0);
                    waiting.push_back(job);
                }
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
        while let Ok(job) = queue.try_recv() {
            depth.decrement(1.0);
            waiting.push_back(job);
        }
        // Admit what fits; a job larger than the limit still runs when the batch is empty.
        while let Some(job) = waiting.front() {
            let rows = batch.running();
            if rows > 0 && rows + job.len() > limits.max_batch_requests {
                break;
            }
            let Some(job) = waiting.pop_front() else {
                break;
            };
            if job.gone() {
                continue;
            }
            let joinable = match &job.work {
                Work::Generate(texts, options, _) if batch.accepts(options) => {
                    Some((texts.clone(), options.clone()))
                }
                _ => None,
            };
            let Some((texts, options)) = joinable else {
                alone(model, job);
                continue;
            };
            let key = next_key;
            next_key += 1;
            running.insert(
                key,
                Running {
                    job,
                    started: Instant::now(),
                },
            );
            let added = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                batch.add(key, texts, options, &mut |k, piece| {
                    send_piece(&running, k, piece)
                })
            }));
            match added {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    if let Some(r) = running.remove(&key) {
                        let _ = r.job.reply.send(Err(e));
                    }
                }
                Err(_) => {
                    tracing::error!(model = %model.name, "a request panicked while joining the batch; the worker goes on");
                    fail_running(&mut running, "the model failed on this request");
                    batch = generator.continuous();
                }
            }
        }
        let gone: Vec<u64> = running
            .iter()
            .filter(|(_, r)| r.job.gone())
            .map(|(k, _)| *k)
            .collect();
        for key in gone {
            batch.cancel(key);
            running.remove(&key);
        }
        if batch.running() > 0 {
            metrics::histogram!("trident_batch_size", "model" => model.name.clone())
                .record(batch.running() as f64);
        }
        let stepped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            batch.step(&mut |k, piece| send_piece(&running, k, piece))
        }));
        if stepped.is_err() {
            tracing::error!(model = %model.name, "a decoding step panicked; its requests failed, the worker goes on");
            fail_running(&mut running, "the model failed while generating");
            batch = generator.continuous();
            continue;
        }
        for (key, result) in batch.finished() {
            let Some(r) = running.remove(&key) else {
                continue;
            };
            if let Ok(out) = &result {
                record_generated(model, out, r.started);
            }
            let _ = r.job.reply.send(result.map(Output::Generate));
        }
    }
}

/// Stream a piece of a running request's text to its client; an error when the client has
/// gone (the batch then drops the request).
fn send_piece(running: &HashMap<u64, Running>, key: u64, piece: Piece) -> Result<()> {
    let Some(r) = running.get(&key) else {
        return Ok(());
    };
    if r.job.gone() {
        return Err(Error::Input("the request was cancelled".into()));
    }
    if let Work::Generate(_, _, Some(stream)) = &r.job.work {
        if !piece.text.is_empty() {
            stream
                .send(StreamPiece {
                    input: piece.input,
                    sequence: piece.sequence,
                    text: piece.text.to_string(),
                })
                .map_err(|_| Error::Input("the client disconnected".into()))?;
        }
    }
    Ok(())
}

/// Answer every running request with an error.
fn fail_running(running: &mut HashMap<u64, Running>, message: &str) {
    for (_, r) in running.drain() {
        let _ = r.job.reply.send(Err(Error::Input(message.to_string())));
    }
}

/// Run one job through its pipeline and answer it.
fn alone(model: &LoadedModel, job: Job) {
    let replied =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_group(model, vec![job])));
    if replied.is_err() {
        tracing::error!(model = %model.name, "a request panicked in the model; the worker goes on");
    }
}

/// Token counters of a finished generation.
fn record_generated(model: &LoadedModel, out: &[Vec<GeneratedText>], started: Instant) {
    let generated: usize = out.iter().flatten().map(|g| g.generated_tokens).sum();
    if generated > 0 {
        metrics::counter!("trident_output_tokens_total", "model" => model.name.clone())
            .increment(generated as u64);
        metrics::histogram!("trident_time_per_output_token_seconds", "model" => model.name.clone())
            .record(started.elapsed().as_secs_f64() / generated as f64);
    }
}

/// Run jobs with equal options as one pipeline call, or alone when that fails.
fn run_group(model: &LoadedModel, group: Vec<Job>) {
    let inputs: usize = group.iter().map(Job::len).sum();
    metrics::histogram!("trident_batch_size", "model" => model.name.clone()).record(inputs as f64);
    if group.len() == 1 {
        let job = group.into_iter().next().expect("one job");
        let result = execute(model, &job.work, &job.cancelled, &job.reply);
        let _ = job.reply.send(result);
        return;
    }
    let texts: Vec<String> = group
        .iter()
        .flat_map(|j| match &j.work {
            Work::Ner(t, _)
            | Work::Classify(t, _)
            | Work::Embed(t)
            | Work::Summarize(t, _)
            | Work::Translate(t, _)
            | Work::Generate(t, _, _) => t.clone(),
        })
        .collect();
    let merged = with_texts(&group[0].work, texts);
    let never = Arc::new(AtomicBool::new(false));
    let (probe, _keep) = oneshot::channel::<Result<Output>>();
    match execute(model, &merged, &never, &probe) {
        Ok(output) => {
            let mut output = Some(output);
            let mut start = 0;
            for job in group {
                let n = job.len();
                let part = split(output.as_mut().expect("output"), start, n);
                start += n;
                let _ = job.reply.send(Ok(part));
            }
        }
        Err(_) => {
            for job in group {
                let result = execute(model, &job.work, &job.cancelled, &job.reply);
                let _ = job.reply.send(result);
            }
        }
    }
}

/// `work` with other texts (a group's).
fn with_texts(work: &Work, texts: Vec<String>) -> Work {
    match work {
        Work::Ner(_, o) => Work::Ner(texts, o.clone()),
        Work::Classify(_, o) => Work::Classify(texts, o.clone()),
        Work::Embed(_) => Work::Embed(texts),
        Work::Summarize(_, o) => Work::Summarize(texts, o.clone()),
        Work::Translate(_, o) => Work::Translate(texts, o.clone()),
        Work::Generate(_, o, _) => Work::Generate(texts, o.clone(), None),
    }
}

/// The results of texts `start..start + n` of a group's output.
fn split(output: &mut Output, start: usize, n: usize) -> Output {
    fn take<T: Clone>(v: &[T], start: usize, n: usize) -> Vec<T> {
        v[start..start + n].to_vec()
    }
    match output {
        Output::Ner(v) => Output::Ner(take(v, start, n)),
        Output::Classify(v) => Output::Classify(take(v, start, n)),
        Output::Embed(v) => Output::Embed(take(v, start, n)),
        Output::Summarize(v) => Output::Summarize(take(v, start, n)),
        Output::Translate(v) => Output::Translate(take(v, start, n)),
        Output::Generate(v) => Output::Generate(take(v, start, n)),
    }
}

/// Run one job's work on the model.
fn execute(
    model: &LoadedModel,
    work: &Work,
    cancelled: &AtomicBool,
    reply: &oneshot::Sender<Result<Output>>,
) -> Result<Output> {
    let started = Instant::now();
    let out = match (&model.pipeline, work) {
        (Pipeline::Ner(p), Work::Ner(t, o)) => {
            let options = NerOptions {
                batch_size: ENCODER_BATCH,
                ..o.clone()
            };
            Output::Ner(by_length(t, |texts| p.run(texts, &options))?)
        }
        (Pipeline::Classify(p), Work::Classify(t, o)) => {
            let options = ClassifyOptions {
                batch_size: ENCODER_BATCH,
                ..o.clone()
            };
            Output::Classify(by_length(t, |texts| p.run(texts, &options))?)
        }
        (Pipeline::Embed(p), Work::Embed(t)) => {
            let options = EmbedOptions {
                batch_size: ENCODER_BATCH,
            };
            Output::Embed(by_length(t, |texts| p.run(texts, &options))?)
        }
        (Pipeline::Summarize(p), Work::Summarize(t, o)) => Output::Summarize(p.run(&as_str(t), o)?),
        (Pipeline::Translate(p), Work::Translate(t, o)) => Output::Translate(p.run(&as_str(t), o)?),
        (Pipeline::Generate(p), Work::Generate(t, o, stream)) => {
            let mut on_piece = |piece: trident_gpt::Piece| -> Result<()> {
                // A client that went away or a request that timed out stops generating.
                if cancelled.load(Ordering::Relaxed) || reply.is_closed() {
                    return Err(Error::Input("the request was cancelled".into()));
                }
                if let Some(s) = stream {
                    if !piece.text.is_empty() {
                        s.send(StreamPiece {
                            input: piece.input,
                            sequence: piece.sequence,
                            text: piece.text.to_string(),
                        })
                        .map_err(|_| Error::Input("the client disconnected".into()))?;
                    }
                }
                Ok(())
            };
            let out = p.run_streaming(&as_str(t), o, &mut on_piece)?;
            record_generated(model, &out, started);
            Output::Generate(out)
        }
        _ => {
            return Err(Error::Input(format!(
                "model '{}' does not serve this task",
                model.name
            )))
        }
    };
    Ok(out)
}

/// Texts per forward pass of an encoder. The texts of a batch are sorted by length first
/// ([`by_length`]), so a pass pads little; more texts per pass would only make the
/// activations (and the server's memory) larger, the matrix products being compute-bound
/// already at this size.
const ENCODER_BATCH: usize = 16;

/// `run` on `texts` sorted by length (shortest first, so that each forward pass holds texts
/// of similar lengths and pads little), with the results put back in the texts' order.
fn by_length<T>(texts: &[String], run: impl FnOnce(&[&str]) -> Result<Vec<T>>) -> Result<Vec<T>> {
    let mut order: Vec<usize> = (0..texts.len()).collect();
    order.sort_by_key(|&i| texts[i].len());
    let sorted: Vec<&str> = order.iter().map(|&i| texts[i].as_str()).collect();
    let results = run(&sorted)?;
    let mut slots: Vec<Option<T>> = (0..texts.len()).map(|_| None).collect();
    for (result, &i) in results.into_iter().zip(&order) {
        slots[i] = Some(result);
    }
    slots
        .into_iter()
        .map(|r| r.ok_or_else(|| Error::Input("a text got no result".into())))
        .collect()
}

fn as_str(texts: &[String]) -> Vec<&str> {
    texts.iter().map(String::as_str).collect()
}
