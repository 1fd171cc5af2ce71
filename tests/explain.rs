//! Core's probe against transformers (`output_attentions=True`, `output_hidden_states=True`,
//! eager attention) on the tiny fixtures, to 1e-4: weights/explain/reference.json, recorded
//! by scripts/fixtures_explain.py. Encoders run once; decoders run as `trident explain` runs
//! them, step by step with their cache, and the stitched maps must equal transformers' one
//! full pass.

use serde_json::Value;
use tch::{Device, Tensor};
use trident::explain::trace::{follow, DecodeTrace, StackTrace};
use trident_core::generation::{CausalLmDecoder, Seq2SeqDecoder};
use trident_core::nn::probe;
use trident_core::{Batch, Dtype, Encoded, ModelFiles, PaddingSide};
use trident_testing::{assert_close, fixture_dir, reference, tensor};

const TOL: f64 = 1e-4;

fn case(name: &str) -> Value {
    reference("explain").unwrap()["cases"][name].clone()
}

fn files(name: &str) -> ModelFiles {
    ModelFiles::local(fixture_dir(name)).unwrap()
}

fn ids(v: &Value) -> Vec<i64> {
    serde_json::from_value(v.clone()).unwrap()
}

fn batch(ids: &[i64], side: PaddingSide) -> Batch {
    let encoded = Encoded {
        ids: ids.to_vec(),
        type_ids: vec![0; ids.len()],
        ..Default::default()
    };
    Batch::new(vec![encoded], 0, side, Device::Cpu).unwrap()
}

/// `[1, …]` reference tensor → its first row.
fn row(v: &Value) -> Tensor {
    tensor(v).unwrap().select(0, 0)
}

/// Every layer's attention maps and the residual stream of `trace` against the reference.
fn check(trace: &StackTrace, attentions: &Value, hidden: &Value, what: &str) {
    let attentions = attentions.as_array().unwrap();
    assert_eq!(trace.layers(), attentions.len(), "{what}: layers");
    for (l, expected) in attentions.iter().enumerate() {
        assert_close(
            &trace.self_attention[l],
            &row(expected),
            TOL,
            &format!("{what} attention, layer {l}"),
        );
    }
    let hidden = hidden.as_array().unwrap();
    assert_eq!(
        trace.hidden_states.len(),
        hidden.len(),
        "{what}: hidden states"
    );
    for (i, expected) in hidden.iter().enumerate() {
        assert_close(
            &trace.hidden_states[i],
            &row(expected),
            TOL,
            &format!("{what} hidden state {i}"),
        );
    }
}

fn check_cross(trace: &StackTrace, attentions: &Value, what: &str) {
    let attentions = attentions.as_array().unwrap();
    assert_eq!(trace.cross_attention.len(), attentions.len());
    for (l, expected) in attentions.iter().enumerate() {
        assert_close(
            &trace.cross_attention[l],
            &row(expected),
            TOL,
            &format!("{what} cross-attention, layer {l}"),
        );
    }
}

/// Per-token L2 norms of the token and position parts against the reference.
fn check_embeddings(trace: &StackTrace, expected: &Value, what: &str) {
    let norms = |t: &Tensor| t.norm_scalaropt_dim(2.0, [-1i64], false);
    let want = |k: &str| {
        Tensor::from_slice(&serde_json::from_value::<Vec<f32>>(expected[k].clone()).unwrap())
    };
    let token = trace
        .token_embeddings
        .as_ref()
        .expect("token embeddings recorded");
    let position = trace
        .position_embeddings
        .as_ref()
        .expect("position embeddings recorded");
    assert_close(
        &norms(token),
        &want("token"),
        TOL,
        &format!("{what} token embedding norms"),
    );
    assert_close(
        &norms(position),
        &want("position"),
        TOL,
        &format!("{what} position embedding norms"),
    );
}

#[test]
fn bert_encoder_attentions_and_hidden_states() {
    let c = case("bert-tiny-ner");
    let f = files("bert-tiny-ner");
    let config = trident_bert::EncoderConfig::from_file(&f.get("config.json").unwrap()).unwrap();
    let model =
        trident_bert::heads::TokenClassificationModel::load(&f, &config, Device::Cpu, Dtype::F32)
            .unwrap();
    let b = batch(&ids(&c["input_ids"]), PaddingSide::Right);
    let (_, recording) = tch::no_grad(|| probe::record(|| model.forward(&b))).unwrap();
    let trace = StackTrace::from_recording(&recording).unwrap();
    assert_eq!(trace.heads(), 4);
    check(&trace, &c["attentions"], &c["hidden_states"], "BERT");
    check_embeddings(&trace, &c["embeddings"], "BERT");
}

/// A decoder-only case: the prompt, then the continuation one token per step with the
/// cache, through the model as `trident explain` runs it; the stitched attention maps and
/// residual stream checked against transformers' one full pass.
fn causal_step_by_step(
    name: &str,
    model: &dyn trident_core::generation::CausalLm,
    what: &str,
) -> (Value, DecodeTrace) {
    let c = case(name);
    let all = ids(&c["input_ids"]);
    let prompt = c["prompt_len"].as_u64().unwrap() as usize;
    // The path's last token is chosen but never read: the reference reads every id.
    let mut path = all[prompt..].to_vec();
    path.push(0);
    let trace = follow(
        &CausalLmDecoder(model),
        &batch(&all[..prompt], PaddingSide::Left),
        &path,
    )
    .unwrap();
    assert!(trace.encoder.is_none());
    assert_eq!(trace.read, all);
    assert_eq!(trace.logits.len(), path.len());
    check(&trace.decoder, &c["attentions"], &c["hidden_states"], what);
    (c, trace)
}

#[test]
fn gpt2_step_by_step_equals_one_full_pass() {
    let model =
        trident_gpt::GPT2LMHeadModel::from_pretrained(&files("gpt2-tiny"), Device::Cpu, Dtype::F32)
            .unwrap();
    let (c, trace) = causal_step_by_step("gpt2-tiny", &model, "GPT-2");
    check_embeddings(&trace.decoder, &c["embeddings"], "GPT-2");
}

#[test]
fn llama_grouped_query_rotary_step_by_step() {
    let model = trident_llama::LlamaForCausalLM::from_pretrained(
        &files("llama-tiny"),
        Device::Cpu,
        Dtype::F32,
    )
    .unwrap();
    let (_, trace) = causal_step_by_step("llama-tiny", &model, "Llama");
    assert_eq!(
        trace.decoder.heads(),
        8,
        "the 2 key/value heads serve 8 query heads"
    );
    assert!(
        trace.decoder.position_embeddings.is_none(),
        "rotary adds no vector"
    );
}

#[test]
fn bloom_alibi_step_by_step() {
    let model = trident_bloom::BloomForCausalLM::from_pretrained(
        &files("bloom-tiny"),
        Device::Cpu,
        Dtype::F32,
    )
    .unwrap();
    // ALiBi's distance penalty is inside the recorded weights; the residual stream starts
    // after `word_embeddings_layernorm`, as transformers' first hidden state does.
    let (_, trace) = causal_step_by_step("bloom-tiny", &model, "BLOOM");
    assert_eq!(trace.decoder.heads(), 6);
    assert!(
        trace.decoder.position_embeddings.is_none(),
        "ALiBi adds no vector"
    );
}

/// An encoder-decoder: the encoder once in `start`, the decoder step by step.
fn seq2seq(name: &str, model: &dyn trident_core::generation::Seq2SeqLm, what: &str) {
    let c = case(name);
    let decoder_ids = ids(&c["decoder_input_ids"]);
    let mut path = decoder_ids[1..].to_vec();
    path.push(0);
    let b = batch(&ids(&c["input_ids"]), PaddingSide::Right);
    let trace = follow(&Seq2SeqDecoder(model), &b, &path).unwrap();
    assert_eq!(
        trace.read, decoder_ids,
        "{what}: the decoder start token, then the path"
    );
    let encoder = trace.encoder.as_ref().expect("the encoder ran in start");
    check(
        encoder,
        &c["encoder_attentions"],
        &c["encoder_hidden_states"],
        &format!("{what} encoder"),
    );
    check(
        &trace.decoder,
        &c["decoder_attentions"],
        &c["decoder_hidden_states"],
        &format!("{what} decoder"),
    );
    check_cross(&trace.decoder, &c["cross_attentions"], what);
    if c.get("embeddings").is_some() {
        check_embeddings(encoder, &c["embeddings"], &format!("{what} encoder"));
    }
}

#[test]
fn t5_relative_buckets_encoder_decoder_and_cross_attention() {
    let model = trident_t5::T5ForConditionalGeneration::from_pretrained(
        &files("t5-tiny"),
        Device::Cpu,
        Dtype::F32,
    )
    .unwrap();
    seq2seq("t5-tiny", &model, "T5");
}

#[test]
fn bart_encoder_decoder_and_cross_attention() {
    let model = trident_bart::BartForConditionalGeneration::from_pretrained(
        &files("bart-tiny"),
        Device::Cpu,
        Dtype::F32,
    )
    .unwrap();
    seq2seq("bart-tiny", &model, "BART");
}

#[test]
fn recording_is_per_thread() {
    // A model call on another thread while this one records adds nothing to the recording.
    let model = std::sync::Arc::new(
        trident_gpt::GPT2LMHeadModel::from_pretrained(&files("gpt2-tiny"), Device::Cpu, Dtype::F32)
            .unwrap(),
    );
    let ids = Tensor::from_slice(&[5i64, 6, 7]).view([1, 3]);
    let mask = ids.ones_like();
    let (_, recording) = probe::record(|| {
        let other = std::sync::Arc::clone(&model);
        let (i, m) = (ids.shallow_clone(), mask.shallow_clone());
        std::thread::spawn(move || other.forward(&i, &m).map(|_| ()))
            .join()
            .unwrap()
    })
    .unwrap();
    assert!(recording.events.is_empty());
}
