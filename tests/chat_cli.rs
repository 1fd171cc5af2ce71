//! End-to-end tests of `trident chat` (stdin a pipe: a message per line, an answer per line)
//! and `trident generate --chat` (a messages JSON, JSON Lines of conversations) on the tiny
//! Llama fixture, whose chat template is Llama 3's. Each answer equals what the text-generation
//! pipeline produces for the rendered prompt (greedy) and what transformers' pipeline answers
//! the same chat (weights/chat/reference.json), with none of the template's text around it.

use serde_json::{json, Value};
use std::io::Write;
use std::process::{Command, Output, Stdio};
use trident::core::causal::GenerateOptions;
use trident::core::chat::{ChatTemplate, Message};
use trident::core::generation::GenerationConfig;
use trident::core::{LoadOptions, ModelFiles};

const NEW: usize = 10;

fn llama() -> String {
    trident_testing::fixture_dir("llama-tiny")
        .display()
        .to_string()
}

fn trident(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_trident"))
        .args(args)
        .env("HF_HUB_OFFLINE", "1")
        .current_dir(std::env::temp_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin).unwrap();
    drop(input);
    let out = child.wait_with_output().unwrap();
    assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
    out
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

fn stdout(o: &Output) -> String {
    assert!(o.status.success(), "{}", stderr(o));
    String::from_utf8(o.stdout.clone()).unwrap()
}

/// `trident generate --chat` on the Llama fixture, greedy, NEW new tokens.
fn generate_chat(model: &str, args: &[&str], stdin: &[u8]) -> Output {
    let new = NEW.to_string();
    let mut all = vec![
        "generate",
        "--chat",
        "--model",
        model,
        "--device",
        "cpu",
        "--max-new-tokens",
        &new,
    ];
    all.extend_from_slice(args);
    trident(&all, stdin)
}

/// `trident chat` on the Llama fixture with `lines` piped in.
fn chat(args: &[&str], lines: &str) -> Output {
    let model = llama();
    let new = NEW.to_string();
    let mut all = vec![
        "chat",
        "--model",
        &model,
        "--device",
        "cpu",
        "--max-new-tokens",
        &new,
    ];
    all.extend_from_slice(args);
    trident(&all, lines.as_bytes())
}

/// What the library's pipeline answers `messages` (the prompt rendered by the template).
struct Pipeline {
    generator: trident::core::causal::TextGenerator,
    template: ChatTemplate,
}

impl Pipeline {
    fn new() -> Self {
        let files = ModelFiles::local(llama()).unwrap();
        Pipeline {
            generator: trident::generator(&files, &LoadOptions::default()).unwrap(),
            template: ChatTemplate::from_files(&files).unwrap(),
        }
    }

    fn answer<M: serde::Serialize>(&self, messages: &[M], stop: Option<&str>) -> String {
        let prompt = self
            .template
            .prompt(messages, self.generator.tokenizer())
            .unwrap();
        let options = GenerateOptions {
            batch_size: 1,
            generation: GenerationConfig {
                max_new_tokens: Some(NEW),
                stop_strings: stop.map(|s| vec![s.to_string()]),
                ..Default::default()
            },
            return_full_text: false,
            show_probs: None,
        };
        let out = self.generator.run(&[prompt.as_str()], &options).unwrap();
        out[0][0].generated_text.clone()
    }
}

/// The chats transformers' pipeline answered, with its answers.
fn transformers_answers() -> Vec<(Vec<Value>, String)> {
    let r = trident_testing::reference("chat").unwrap();
    r["answers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            assert_eq!(a["max_new_tokens"], NEW);
            (
                a["messages"].as_array().unwrap().clone(),
                a["answer"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn assert_bare(answer: &str) {
    for marker in [
        "<|begin_of_text|>",
        "<|start_header_id|>",
        "<|end_header_id|>",
        "<|eot_id|>",
        "assistant",
    ] {
        assert!(!answer.contains(marker), "{marker} in {answer:?}");
    }
}

#[test]
fn generate_chat_answers_a_messages_json_as_the_pipeline_and_transformers_do() {
    let pipeline = Pipeline::new();
    let model = llama();
    let answers = transformers_answers();
    assert_eq!(answers.len(), 3);
    for (messages, expected) in &answers {
        assert_eq!(&pipeline.answer(messages, None), expected, "{messages:?}");
        let conversation = Value::Array(messages.clone()).to_string();
        // As an argument, json output.
        let out = generate_chat(&model, &["--format", "json", &conversation], b"");
        let json: Value = serde_json::from_str(&stdout(&out)).unwrap();
        assert_eq!(
            json,
            json!([{"generated_text": expected}]),
            "{conversation}"
        );
        assert_bare(expected);
        // On stdin, pretty-printed over several lines, text output: the answer alone.
        let pretty = serde_json::to_string_pretty(&messages).unwrap();
        let out = generate_chat(&model, &[], pretty.as_bytes());
        assert_eq!(stdout(&out), format!("{expected}\n"), "{pretty}");
    }
}

#[test]
fn generate_chat_reads_json_lines_of_conversations_in_both_forms() {
    let answers = transformers_answers();
    let model = llama();
    let mut lines = String::new();
    for (n, (messages, _)) in answers.iter().enumerate() {
        let line = if n % 2 == 0 {
            Value::Array(messages.clone())
        } else {
            json!({"id": format!("c{n}"), "messages": messages})
        };
        lines.push_str(&format!("{line}\n"));
    }
    // One bad line among them: its error stays on its row.
    lines.push_str("{\"messages\": \"hello\"}\n");
    let out = generate_chat(
        &model,
        &["--format", "jsonl", "--batch-size", "2"],
        lines.as_bytes(),
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let rows: Vec<Value> = String::from_utf8(out.stdout.clone())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), answers.len() + 1);
    for (n, (_, expected)) in answers.iter().enumerate() {
        let id = if n % 2 == 0 {
            json!(n + 1)
        } else {
            json!(format!("c{n}"))
        };
        assert_eq!(
            rows[n],
            json!({"id": id, "result": [{"generated_text": expected}]})
        );
    }
    assert!(rows[answers.len()]["error"]
        .as_str()
        .unwrap()
        .contains("expected an array of messages"));
    // The same conversations as one JSON array.
    let list = Value::Array(
        answers
            .iter()
            .map(|(m, _)| Value::Array(m.clone()))
            .collect(),
    );
    let out = generate_chat(&model, &["--format", "json"], list.to_string().as_bytes());
    let json: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let expected: Vec<Value> = answers
        .iter()
        .map(|(_, a)| json!([{"generated_text": a}]))
        .collect();
    assert_eq!(json, Value::Array(expected));
}

#[test]
fn chat_over_a_pipe_keeps_the_conversation_and_obeys_its_commands() {
    let pipeline = Pipeline::new();
    let answers = transformers_answers();
    let (system_chat, system_answer) = &answers[0];
    let (hi_chat, hi_answer) = &answers[1];
    assert_eq!(hi_chat.len(), 1);
    let system = system_chat[0]["content"].as_str().unwrap();
    let question = system_chat[1]["content"].as_str().unwrap();
    // The second message is answered with the first exchange before it.
    let follow_up = "And then?";
    let second = pipeline.answer(
        &[
            Message::new("user", "Hi"),
            Message::new("assistant", hi_answer.as_str()),
            Message::new("user", follow_up),
        ],
        None,
    );
    let lines = format!(
        "Hi\n{follow_up}\n\n/reset\nHi\n/system {system}\n{question}\n/system\nHi\n/bogus\n/exit\nnever read\n"
    );
    let out = chat(&[], &lines);
    let text = stdout(&out);
    let got: Vec<&str> = text.lines().collect();
    let expected = [
        hi_answer.as_str(),
        second.as_str(),
        hi_answer.as_str(),
        system_answer.as_str(),
        hi_answer.as_str(),
    ];
    assert_eq!(got, expected, "{}", stderr(&out));
    for answer in got {
        assert_bare(answer);
    }
    assert!(stderr(&out).contains("unknown command /bogus"));
    // --system sets the first system message.
    let out = chat(&["--system", system], &format!("{question}\n"));
    assert_eq!(stdout(&out), format!("{system_answer}\n"));
}

#[test]
fn a_stop_string_ends_the_answer_before_it() {
    let pipeline = Pipeline::new();
    let (messages, full) = &transformers_answers()[1];
    // A stop string from the middle of the greedy answer.
    let stop: String = full.chars().skip(4).take(3).collect();
    let cut = &full[..full.find(&stop).unwrap()];
    assert!(!cut.is_empty() && cut.len() < full.len());
    let generated = pipeline.answer(messages, Some(&stop));
    assert!(generated.starts_with(cut) && generated.contains(&stop));
    let out = chat(&["--stop", &stop], "Hi\n");
    assert_eq!(stdout(&out), format!("{cut}\n"));
    let conversation = Value::Array(messages.clone()).to_string();
    for format in ["text", "json"] {
        let out = generate_chat(
            &llama(),
            &["--stop", &stop, "--format", format, &conversation],
            b"",
        );
        let text = stdout(&out);
        match format {
            "text" => assert_eq!(text, format!("{cut}\n")),
            _ => assert_eq!(
                serde_json::from_str::<Value>(&text).unwrap(),
                json!([{"generated_text": cut}])
            ),
        }
    }
}

#[test]
fn a_template_that_refuses_a_conversation_fails_that_conversation_only() {
    // The Llama fixture with a template that raises on roles that do not alternate.
    let dir = std::env::temp_dir().join(format!("trident-chat-strict-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let llama = trident_testing::fixture_dir("llama-tiny");
    for file in [
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
    ] {
        std::fs::copy(llama.join(file), dir.join(file)).unwrap();
    }
    std::fs::copy(
        trident_testing::fixture_dir("chat/strict-roles").join("tokenizer_config.json"),
        dir.join("tokenizer_config.json"),
    )
    .unwrap();
    let model = dir.display().to_string();
    let good = json!([{"role": "user", "content": "Hi"}]);
    let bad = json!([{"role": "user", "content": "Hi"}, {"role": "user", "content": "Hi"}]);
    let lines = format!("{good}\n{bad}\n");
    let out = generate_chat(&model, &["--format", "jsonl"], lines.as_bytes());
    assert_eq!(out.status.code(), Some(1));
    let rows: Vec<Value> = String::from_utf8(out.stdout.clone())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(rows[0]["result"][0]["generated_text"].is_string());
    let error = rows[1]["error"].as_str().unwrap();
    assert!(
        error.contains("Conversation roles must alternate user/assistant/user/assistant/..."),
        "{error}"
    );
    // In a chat, the refused message is dropped and the conversation goes on.
    let out = chat_with(&model, "Hi\n/system Be brief.\nHi\n");
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8(out.stdout.clone()).unwrap();
    assert_eq!(text.lines().count(), 2, "{text}");
    let e = stderr(&out);
    assert!(
        e.contains("line 3") && e.contains("Conversation roles must alternate"),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn chat_with(model: &str, lines: &str) -> Output {
    let new = NEW.to_string();
    trident(
        &[
            "chat",
            "--model",
            model,
            "--device",
            "cpu",
            "--max-new-tokens",
            &new,
        ],
        lines.as_bytes(),
    )
}

#[test]
fn a_model_without_a_chat_template_is_a_clear_error() {
    let gpt2 = trident_testing::fixture_dir("gpt2-tiny")
        .display()
        .to_string();
    let conversation = json!([{"role": "user", "content": "Hi"}]).to_string();
    for out in [
        generate_chat(&gpt2, &[&conversation], b""),
        chat_with(&gpt2, "Hi\n"),
    ] {
        assert_eq!(out.status.code(), Some(2));
        let e = stderr(&out);
        assert!(
            e.contains("no chat template")
                && e.contains("chat_template.jinja")
                && e.contains("tokenizer_config.json"),
            "{e}"
        );
    }
}
