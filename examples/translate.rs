//! Translate English sentences into German with T5, streaming each translation token by token
//! through the generation engine, then the same through the pipeline.
//!
//! ```sh
//! cargo run --example translate -- [MODEL] [SENTENCE]...
//! ```
//! MODEL is a directory or hub id (default t5-small; `weights/t5-tiny` works offline but,
//! being random, writes nonsense).

use std::io::Write;
use trident::core::config::TokenIds;
use trident::core::generation::{generate_with, GenerationConfig, Hooks, Seq2SeqDecoder, Token};
use trident::core::{Dtype, HubOptions, LoadOptions, ModelFiles, PaddingSide, TextEncoder};
use trident::t5::{T5ForConditionalGeneration, TranslateOptions};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let model = args.next().unwrap_or_else(|| "t5-small".to_string());
    let mut sentences: Vec<String> = args.collect();
    if sentences.is_empty() {
        sentences = vec![
            "The house is wonderful.".into(),
            "Angela Merkel met Emmanuel Macron in Berlin on Tuesday.".into(),
        ];
    }
    let files = ModelFiles::resolve(&model, HubOptions::from_env())?;

    // 1. The pipeline: prefix, task defaults and decoding handled for us. It is loaded once;
    //    the language pair (and any generation setting) comes with each call.
    let translator = trident::translator(&files, &LoadOptions::default())?;
    let options = TranslateOptions::new("en", "de");
    let texts: Vec<&str> = sentences.iter().map(String::as_str).collect();
    for (sentence, out) in texts.iter().zip(translator.run(&texts, &options)?) {
        println!("{sentence}\n  → {}", out[0].translation_text);
    }

    // 2. The engine underneath, greedy, printing tokens as they come.
    let t5 = T5ForConditionalGeneration::from_pretrained(&files, tch::Device::Cpu, Dtype::F32)?;
    let tokenizer = TextEncoder::from_files(&files)?;
    let config = GenerationConfig {
        max_new_tokens: Some(40),
        eos_token_id: Some(TokenIds::One(1)),
        pad_token_id: Some(TokenIds::One(0)),
        ..Default::default()
    };
    let prefix = translator.settings(&options)?.prefix.unwrap_or_default();
    let prompt = format!("{prefix}{}", texts[0]);
    let batch = tokenizer.encode_batch(&[&prompt], None, PaddingSide::Right, t5.device())?;
    print!("streamed: ");
    let mut so_far: Vec<i64> = Vec::new();
    let mut printed = 0;
    let mut show = |t: Token| -> trident::Result<()> {
        // Decode everything so far and print what is new, so that pieces of words join up.
        so_far.push(t.id);
        let text = tokenizer.decode(&so_far, true)?;
        // Earlier characters can change as a word grows; print only a clean extension.
        if let Some(new) = text.get(printed..) {
            print!("{new}");
            printed = text.len();
        }
        let _ = std::io::stdout().flush();
        Ok(())
    };
    let hooks = Hooks {
        on_token: Some(&mut show),
        detokenize: None,
    };
    generate_with(&Seq2SeqDecoder(&t5), &batch, &config, hooks)?;
    println!();
    Ok(())
}
