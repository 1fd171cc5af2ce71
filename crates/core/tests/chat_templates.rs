//! Chat templates against transformers' `apply_chat_template` (weights/chat/reference.json,
//! written by scripts/fixtures_chat.py): the rendered text byte for byte, the message of a
//! template's `raise_exception`, and, on weights/llama-tiny, the prompt's ids (one BOS, although
//! the template writes one and the tokenizer adds one).

use serde_json::Value;
use trident_core::chat::ChatTemplate;
use trident_core::{ModelFiles, TextEncoder};
use trident_testing::{fixture_dir, reference};

fn files(dir: &str) -> ModelFiles {
    ModelFiles::local(fixture_dir(dir)).unwrap()
}

fn cases() -> Vec<Value> {
    reference("chat").unwrap()["cases"]
        .as_array()
        .unwrap()
        .clone()
}

/// The date `strftime_now(format)` writes now, as the reference's `{DATE}`.
fn today(template: &ChatTemplate, format: &str) -> String {
    let probe = ChatTemplate::new(format!("{{{{ strftime_now({format:?}) }}}}"), None, None)
        .unwrap()
        .render::<Value>(&[], false)
        .unwrap();
    assert!(!probe.is_empty(), "{}", template.origin());
    probe
}

#[test]
fn rendering_equals_transformers_apply_chat_template() {
    let cases = cases();
    assert!(cases.len() >= 10);
    let (mut rendered, mut refused, mut dated) = (0, 0, 0);
    for case in &cases {
        let dir = case["template"].as_str().unwrap();
        let template = ChatTemplate::from_files(&files(dir)).unwrap();
        let messages = case["messages"].as_array().unwrap();
        let generation = case["add_generation_prompt"].as_bool().unwrap();
        let result = template.render(messages, generation);
        let what = format!("{dir} {messages:?} add_generation_prompt={generation}");
        if let Some(error) = case.get("error") {
            let e = result.expect_err(&what).to_string();
            assert!(
                e.ends_with(&format!(
                    "refused the messages: {}",
                    error.as_str().unwrap()
                )),
                "{what}: {e}"
            );
            refused += 1;
            continue;
        }
        let mut text = result.expect(&what);
        if let Some(format) = case.get("date_format") {
            let date = today(&template, format.as_str().unwrap());
            assert!(text.contains(&date), "{what}: no {date} in {text}");
            text = text.replace(&date, "{DATE}");
            dated += 1;
        }
        assert_eq!(text, case["rendered"].as_str().unwrap(), "{what}");
        rendered += 1;
    }
    assert!(rendered >= 6 && refused >= 2 && dated >= 2);
}

#[test]
fn the_llama_prompt_has_the_ids_transformers_gives_it_with_one_bos() {
    let llama = files("llama-tiny");
    let template = ChatTemplate::from_files(&llama).unwrap();
    let tokenizer = TextEncoder::from_files(&llama).unwrap();
    assert_eq!(template.bos_token(), Some("<|begin_of_text|>"));
    assert_eq!(template.eos_token(), Some("<|end_of_text|>"));
    let mut checked = 0;
    for case in cases().iter().filter(|c| c["template"] == "llama-tiny") {
        let messages = case["messages"].as_array().unwrap();
        let prompt = if case["add_generation_prompt"] == true {
            template.prompt(messages, &tokenizer).unwrap()
        } else {
            let text = template.render(messages, false).unwrap();
            template.without_doubled_bos(text, &tokenizer)
        };
        assert!(!prompt.starts_with("<|begin_of_text|>"), "{prompt}");
        let ids = tokenizer.encode(&prompt).unwrap().ids;
        let expected: Vec<i64> = case["input_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect();
        assert_eq!(ids, expected, "{messages:?}");
        assert_eq!(ids.iter().filter(|&&id| id == 1000).count(), 1);
        checked += 1;
    }
    assert_eq!(checked, 4);
}

#[test]
fn the_template_file_and_the_list_form_are_found_and_their_absence_is_named() {
    // chat_template.jinja beside a tokenizer_config.json without a template.
    let jinja = ChatTemplate::from_files(&files("chat/tools-date")).unwrap();
    assert!(jinja.origin().ends_with("chat_template.jinja"), "{jinja:?}");
    // The list of named templates: "default".
    let named = ChatTemplate::from_files(&files("chat/named-templates")).unwrap();
    let out = named
        .render(&[trident_core::chat::Message::new("user", "hi")], true)
        .unwrap();
    assert!(out.starts_with("<|im_start|>system\n"), "{out}");
    // AddedToken objects.
    let strict = ChatTemplate::from_files(&files("chat/strict-roles")).unwrap();
    assert_eq!(strict.bos_token(), Some("<|begin_of_text|>"));
    // No template: an error that names where it looked.
    let e = ChatTemplate::from_files(&files("gpt2-tiny"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("no chat template")
            && e.contains("chat_template.jinja")
            && e.contains("tokenizer_config.json"),
        "{e}"
    );
    assert!(ChatTemplate::find(&files("gpt2-tiny")).unwrap().is_none());
}
