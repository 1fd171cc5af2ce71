//! Continue a prompt with GPT-2, printing the text as it is generated, then the model's
//! three most probable next tokens at each of the first steps.
//!
//! ```sh
//! cargo run --example generate -- [MODEL] [PROMPT]
//! ```
//! MODEL is a directory or hub id (default gpt2); PROMPT defaults to "The meaning of life is".

use std::io::Write;
use trident::core::generation::GenerationConfig;
use trident::core::{HubOptions, LoadOptions, ModelFiles};
use trident::gpt::GenerateOptions;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let model = args.next().unwrap_or_else(|| "gpt2".to_string());
    let prompt = args
        .next()
        .unwrap_or_else(|| "The meaning of life is".to_string());

    let files = ModelFiles::resolve(&model, HubOptions::from_env())?;
    // Load once (CUDA when present, else the CPU); options come with each call.
    let generator = trident::generator(&files, &LoadOptions::default())?;
    let options = GenerateOptions {
        generation: GenerationConfig {
            max_new_tokens: Some(30),
            ..Default::default()
        },
        show_probs: Some(3),
        ..Default::default()
    };

    // Stream the continuation to stdout as tokens arrive (greedy search: one token per step).
    print!("{prompt}");
    let results = generator.run_streaming(&[&prompt], &options, &mut |piece| {
        print!("{}", piece.text);
        std::io::stdout().flush().ok();
        Ok(())
    })?;
    println!();

    // Each step chose the most probable token of the model's softmax over the vocabulary.
    let steps = results[0][0].steps.as_deref().unwrap_or_default();
    for (i, step) in steps.iter().take(5).enumerate() {
        let candidates: Vec<String> = step
            .top
            .iter()
            .map(|t| format!("{:?} {:.3}", t.token, t.probability))
            .collect();
        println!("step {}: {}", i + 1, candidates.join(", "));
    }
    Ok(())
}
