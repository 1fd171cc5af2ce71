//! `trident chat`: a conversation with an instruction-tuned model in the terminal, and the
//! conversations `trident generate --chat` reads.
//!
//! Each user message is added to the conversation, the conversation is rendered with the
//! checkpoint's chat template (core's `ChatTemplate`, with the generation prompt), and the
//! model's answer is streamed as it is generated. Generation ends at any of the checkpoint's
//! end-of-sequence ids or at a stop string; the answer (without the template's text around it,
//! cut before a stop string) is printed and kept as the assistant's message.
//!
//! At a terminal: line editing and history (rustyline), `/reset`, `/system TEXT`, `/exit`;
//! Ctrl-C during an answer stops that answer (what was shown is kept), Ctrl-C or Ctrl-D at
//! the prompt ends the program. Otherwise (stdin a pipe or a file): one user message per line
//! in, one answer per line out, line breaks inside an answer written as `\n`.

use super::common::ModelArgs;
use super::generation_args::GenerationArgs;
use super::io::{IoArgs, Item};
use anyhow::Context;
use clap::Args;
use serde_json::Value;
use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use trident_core::causal::{GenerateOptions, Piece, TextGenerator};
use trident_core::chat::{before_stop, ChatTemplate, Message, StopFilter};
use trident_core::generation::GenerationConfig;

/// Default model of `trident chat`.
pub const CHAT_MODEL: &str = "HuggingFaceTB/SmolLM2-360M-Instruct";

/// What `/help` prints.
const COMMANDS: &str = "/reset        forget the conversation (the system message stays)
/system TEXT  set the system message (/system alone removes it) and start over
/exit         end (Ctrl-D or Ctrl-C at the prompt too)
/help         this list
Ctrl-C while the model answers stops the answer.";

/// Options of `trident chat`.
#[derive(Args, Debug)]
#[command(after_help = "Examples:
  trident chat
  trident chat --model Qwen/Qwen2.5-0.5B-Instruct --system \"Answer in French.\"
  trident chat --temperature 0.7 --top-p 0.9 --max-new-tokens 512
  printf 'Hello!\\nWhat is 2+2?\\n' | trident chat --max-new-tokens 40

Commands at the prompt:
/reset        forget the conversation (the system message stays)
/system TEXT  set the system message (/system alone removes it) and start over
/exit         end (Ctrl-D or Ctrl-C at the prompt too)
Ctrl-C while the model answers stops that answer.

When stdin is not a terminal, each line is a user message (or a command) and each answer is
printed on one line, its line breaks written as \\n. Search is greedy unless sampling is asked
for; generation ends at any end-of-sequence id of the model or at a --stop string.

Default model (without --model): HuggingFaceTB/SmolLM2-360M-Instruct")]
pub struct ChatArgs {
    /// The system message the conversation starts with (`/system TEXT` changes it).
    #[arg(long, value_name = "TEXT")]
    system: Option<String>,
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    generation: GenerationArgs,
}

/// A line typed at the prompt.
#[derive(Debug, PartialEq, Eq)]
enum Line {
    /// A user message.
    Say(String),
    /// `/reset`.
    Reset,
    /// `/system TEXT` (`None`: `/system` alone).
    System(Option<String>),
    /// `/exit` (or `/quit`, `/bye`).
    Exit,
    /// `/help` (or `/?`).
    Help,
    /// A `/word` that is no command.
    Unknown(String),
    /// Nothing but spaces.
    Blank,
}

impl Line {
    fn parse(line: &str) -> Line {
        let line = line.strip_suffix('\r').unwrap_or(line);
        let trimmed = line.trim();
        if trimmed.is_empty() {
            return Line::Blank;
        }
        let Some(command) = trimmed.strip_prefix('/') else {
            return Line::Say(line.to_string());
        };
        let (word, rest) = match command.split_once(char::is_whitespace) {
            Some((w, r)) => (w, r.trim()),
            None => (command, ""),
        };
        match word {
            "reset" | "clear" => Line::Reset,
            "system" => Line::System((!rest.is_empty()).then(|| rest.to_string())),
            "exit" | "quit" | "bye" => Line::Exit,
            "help" | "?" => Line::Help,
            _ => Line::Unknown(word.to_string()),
        }
    }
}

/// The conversation so far: the system message and the user/assistant turns.
#[derive(Debug, Default)]
struct Conversation {
    system: Option<String>,
    turns: Vec<Message>,
}

impl Conversation {
    /// The messages a template renders: the system message first.
    fn messages(&self) -> Vec<Message> {
        self.system
            .iter()
            .map(|s| Message::new("system", s.as_str()))
            .chain(self.turns.iter().cloned())
            .collect()
    }

    /// Forget the oldest exchange (a user message and the answers after it); false when only
    /// the last message is left.
    fn forget_oldest(&mut self) -> bool {
        if self.turns.len() <= 1 {
            return false;
        }
        let next_user = self
            .turns
            .iter()
            .skip(1)
            .position(|m| m.role == "user")
            .map_or(self.turns.len() - 1, |i| i + 1);
        self.turns.drain(..next_user);
        true
    }
}

/// Set by SIGINT while an answer is being generated.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// The message generation stops with when Ctrl-C interrupts it.
const STOPPED: &str = "stopped by Ctrl-C";

/// While it lives, Ctrl-C (SIGINT) sets [`INTERRUPTED`] instead of ending the program; the
/// previous handling comes back when it is dropped. (At the prompt, rustyline reads Ctrl-C
/// as a key, so this matters only while the model answers.)
struct CatchCtrlC {
    #[cfg(unix)]
    previous: libc::sigaction,
}

#[cfg(unix)]
extern "C" fn on_sigint(_: libc::c_int) {
    // An atomic store is async-signal-safe.
    INTERRUPTED.store(true, Ordering::SeqCst);
}

impl CatchCtrlC {
    fn new() -> Self {
        INTERRUPTED.store(false, Ordering::SeqCst);
        #[cfg(unix)]
        // SAFETY: sigaction with a zeroed, then filled struct; the handler only stores to an
        // atomic.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_sigint as extern "C" fn(libc::c_int) as libc::sighandler_t;
            libc::sigemptyset(&mut action.sa_mask);
            let mut previous: libc::sigaction = std::mem::zeroed();
            libc::sigaction(libc::SIGINT, &action, &mut previous);
            CatchCtrlC { previous }
        }
        #[cfg(not(unix))]
        CatchCtrlC {}
    }
}

impl Drop for CatchCtrlC {
    fn drop(&mut self) {
        #[cfg(unix)]
        // SAFETY: restores the disposition saved in `new`.
        unsafe {
            libc::sigaction(libc::SIGINT, &self.previous, std::ptr::null_mut());
        }
    }
}

/// A model with its chat template and the call's settings.
struct Chat {
    generator: TextGenerator,
    template: ChatTemplate,
    options: GenerateOptions,
    stops: Vec<String>,
    /// The longest prompt, in tokens, that leaves room for the answer.
    room: usize,
}

/// An answer, whole or stopped by Ctrl-C.
struct Answer {
    text: String,
    interrupted: bool,
}

impl Chat {
    /// Answer `conversation` (whose last message is the user's), passing the text to `show`
    /// as it is generated. Exchanges too old to fit the context are forgotten first (`note`
    /// says so).
    fn answer(
        &self,
        conversation: &mut Conversation,
        show: &mut dyn FnMut(&str) -> std::io::Result<()>,
        note: &mut dyn FnMut(&str),
    ) -> anyhow::Result<Answer> {
        let prompt = loop {
            let prompt = self
                .template
                .prompt(&conversation.messages(), self.generator.tokenizer())?;
            let tokens = self.generator.tokenizer().encode(&prompt)?.len();
            if tokens <= self.room || !conversation.forget_oldest() {
                break prompt;
            }
            note(&format!(
                "the conversation outgrew the model's context of {} tokens: its oldest \
                 exchange is forgotten",
                self.generator.context()
            ));
        };
        let mut filter = StopFilter::default();
        let mut shown = String::new();
        let mut on_piece = |piece: Piece| -> trident_core::Result<()> {
            if INTERRUPTED.load(Ordering::SeqCst) {
                return Err(trident_core::Error::Input(STOPPED.into()));
            }
            let text = filter.push(piece.text, &self.stops);
            if !text.is_empty() {
                show(&text).map_err(|e| trident_core::Error::io("stdout", e))?;
                shown.push_str(&text);
            }
            Ok(())
        };
        let outcome =
            self.generator
                .run_streaming(&[prompt.as_str()], &self.options, &mut on_piece);
        match outcome {
            Ok(results) => {
                let generated = results
                    .into_iter()
                    .next()
                    .and_then(|r| r.into_iter().next())
                    .map(|g| g.generated_text)
                    .unwrap_or_default();
                let text = before_stop(&generated, 0, &self.stops);
                // What the stop filter still held back.
                if let Some(rest) = text.strip_prefix(shown.as_str()) {
                    show(rest)?;
                }
                Ok(Answer {
                    text,
                    interrupted: false,
                })
            }
            Err(_) if INTERRUPTED.load(Ordering::SeqCst) => Ok(Answer {
                text: shown,
                interrupted: true,
            }),
            Err(e) => Err(e.into()),
        }
    }
}

/// Run `trident chat`.
pub fn run(args: ChatArgs) -> anyhow::Result<ExitCode> {
    let files = args.model.files(CHAT_MODEL)?;
    let template = ChatTemplate::from_files(&files)?;
    let generation = args.generation.options();
    if generation.num_return_sequences.is_some_and(|n| n > 1) {
        anyhow::bail!("--num-return-sequences: a chat has one answer per message");
    }
    let options = GenerateOptions {
        batch_size: 1,
        generation,
        return_full_text: false,
        show_probs: None,
    };
    let generator = trident::generator(&files, &args.model.load_options())?;
    let settings: GenerationConfig = generator.settings(&options)?;
    let room = generator.max_prompt_tokens(&settings)?;
    if args.generation.show(&settings)? {
        return Ok(ExitCode::SUCCESS);
    }
    args.generation.warn_unused(&settings);
    let chat = Chat {
        stops: settings.stop_strings.clone().unwrap_or_default(),
        generator,
        template,
        options,
        room,
    };
    let conversation = Conversation {
        system: args.system.clone(),
        turns: Vec::new(),
    };
    if std::io::stdin().is_terminal() {
        interactive(&chat, conversation, &files.name())
    } else {
        piped(&chat, conversation)
    }
}

/// The conversation at a terminal.
fn interactive(
    chat: &Chat,
    mut conversation: Conversation,
    model: &str,
) -> anyhow::Result<ExitCode> {
    use rustyline::error::ReadlineError;
    let mut editor = rustyline::DefaultEditor::new().context("cannot set up the terminal")?;
    eprintln!("Chatting with {model}. /help lists the commands; Ctrl-D ends.");
    let mut stdout = std::io::stdout();
    loop {
        let line = match editor.readline(">>> ") {
            Ok(line) => line,
            Err(ReadlineError::Interrupted | ReadlineError::Eof) => break,
            Err(e) => return Err(e).context("cannot read the terminal"),
        };
        let _ = editor.add_history_entry(line.as_str());
        match Line::parse(&line) {
            Line::Blank => {}
            Line::Exit => break,
            Line::Help => eprintln!("{COMMANDS}"),
            Line::Unknown(word) => eprintln!("unknown command /{word} (/help lists them)"),
            Line::Reset => {
                conversation.turns.clear();
                eprintln!("(the conversation starts over)");
            }
            Line::System(text) => {
                conversation.turns.clear();
                match &text {
                    Some(_) => eprintln!("(system message set; the conversation starts over)"),
                    None => eprintln!("(no system message; the conversation starts over)"),
                }
                conversation.system = text;
            }
            Line::Say(text) => {
                conversation.turns.push(Message::new("user", text));
                let caught = CatchCtrlC::new();
                let mut show = |s: &str| {
                    stdout.write_all(s.as_bytes())?;
                    stdout.flush()
                };
                let outcome =
                    chat.answer(&mut conversation, &mut show, &mut |n| eprintln!("({n})"));
                drop(caught);
                println!();
                match outcome {
                    Ok(answer) => {
                        if answer.interrupted {
                            eprintln!("(stopped)");
                        }
                        conversation
                            .turns
                            .push(Message::new("assistant", answer.text));
                    }
                    Err(e) => {
                        // The message that failed is not part of the conversation.
                        conversation.turns.pop();
                        eprintln!("error: {}", super::with_flags(&format!("{e:#}")));
                    }
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// An answer on one line: its line breaks written as `\n` (and `\r`).
fn one_line(text: &str) -> String {
    text.replace('\r', "\\r").replace('\n', "\\n")
}

/// The conversation from a pipe: a user message (or a command) per line, an answer per line.
fn piped(chat: &Chat, mut conversation: Conversation) -> anyhow::Result<ExitCode> {
    let stdin = std::io::stdin();
    let mut input = stdin.lock();
    let mut stdout = std::io::stdout().lock();
    let mut failed = 0;
    let mut raw = Vec::new();
    for n in 1.. {
        raw.clear();
        if input
            .read_until(b'\n', &mut raw)
            .context("cannot read stdin")?
            == 0
        {
            break;
        }
        let raw = raw.strip_suffix(b"\n").unwrap_or(&raw);
        let line = match std::str::from_utf8(raw) {
            Ok(line) => line,
            Err(e) => {
                eprintln!("error: line {n}: not valid UTF-8 ({e})");
                writeln!(stdout)?;
                failed += 1;
                continue;
            }
        };
        match Line::parse(line) {
            Line::Blank | Line::Help => {}
            Line::Exit => break,
            Line::Unknown(word) => eprintln!("warning: line {n}: unknown command /{word}"),
            Line::Reset => conversation.turns.clear(),
            Line::System(text) => {
                conversation.turns.clear();
                conversation.system = text;
            }
            Line::Say(text) => {
                conversation.turns.push(Message::new("user", text));
                let mut show = |s: &str| {
                    stdout.write_all(one_line(s).as_bytes())?;
                    stdout.flush()
                };
                let outcome = chat.answer(&mut conversation, &mut show, &mut |note| {
                    if !super::report::quiet() {
                        eprintln!("warning: line {n}: {note}");
                    }
                });
                writeln!(stdout)?;
                stdout.flush()?;
                match outcome {
                    Ok(answer) => conversation
                        .turns
                        .push(Message::new("assistant", answer.text)),
                    Err(e) => {
                        conversation.turns.pop();
                        eprintln!("error: line {n}: {}", super::with_flags(&format!("{e:#}")));
                        failed += 1;
                    }
                }
            }
        }
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// One conversation of `generate --chat`: its messages, or why they cannot be used.
fn conversation(value: Value) -> Result<Vec<Value>, String> {
    const SHAPE: &str =
        "expected an array of messages [{\"role\": …, \"content\": …}] or {\"messages\": [...]}";
    let messages = match value {
        Value::Array(messages) => messages,
        Value::Object(mut object) => match object.remove("messages") {
            Some(Value::Array(messages)) => messages,
            _ => return Err(SHAPE.into()),
        },
        _ => return Err(SHAPE.into()),
    };
    if messages.is_empty() {
        return Err("the conversation has no messages".into());
    }
    for (i, m) in messages.iter().enumerate() {
        if !m.get("role").is_some_and(Value::is_string) {
            return Err(format!(
                "message {} has no string \"role\" ({SHAPE})",
                i + 1
            ));
        }
    }
    Ok(messages)
}

/// The id a `{"id": …, "messages": …}` line carries.
fn carried_id(value: &Value) -> Option<Value> {
    value.as_object()?.get("id").cloned()
}

/// Whether `value` is a list of conversations (rather than one conversation's messages).
fn is_list_of_conversations(value: &Value) -> bool {
    value.as_array().is_some_and(|items| {
        items
            .first()
            .is_some_and(|first| first.is_array() || first.get("messages").is_some())
    })
}

/// The conversations `generate --chat` is given, each as an [`Item`] whose text is its prompt
/// (rendered with `template`, generation prompt added, one BOS for `generator`'s tokenizer).
///
/// Inputs: each argument is one conversation (a messages array, or `{"messages": [...]}`);
/// `--input FILE` or stdin holds one conversation as JSON (which may span lines), a JSON array
/// of conversations, or JSON Lines with one conversation per line (an array of messages, or
/// `{"messages": [...], "id": …}`, the id carried to the output).
pub fn conversations(
    io: &IoArgs,
    template: &ChatTemplate,
    generator: &TextGenerator,
) -> anyhow::Result<Vec<Item>> {
    let mut parsed: Vec<(Value, String, Result<Value, String>)> = Vec::new();
    if !io.texts.is_empty() {
        anyhow::ensure!(
            io.input.is_none(),
            "give conversations as arguments or with --input, not both"
        );
        for (i, text) in io.texts.iter().enumerate() {
            let value =
                serde_json::from_str::<Value>(text).map_err(|e| format!("malformed JSON ({e})"));
            parsed.push((Value::from(i + 1), format!("argument {}", i + 1), value));
        }
    } else {
        let bytes = match &io.input {
            Some(path) if path.as_os_str() != "-" => std::fs::read(path)
                .with_context(|| format!("cannot read --input {}", path.display()))?,
            _ => {
                let stdin = std::io::stdin();
                if stdin.is_terminal() {
                    eprintln!(
                        "reading conversations from stdin (JSON: [{{\"role\": …, \"content\": …}}], \
                         or one per line); Ctrl-D to finish"
                    );
                }
                let mut bytes = Vec::new();
                std::io::Read::read_to_end(&mut stdin.lock(), &mut bytes)
                    .context("cannot read stdin")?;
                bytes
            }
        };
        let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&bytes);
        let text = std::str::from_utf8(bytes).map_err(|e| {
            anyhow::anyhow!("the conversations are not valid UTF-8 ({e}); re-encode them as UTF-8")
        })?;
        match serde_json::from_str::<Value>(text) {
            // The whole input is one JSON value: a conversation, or a list of them.
            Ok(value) if is_list_of_conversations(&value) => {
                if let Value::Array(items) = value {
                    for (i, item) in items.into_iter().enumerate() {
                        let id = carried_id(&item).unwrap_or(Value::from(i + 1));
                        parsed.push((id, format!("conversation {}", i + 1), Ok(item)));
                    }
                }
            }
            Ok(value) => {
                let id = carried_id(&value).unwrap_or(Value::from(1));
                parsed.push((id, "the input".into(), Ok(value)));
            }
            // JSON Lines: one conversation per line.
            Err(_) => {
                let body = text.strip_suffix('\n').unwrap_or(text);
                for (i, line) in body.split('\n').enumerate() {
                    let line = line.strip_suffix('\r').unwrap_or(line);
                    let value = if line.trim().is_empty() {
                        Err("empty line: JSON Lines input needs one conversation per line".into())
                    } else {
                        serde_json::from_str::<Value>(line)
                            .map_err(|e| format!("malformed JSON ({e})"))
                    };
                    let id = value
                        .as_ref()
                        .ok()
                        .and_then(carried_id)
                        .unwrap_or(Value::from(i + 1));
                    parsed.push((id, format!("line {}", i + 1), value));
                }
            }
        }
    }
    Ok(parsed
        .into_iter()
        .map(|(id, origin, value)| {
            let text = value.and_then(conversation).and_then(|messages| {
                template
                    .prompt(&messages, generator.tokenizer())
                    .map_err(|e| e.to_string())
            });
            Item { id, origin, text }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn lines_are_messages_or_commands() {
        assert_eq!(
            Line::parse("Hello there\r"),
            Line::Say("Hello there".into())
        );
        assert_eq!(Line::parse("  "), Line::Blank);
        assert_eq!(Line::parse("/reset"), Line::Reset);
        assert_eq!(
            Line::parse("/system  Be brief. "),
            Line::System(Some("Be brief.".into()))
        );
        assert_eq!(Line::parse("/system"), Line::System(None));
        assert_eq!(Line::parse(" /exit "), Line::Exit);
        assert_eq!(
            Line::parse("/frobnicate x"),
            Line::Unknown("frobnicate".into())
        );
    }

    #[test]
    fn the_oldest_exchange_is_forgotten_first_and_the_last_message_never() {
        let mut c = Conversation {
            system: Some("s".into()),
            turns: vec![
                Message::new("user", "1"),
                Message::new("assistant", "a1"),
                Message::new("user", "2"),
                Message::new("assistant", "a2"),
                Message::new("user", "3"),
            ],
        };
        assert!(c.forget_oldest());
        assert_eq!(c.messages()[0], Message::new("system", "s"));
        assert_eq!(c.turns[0], Message::new("user", "2"));
        assert!(c.forget_oldest());
        assert_eq!(c.turns, vec![Message::new("user", "3")]);
        assert!(!c.forget_oldest());
    }

    #[test]
    fn conversations_are_arrays_of_messages_or_objects_with_messages() {
        let m = json!([{"role": "user", "content": "hi"}]);
        assert_eq!(conversation(m.clone()).unwrap().len(), 1);
        assert_eq!(
            conversation(json!({"messages": m, "id": 3})).unwrap().len(),
            1
        );
        assert!(conversation(json!([])).unwrap_err().contains("no messages"));
        assert!(conversation(json!([{"content": "x"}]))
            .unwrap_err()
            .contains("role"));
        assert!(conversation(json!("text")).is_err());
        assert!(is_list_of_conversations(&json!([m.clone()])));
        assert!(is_list_of_conversations(&json!([{"messages": m}])));
        assert!(!is_list_of_conversations(&m));
    }

    #[test]
    fn answers_are_written_on_one_line() {
        assert_eq!(one_line("a\nb\r\n"), "a\\nb\\r\\n");
    }
}
