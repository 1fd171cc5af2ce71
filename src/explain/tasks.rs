//! One function per task: run the task's pipeline on the text under the probe, and build the
//! [`Explanation`] from what it recorded and returned.

use super::trace::{follow, StackTrace};
use super::views::{self, cut, input, positions, stack, token_texts};
use super::{EntityView, ExplainOptions, Explanation, Output, Task};
use tch::Kind;
use trident_bert::{
    ClassifyOptions, EmbedOptions, Embedder, Entity, NerOptions, TextClassifier, TokenClassifier,
};
use trident_core::causal::GenerateOptions;
use trident_core::generation::{CausalLmDecoder, GenerationConfig, Seq2SeqDecoder};
use trident_core::nn::probe;
use trident_core::seq2seq::{SummarizeOptions, TranslateOptions};
use trident_core::{Batch, Encoded, Error, ModelFiles, PaddingSide, Result, TextEncoder};

/// The parts every explanation shares.
struct Common {
    model: String,
    model_type: String,
    config: serde_json::Value,
}

impl Common {
    fn new(files: &ModelFiles) -> Result<Self> {
        let config = views::config(files)?;
        Ok(Common {
            model: files.name(),
            model_type: views::model_type(&config),
            config,
        })
    }

    fn explanation(
        self,
        task: Task,
        text: String,
        truncated: bool,
        input: super::InputView,
        stacks: Vec<super::StackView>,
        output: Output,
    ) -> Explanation {
        Explanation {
            trident_explain: 1,
            task: task.name().into(),
            model: self.model,
            model_type: self.model_type,
            text,
            truncated,
            input,
            stacks,
            output,
        }
    }
}

/// An encoder's one forward pass: the stack `encoder` over `encoded`.
fn encoder_stack(
    common: &Common,
    recording: &probe::Recording,
    encoded: &Encoded,
) -> Result<super::StackView> {
    let trace = StackTrace::from_recording(recording)?;
    let n = trace.hidden_states.first().map_or(0, |h| h.size()[0]) as usize;
    if n != encoded.len() {
        return Err(Error::Input(format!(
            "the model read {n} tokens of the text's {}: lower max_tokens to {n}",
            encoded.len()
        )));
    }
    stack(
        "encoder",
        &trace,
        encoded.tokens.clone(),
        None,
        positions(&common.config, false),
    )
}

/// NER: the model's per-token label distribution (its forward pass recorded), and the
/// pipeline's entities with the tokens each covers.
pub(super) fn ner(files: &ModelFiles, text: &str, options: &ExplainOptions) -> Result<Explanation> {
    let common = Common::new(files)?;
    let ner = TokenClassifier::from_pretrained(files, &options.load)?;
    let tokenizer = TextEncoder::from_files(files)?;
    let (text, truncated) = cut(&tokenizer, text, options.max_tokens)?;
    let encoded = tokenizer.encode(&text)?;
    let model = ner.model();
    let batch = Batch::new(
        vec![encoded.clone()],
        tokenizer.pad_id,
        PaddingSide::Right,
        model.encoder.device(),
    )?;
    // [1, tokens, labels] f32
    let (logits, recording) = tch::no_grad(|| probe::record(|| model.forward(&batch)))?;
    let scores = logits
        .f_select(0, 0)?
        .f_softmax(-1, Kind::Float)?
        .f_to_device(tch::Device::Cpu)?;
    let token_scores = Vec::<Vec<f32>>::try_from(&scores)?;
    let labels = ner.labels().to_vec();
    let predicted = token_scores
        .iter()
        .map(|row| {
            let best = (0..row.len())
                .max_by(|&a, &b| row[a].total_cmp(&row[b]))
                .unwrap_or(0);
            labels.get(best).cloned().unwrap_or_default()
        })
        .collect();
    let pipeline_options = NerOptions {
        batch_size: 1,
        aggregation: options.aggregation,
        ..Default::default()
    };
    let entities = ner
        .run(&[text.as_str()], &pipeline_options)?
        .into_iter()
        .next()
        .unwrap_or_default()
        .into_iter()
        .map(|e| entity(e, &encoded))
        .collect();
    let stacks = vec![encoder_stack(&common, &recording, &encoded)?];
    let output = Output::Ner {
        labels,
        token_scores: token_scores
            .into_iter()
            .map(|r| r.into_iter().map(|x| (x * 1e4).round() / 1e4).collect())
            .collect(),
        predicted,
        aggregation: format!("{:?}", options.aggregation).to_lowercase(),
        entities,
    };
    let input = input(&text, &encoded);
    Ok(common.explanation(Task::Ner, text, truncated, input, stacks, output))
}

/// An entity with the (non-special) tokens inside its character span.
fn entity(e: Entity, encoded: &Encoded) -> EntityView {
    let (label, score, word, start, end) = match e {
        Entity::Token {
            entity,
            score,
            word,
            start,
            end,
            ..
        } => (entity, score, word, start, end),
        Entity::Group {
            entity_group,
            score,
            word,
            start,
            end,
        } => (entity_group, score, word, start, end),
    };
    let tokens = (0..encoded.len())
        .filter(|&i| {
            let (s, t) = encoded.offsets[i];
            !encoded.special[i] && s < t && s >= start && t <= end
        })
        .collect();
    EntityView {
        label,
        score,
        word,
        start,
        end,
        tokens,
    }
}

/// Classification: the pipeline's forward pass recorded, every label's score.
pub(super) fn classify(
    files: &ModelFiles,
    text: &str,
    options: &ExplainOptions,
) -> Result<Explanation> {
    let common = Common::new(files)?;
    let classifier = TextClassifier::from_pretrained(files, &options.load)?;
    let tokenizer = TextEncoder::from_files(files)?;
    let (text, truncated) = cut(&tokenizer, text, options.max_tokens)?;
    let encoded = classifier.encode(&text)?;
    let pipeline_options = ClassifyOptions {
        batch_size: 1,
        top_k: None,
        function: None,
    };
    let (labels, recording) = probe::record(|| {
        classifier.run_encoded(std::slice::from_ref(&encoded), &pipeline_options)
    })?;
    let stacks = vec![encoder_stack(&common, &recording, &encoded)?];
    let output = Output::Classification {
        function: format!("{:?}", classifier.score_function()).to_lowercase(),
        labels: labels.into_iter().next().unwrap_or_default(),
    };
    let input = input(&text, &encoded);
    Ok(common.explanation(Task::Classify, text, truncated, input, stacks, output))
}

/// Embedding: the pipeline's forward pass recorded, and the pooled vector.
pub(super) fn embed(
    files: &ModelFiles,
    text: &str,
    options: &ExplainOptions,
) -> Result<Explanation> {
    let common = Common::new(files)?;
    let embedder = Embedder::from_pretrained(files, &options.load)?;
    let tokenizer = TextEncoder::from_files(files)?;
    let (text, truncated) = cut(&tokenizer, text, options.max_tokens)?;
    let encoded = tokenizer.encode(&text)?;
    let (vectors, recording) =
        probe::record(|| embedder.run(&[text.as_str()], &EmbedOptions { batch_size: 1 }))?;
    let stacks = vec![encoder_stack(&common, &recording, &encoded)?];
    let output = Output::Embedding {
        pooling: format!("{:?}", embedder.pooling()).to_lowercase(),
        normalized: embedder.normalizes(),
        vector: vectors
            .into_iter()
            .next()
            .map(|e| e.embedding)
            .unwrap_or_default(),
    };
    let input = input(&text, &encoded);
    Ok(common.explanation(Task::Embed, text, truncated, input, stacks, output))
}

/// How a generation chose its tokens.
fn search(settings: &GenerationConfig) -> String {
    match (settings.num_beams(), settings.do_sample()) {
        (n, _) if n > 1 => format!("beam search ({n} beams)"),
        (_, true) => "sampling".into(),
        _ => "greedy".into(),
    }
}

/// Summarize or translate: the pipeline generates; the chosen tokens are then read back
/// through the model step by step with its cache, the encoder once, under the probe.
pub(super) fn seq2seq(
    task: Task,
    files: &ModelFiles,
    text: &str,
    options: &ExplainOptions,
) -> Result<Explanation> {
    let common = Common::new(files)?;
    let generation = GenerationConfig {
        max_new_tokens: Some(options.max_new_tokens),
        ..Default::default()
    };
    // The pipeline's own inputs, output ids and settings.
    let (pipeline, inputs, ids, produced, settings);
    let cut_text;
    match task {
        Task::Summarize => {
            let summarizer = crate::summarizer(files, &options.load)?;
            let o = SummarizeOptions {
                generation,
                batch_size: 1,
                ..Default::default()
            };
            cut_text = cut(&summarizer.pipeline().tokenizer, text, options.max_tokens)?;
            inputs = summarizer.inputs(&cut_text.0, &o)?;
            settings = summarizer.settings(&o)?;
            let summary = first(summarizer.run(&[cut_text.0.as_str()], &o)?)?;
            (ids, produced) = (summary.token_ids, summary.summary_text);
            pipeline = Pipeline::Summarizer(summarizer);
        }
        _ => {
            let translator = crate::translator(files, &options.load)?;
            let o = TranslateOptions {
                source: options.source.clone(),
                target: options.target.clone(),
                generation,
                max_input_tokens: None,
                batch_size: 1,
            };
            cut_text = cut(&translator.pipeline().tokenizer, text, options.max_tokens)?;
            inputs = translator.inputs(&cut_text.0, &o)?;
            settings = translator.settings(&o)?;
            let translation = first(translator.run(&[cut_text.0.as_str()], &o)?)?;
            (ids, produced) = (translation.token_ids, translation.translation_text);
            pipeline = Pipeline::Translator(translator);
        }
    }
    let (text, truncated) = cut_text;
    let [encoded]: [Encoded; 1] = inputs.try_into().map_err(|pieces: Vec<Encoded>| {
        Error::Input(format!(
            "the text was split into {} pieces for the encoder: lower max_tokens",
            pieces.len()
        ))
    })?;
    let inner = pipeline.inner();
    let (model, tokenizer) = (&inner.model, &inner.tokenizer);
    let batch = Batch::new(
        vec![encoded.clone()],
        tokenizer.pad_id,
        PaddingSide::Right,
        model.device(),
    )?;
    let trace = follow(&Seq2SeqDecoder(model), &batch, &ids)?;
    let encoder = trace
        .encoder
        .as_ref()
        .ok_or_else(|| Error::Input("the encoder recorded nothing".into()))?;
    let source: Vec<String> = encoded.tokens.clone();
    let stacks = vec![
        stack(
            "encoder",
            encoder,
            source.clone(),
            None,
            positions(&common.config, false),
        )?,
        stack(
            "decoder",
            &trace.decoder,
            token_texts(tokenizer, &trace.read),
            Some(source),
            positions(&common.config, true),
        )?,
    ];
    let steps = trace
        .logits
        .iter()
        .zip(&ids)
        .map(|(logits, &id)| views::step(tokenizer, logits, id, options.top_k))
        .collect::<Result<Vec<_>>>()?;
    let output = Output::Generation {
        search: search(&settings),
        text: produced,
        steps,
    };
    let prefix = settings.prefix.clone().unwrap_or_default();
    let input = input(&format!("{prefix}{text}"), &encoded);
    Ok(common.explanation(task, text, truncated, input, stacks, output))
}

/// Summarizer or translator, kept for the model and tokenizer underneath.
enum Pipeline {
    Summarizer(trident_core::seq2seq::Summarizer),
    Translator(trident_core::seq2seq::Translator),
}

impl Pipeline {
    fn inner(
        &self,
    ) -> &trident_core::seq2seq::Seq2SeqPipeline<trident_core::seq2seq::AnySeq2SeqLm> {
        match self {
            Pipeline::Summarizer(s) => s.pipeline(),
            Pipeline::Translator(t) => t.pipeline(),
        }
    }
}

/// The first output of the first input.
fn first<T>(results: Vec<Vec<T>>) -> Result<T> {
    results
        .into_iter()
        .next()
        .and_then(|r| r.into_iter().next())
        .ok_or_else(|| Error::Input("the pipeline returned nothing".into()))
}

/// Generate: the pipeline continues the prompt (greedy or sampling, one sequence); the prompt
/// and the chosen tokens are then read back through the model step by step under the probe.
pub(super) fn generate(
    files: &ModelFiles,
    text: &str,
    options: &ExplainOptions,
) -> Result<Explanation> {
    let common = Common::new(files)?;
    let generator = crate::generator(files, &options.load)?;
    let tokenizer = generator.tokenizer();
    let (text, truncated) = cut(tokenizer, text, options.max_tokens)?;
    let pipeline_options = GenerateOptions {
        batch_size: 1,
        generation: GenerationConfig {
            max_new_tokens: Some(options.max_new_tokens),
            num_beams: Some(1),
            num_return_sequences: Some(1),
            ..Default::default()
        },
        return_full_text: false,
        show_probs: Some(1),
    };
    let settings = generator.settings(&pipeline_options)?;
    let (prompt, _) = generator.encode_prompt(&text, generator.max_prompt_tokens(&settings)?)?;
    let generated = first(generator.run(&[text.as_str()], &pipeline_options)?)?;
    let ids: Vec<i64> = generated
        .steps
        .as_ref()
        .map(|steps| steps.iter().map(|s| s.id).collect())
        .unwrap_or_default();
    let model = generator.model();
    let batch = Batch::new(
        vec![prompt.clone()],
        tokenizer.pad_id,
        PaddingSide::Left,
        model.device(),
    )?;
    let trace = follow(&CausalLmDecoder(model), &batch, &ids)?;
    let stacks = vec![stack(
        "decoder",
        &trace.decoder,
        token_texts(tokenizer, &trace.read),
        None,
        positions(&common.config, true),
    )?];
    let steps = trace
        .logits
        .iter()
        .zip(&ids)
        .map(|(logits, &id)| views::step(tokenizer, logits, id, options.top_k))
        .collect::<Result<Vec<_>>>()?;
    let output = Output::Generation {
        search: search(&settings),
        text: generated.generated_text,
        steps,
    };
    let input = input(&text, &prompt);
    Ok(common.explanation(Task::Generate, text, truncated, input, stacks, output))
}
