//! Input and output shared by every text command.
//!
//! Input: texts as arguments, `--input FILE`, or stdin. The format is decided per file, never
//! per line: a file named `*.jsonl` or `*.ndjson` (or `--input-format jsonl`) holds JSON Lines,
//! objects with a `text` field and an optional `id`; anything else (stdin included) is plain
//! text, one text per line, whatever the line starts with. A line that is not valid UTF-8 or
//! (in JSON Lines) not a valid object becomes an error for that line only; the rest is still
//! processed.
//!
//! Output: `--format text|json|jsonl` to stdout or `--output FILE`. `json` prints one array
//! with one element per input (the pipeline's output, `null` for a failed input), as
//! transformers' pipelines return for a list; `jsonl` prints `{"id", "result"}` per line.

use anyhow::Context;
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::Value;
use std::collections::HashSet;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Human-readable lines.
    Text,
    /// One JSON array, one element per input (transformers' pipeline output).
    Json,
    /// One JSON object per input and line: {"id": …, "result": …}.
    Jsonl,
}

/// How `--input` (or stdin) is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum InputFormat {
    /// JSON Lines for a file named *.jsonl or *.ndjson, plain text otherwise (stdin included).
    #[default]
    Auto,
    /// One text per line, taken as it is.
    Text,
    /// One JSON object per line with a "text" field and an optional "id".
    Jsonl,
}

/// Where texts come from and where results go.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Input and output")]
pub struct IoArgs {
    /// Texts to process. Without texts or --input, lines are read from stdin.
    #[arg(value_name = "TEXT")]
    pub texts: Vec<String>,

    /// Read texts from FILE ("-" for stdin): one text per line, or, for a file named *.jsonl
    /// or *.ndjson, JSON Lines with a "text" field and an optional "id" carried to the output.
    #[arg(short, long, value_name = "FILE")]
    pub input: Option<PathBuf>,

    /// How to read --input or stdin: auto (JSON Lines for *.jsonl / *.ndjson files, plain text
    /// otherwise, stdin included), text (one text per line, even lines that look like JSON) or
    /// jsonl.
    #[arg(long, value_enum, default_value_t = InputFormat::Auto, value_name = "FORMAT")]
    pub input_format: InputFormat,

    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Format::Text)]
    pub format: Format,

    /// Write results to FILE instead of stdout.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,

    /// Continue an interrupted run: keep the results already in --output (JSON Lines) and
    /// process only the inputs whose ids are not there yet, appending to it. A last line cut
    /// off by the interruption is dropped and its input processed again. Needs --output and
    /// --format jsonl; inputs are matched by their "id" (JSON Lines input) or line number.
    #[arg(long, requires = "output")]
    pub resume: bool,

    /// Document tasks (summarize, translate) set this: plain-text input (a file or stdin) is
    /// one document, paragraphs and all, instead of one text per line.
    #[arg(skip)]
    pub documents: bool,

    /// The command's text results are blocks under a heading (NER), set by the command.
    #[arg(skip)]
    pub blocks: bool,
}

/// One input text, or why it could not be read.
#[derive(Debug, Clone)]
pub struct Item {
    /// The id from JSONL, else the 1-based position.
    pub id: Value,
    /// Where it came from, for messages (`line 3`, `argument 2`).
    pub origin: String,
    /// The text, or the reason it is unusable.
    pub text: Result<String, String>,
}

impl IoArgs {
    /// Whether the input is read as JSON Lines: by `--input-format`, else by the file name.
    fn jsonl(&self) -> bool {
        match self.input_format {
            InputFormat::Jsonl => true,
            InputFormat::Text => false,
            InputFormat::Auto => self.input.as_ref().is_some_and(|p| {
                p.extension().and_then(|e| e.to_str()).is_some_and(|e| {
                    e.eq_ignore_ascii_case("jsonl") || e.eq_ignore_ascii_case("ndjson")
                })
            }),
        }
    }
}

fn parse_line(raw: &[u8], n: usize, jsonl: bool) -> Item {
    let origin = format!("line {n}");
    let id = Value::from(n);
    let text = match std::str::from_utf8(raw) {
        Err(e) => {
            return Item {
                id,
                origin,
                text: Err(format!(
                    "not valid UTF-8 ({e}); re-encode the file as UTF-8"
                )),
            };
        }
        Ok(s) => s.strip_suffix('\r').unwrap_or(s),
    };
    if jsonl {
        if text.trim().is_empty() {
            return Item {
                id,
                origin,
                text: Err("empty line: JSON Lines input needs one object per line".into()),
            };
        }
        return match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(obj)) => {
                let id = obj.get("id").cloned().unwrap_or(id);
                match obj.get("text") {
                    Some(Value::String(t)) => Item {
                        id,
                        origin,
                        text: not_blank(t.clone()),
                    },
                    _ => Item {
                        id,
                        origin,
                        text: Err("JSON object without a string \"text\" field".into()),
                    },
                }
            }
            Ok(_) => Item {
                id,
                origin,
                text: Err("expected a JSON object with a \"text\" field".into()),
            },
            Err(e) => Item {
                id,
                origin,
                text: Err(format!(
                    "malformed JSON ({e}); for plain text with lines like this, use --input-format text"
                )),
            },
        };
    }
    Item {
        id,
        origin,
        text: not_blank(text.to_string()),
    }
}

/// The one rule for blank inputs, for every command: an empty or whitespace-only text is an
/// input error (its row stays in the output), not something to classify, embed or continue.
fn not_blank(text: String) -> Result<String, String> {
    if text.trim().is_empty() {
        Err("the text is empty".into())
    } else {
        Ok(text)
    }
}

/// Read the inputs the user gave, in order.
pub fn read_inputs(args: &IoArgs) -> anyhow::Result<Vec<Item>> {
    let items = read_all_inputs(args)?;
    if !args.resume {
        return Ok(items);
    }
    anyhow::ensure!(
        args.format == Format::Jsonl,
        "--resume continues a JSON Lines --output: add --format jsonl"
    );
    let done = match &args.output {
        Some(path) => written_ids(path)?,
        None => HashSet::new(),
    };
    let total = items.len();
    let left: Vec<Item> = items
        .into_iter()
        .filter(|item| !done.contains(&item.id.to_string()))
        .collect();
    if total > left.len() {
        eprintln!(
            "--resume: {} of {total} inputs are already in the output; processing the other {}",
            total - left.len(),
            left.len()
        );
    }
    Ok(left)
}

/// The ids (as JSON text) of the whole lines of a JSON Lines output written before; an
/// absent file has none.
fn written_ids(path: &Path) -> anyhow::Result<HashSet<String>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashSet::new()),
        Err(e) => {
            return Err(e).with_context(|| format!("cannot read --output {}", path.display()))
        }
    };
    let whole = bytes
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(&bytes[..0], |end| &bytes[..end]);
    let mut ids = HashSet::new();
    for (n, line) in whole.split(|&b| b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let value: Value = serde_json::from_slice(line).with_context(|| {
            format!(
                "--resume: line {} of {} is not JSON Lines output of trident; resume only a \
                 file written with --format jsonl",
                n + 1,
                path.display()
            )
        })?;
        let id = value.get("id").ok_or_else(|| {
            anyhow::anyhow!(
                "--resume: line {} of {} has no \"id\"",
                n + 1,
                path.display()
            )
        })?;
        ids.insert(id.to_string());
    }
    Ok(ids)
}

/// Open `--output` (or stdout) for writing results: a new file, or with `--resume` the old one
/// with its cut-off last line removed, appended to.
pub fn open_sink(args: &IoArgs) -> anyhow::Result<Box<dyn Write>> {
    let Some(path) = &args.output else {
        return Ok(Box::new(std::io::stdout()));
    };
    if !args.resume {
        let file = std::fs::File::create(path)
            .with_context(|| format!("cannot create --output {}", path.display()))?;
        return Ok(Box::new(std::io::BufWriter::new(file)));
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open --output {} to resume", path.display()))?;
    let bytes =
        std::fs::read(path).with_context(|| format!("cannot read --output {}", path.display()))?;
    let whole = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    if whole < bytes.len() {
        file.set_len(whole as u64)
            .with_context(|| format!("cannot cut the torn last line of {}", path.display()))?;
    }
    Ok(Box::new(std::io::BufWriter::new(file)))
}

fn read_all_inputs(args: &IoArgs) -> anyhow::Result<Vec<Item>> {
    if !args.texts.is_empty() {
        anyhow::ensure!(
            args.input.is_none(),
            "give texts as arguments or with --input, not both"
        );
        return Ok(args
            .texts
            .iter()
            .enumerate()
            .map(|(i, t)| Item {
                id: Value::from(i + 1),
                origin: format!("argument {}", i + 1),
                text: not_blank(t.clone()),
            })
            .collect());
    }
    if let (Some(input), Some(output)) = (&args.input, &args.output) {
        anyhow::ensure!(
            input.as_os_str() == "-" || !same_file(input, output),
            "--output {} is the --input file: writing results would overwrite the texts; choose \
             another output file",
            output.display()
        );
    }
    let mut bytes = Vec::new();
    match &args.input {
        Some(path) if path.as_os_str() != "-" => {
            bytes = std::fs::read(path)
                .with_context(|| format!("cannot read --input {}", path.display()))?;
        }
        _ => {
            let stdin = std::io::stdin();
            // Someone at a terminal would otherwise wait at a silent prompt.
            if let Some(hint) = stdin_hint(std::io::IsTerminal::is_terminal(&stdin)) {
                eprintln!("{hint}");
            }
            stdin
                .lock()
                .read_to_end(&mut bytes)
                .context("cannot read stdin")?;
        }
    }
    // A UTF-8 byte order mark (Windows editors write one) is not part of the first text.
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&bytes);
    // Text never holds a NUL byte; a file that does is binary: one error, not one per line.
    if let Some(at) = bytes.iter().take(1 << 16).position(|&b| b == 0) {
        let source = match &args.input {
            Some(p) if p.as_os_str() != "-" => format!("--input {}", p.display()),
            _ => "stdin".to_string(),
        };
        anyhow::bail!(
            "{source} looks binary (a NUL byte at offset {at}): give UTF-8 text, one text per \
             line, or JSON Lines"
        );
    }
    // The newline that ends the last line does not start another one.
    let body = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    if body.is_empty() {
        return Ok(Vec::new());
    }
    let jsonl = args.jsonl();
    if args.documents && !jsonl {
        let origin = match &args.input {
            Some(p) if p.as_os_str() != "-" => p.display().to_string(),
            _ => "stdin".to_string(),
        };
        let text = std::str::from_utf8(body)
            .map(|t| t.replace("\r\n", "\n"))
            .map_err(|e| format!("not valid UTF-8 ({e}); re-encode the file as UTF-8"))
            .and_then(not_blank);
        return Ok(vec![Item {
            id: Value::from(1),
            origin,
            text,
        }]);
    }
    Ok(body
        .split(|&b| b == b'\n')
        .enumerate()
        .map(|(i, line)| parse_line(line, i + 1, jsonl))
        .collect())
}

/// What to tell a user whose stdin is a terminal, before waiting for it.
fn stdin_hint(terminal: bool) -> Option<&'static str> {
    terminal.then_some(
        "reading texts from stdin, one per line; Ctrl-D to finish (or give texts as \
         arguments, or --input FILE)",
    )
}

/// The summary line: `3 texts (1 failed), 120 tokens, 0.50 s, 240 tokens/s`.
fn summary(texts: usize, failed: usize, tokens: usize, secs: f64) -> String {
    let plural = if texts == 1 { "text" } else { "texts" };
    let failed = if failed > 0 {
        format!(" ({failed} failed)")
    } else {
        String::new()
    };
    let rate = if secs > 0.0 {
        format!(", {:.0} tokens/s", tokens as f64 / secs)
    } else {
        String::new()
    };
    format!("{texts} {plural}{failed}, {tokens} tokens, {secs:.2} s{rate}")
}

/// Whether `a` and `b` name the same existing file.
fn same_file(a: &std::path::Path, b: &std::path::Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// Whether the input came from a file (progress bars are for files).
pub fn from_file(args: &IoArgs) -> bool {
    args.texts.is_empty() && args.input.as_ref().is_some_and(|p| p.as_os_str() != "-")
}

/// One result as each output format shows it.
pub struct Rendered {
    /// The input's element in `json` output (and the `result` of `jsonl`).
    pub value: Value,
    /// What `json` prints instead when this is the only input, so that a single text prints
    /// exactly what transformers' pipeline returns for a single string (which may differ
    /// from its element in a list, e.g. `[{label, score}]` vs `{label, score}`).
    /// `None`: the value itself.
    pub alone: Option<Value>,
    /// The `text` format.
    pub text: String,
    /// In the `text` format, put the input's origin (`argument 2`, `line 17`) on a line of its
    /// own before the result: for results of several lines, so that each block says which
    /// input it belongs to.
    pub heading: bool,
}

/// Writes results in the chosen format and counts failures.
pub struct Output {
    format: Format,
    sink: Box<dyn Write>,
    /// The results of the chunk being processed, written out whole at its end.
    pending: Vec<u8>,
    json: Vec<Value>,
    alone: Option<Value>,
    /// Text results are blocks under a heading (NER), not one row each.
    blocks: bool,
    /// Whether the input is one text argument: only then does `json` print what the
    /// pipeline returns for a single string; file and stdin input always give a list.
    one_argument: bool,
    /// Inputs that failed.
    pub failed: usize,
    /// Inputs that succeeded.
    pub succeeded: usize,
}

impl Output {
    /// Open stdout or `--output`.
    pub fn open(args: &IoArgs) -> anyhow::Result<Self> {
        let sink = open_sink(args)?;
        interrupt::install();
        Ok(Output {
            format: args.format,
            sink,
            pending: Vec::new(),
            json: Vec::new(),
            alone: None,
            one_argument: args.texts.len() == 1,
            blocks: args.blocks,
            failed: 0,
            succeeded: 0,
        })
    }

    /// Record a result.
    pub fn ok(&mut self, item: &Item, result: Rendered) -> anyhow::Result<()> {
        self.succeeded += 1;
        match self.format {
            Format::Text => {
                if result.heading {
                    writeln!(self.pending, "{}:", item.origin)?;
                }
                self.pending.write_all(result.text.as_bytes())?;
                if !result.text.ends_with('\n') {
                    self.pending.write_all(b"\n")?;
                }
            }
            Format::Json => {
                self.alone = Some(result.alone.unwrap_or_else(|| result.value.clone()));
                self.json.push(result.value);
            }
            Format::Jsonl => {
                let line = serde_json::json!({"id": item.id, "result": result.value});
                writeln!(self.pending, "{line}")?;
            }
        }
        Ok(())
    }

    /// Report a failed input on stderr, and keep its row in the output so that outputs line
    /// up with inputs: an empty row in text (under the input's heading where results have
    /// one), `{"id", "error"}` in jsonl, `null` in json.
    pub fn error(&mut self, item: &Item, message: &str) {
        self.failed += 1;
        let message = super::common::with_flags(message);
        eprintln!("error: {}: {message}", item.origin);
        match self.format {
            Format::Json => self.json.push(Value::Null),
            Format::Jsonl => {
                let line = serde_json::json!({"id": item.id, "error": message});
                self.pending
                    .extend_from_slice(format!("{line}\n").as_bytes());
            }
            Format::Text if self.blocks => {
                let block = format!("{}:\n(failed: {message})\n\n", item.origin);
                self.pending.extend_from_slice(block.as_bytes());
            }
            Format::Text => self.pending.push(b'\n'),
        }
    }

    /// Write the finished chunk's results out, whole lines, and flush them: with `--output`,
    /// an interrupted run (Ctrl-C) keeps every chunk finished before it.
    pub fn end_chunk(&mut self) -> anyhow::Result<()> {
        let (sink, pending) = (&mut self.sink, &self.pending);
        interrupt::writing(|| sink.write_all(pending).and_then(|()| sink.flush()))?;
        self.pending.clear();
        Ok(())
    }

    /// Flush; for json, print the array.
    pub fn finish(mut self) -> anyhow::Result<()> {
        self.end_chunk()?;
        if self.format == Format::Json {
            // A single text argument prints what the pipeline returns for a string; anything
            // else (several texts, a file, stdin), one element per input.
            let value = match (self.one_argument, self.alone.take()) {
                (true, Some(alone)) => alone,
                _ => Value::Array(std::mem::take(&mut self.json)),
            };
            writeln!(self.sink, "{}", serde_json::to_string_pretty(&value)?)?;
        }
        self.sink.flush()?;
        Ok(())
    }

    /// The process exit code: 0 when every input succeeded, 1 otherwise.
    pub fn exit_code(&self) -> std::process::ExitCode {
        if self.failed == 0 {
            std::process::ExitCode::SUCCESS
        } else {
            std::process::ExitCode::from(1)
        }
    }
}

/// A progress bar on stderr for file input (drawn only when stderr is a terminal), and the
/// closing one-line summary.
pub struct Progress {
    bar: ProgressBar,
    start: Instant,
    /// Tokens processed, for the summary.
    pub tokens: usize,
}

/// A bar over the pieces of the documents being processed (a long document is many pieces,
/// and the bar over texts would stand still on it). Shown on a terminal, unless `-q`.
pub struct PiecesBar(ProgressBar);

impl PiecesBar {
    /// A bar, hidden until a call has more than one piece.
    pub fn new() -> Self {
        let visible =
            std::io::IsTerminal::is_terminal(&std::io::stderr()) && !super::report::quiet();
        let bar = if visible {
            ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr())
        } else {
            ProgressBar::hidden()
        };
        if let Ok(style) =
            ProgressStyle::with_template("{bar:40} {pos}/{len} pieces [{elapsed_precise} < {eta}]")
        {
            bar.set_style(style);
        }
        PiecesBar(bar)
    }

    /// `done` of `total` pieces of the current call.
    pub fn update(&self, done: usize, total: usize) {
        if total > 1 {
            self.0.set_length(total as u64);
            self.0.set_position(done as u64);
            if done == total {
                self.0.finish_and_clear();
                self.0.reset();
            }
        }
    }
}

impl Progress {
    /// A bar over `len` texts, visible only when `show` and stderr is a terminal.
    pub fn new(len: usize, show: bool) -> Self {
        let bar = if show {
            ProgressBar::with_draw_target(Some(len as u64), ProgressDrawTarget::stderr())
        } else {
            ProgressBar::hidden()
        };
        if let Ok(style) =
            ProgressStyle::with_template("{bar:40} {pos}/{len} texts [{elapsed_precise} < {eta}]")
        {
            bar.set_style(style);
        }
        Progress {
            bar,
            start: Instant::now(),
            tokens: 0,
        }
    }

    /// Count `n` more texts done.
    pub fn inc(&self, n: usize) {
        self.bar.inc(n as u64);
    }

    /// Clear the bar and print `N texts (F failed), T tokens, S s` on stderr.
    pub fn finish(self, succeeded: usize, failed: usize) {
        self.bar.finish_and_clear();
        if super::report::quiet() {
            return;
        }
        eprintln!(
            "{}",
            summary(
                succeeded + failed,
                failed,
                self.tokens,
                self.start.elapsed().as_secs_f64()
            )
        );
    }
}

/// Batches per window of texts sorted by length (see [`process_items`]): enough for texts of
/// similar lengths to meet, few enough that results are written (and flushed) often.
const SORT_WINDOW_BATCHES: usize = 8;

/// The indices of `window`'s readable texts, shortest first (by bytes, a proxy for tokens;
/// ties keep input order).
fn by_length(window: &[Item]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..window.len())
        .filter(|&i| window[i].text.is_ok())
        .collect();
    order.sort_by_key(|&i| window[i].text.as_ref().map_or(0, String::len));
    order
}

/// Run `run` over every readable input in batches of `chunk` texts of similar lengths,
/// writing each result with `render(text, result)` in input order. A batch that fails is
/// retried text by text, so one bad text costs only its own result. `tokens` reports the tokens processed so
/// far, for the summary. Returns the exit code (1 when any input failed).
pub fn process<T>(
    args: &IoArgs,
    chunk: usize,
    run: impl FnMut(&[&str]) -> anyhow::Result<Vec<T>>,
    render: impl Fn(&str, &T) -> Rendered,
    tokens: impl Fn() -> usize,
) -> anyhow::Result<std::process::ExitCode> {
    let items = read_inputs(args)?;
    process_items(args, items, chunk, run, render, tokens)
}

/// [`process`] over `items` already read (texts the command made from its own input format).
pub fn process_items<T>(
    args: &IoArgs,
    items: Vec<Item>,
    chunk: usize,
    mut run: impl FnMut(&[&str]) -> anyhow::Result<Vec<T>>,
    render: impl Fn(&str, &T) -> Rendered,
    tokens: impl Fn() -> usize,
) -> anyhow::Result<std::process::ExitCode> {
    let mut output = Output::open(args)?;
    let mut progress = Progress::new(items.len(), from_file(args));
    // With -v, one text at a time, so that each warning names its input.
    let chunk = if super::report::verbose() {
        1
    } else {
        chunk.max(1)
    };
    // Texts are batched by length within windows of a few batches, so that a batch pads
    // its texts to similar lengths; each window's results are written in input order.
    for window in items.chunks(chunk.saturating_mul(SORT_WINDOW_BATCHES)) {
        let mut results: Vec<Option<Result<T, String>>> =
            std::iter::repeat_with(|| None).take(window.len()).collect();
        for group in by_length(window).chunks(chunk) {
            let texts: Vec<&str> = group
                .iter()
                .map(|&i| window[i].text.as_deref().unwrap_or_default())
                .collect();
            let first = group.first().map_or("", |&i| window[i].origin.as_str());
            let outcome = if group.len() == 1 {
                super::report::with_origin(first, || run(&texts))
            } else {
                run(&texts)
            };
            let done: Vec<Result<T, String>> = match outcome {
                Ok(r) => r.into_iter().map(Ok).collect(),
                // A batch that fails is retried text by text, so one bad text costs only
                // its own result.
                Err(_) if texts.len() > 1 => texts
                    .iter()
                    .map(|t| {
                        run(std::slice::from_ref(t))
                            .map_err(|e| format!("{e:#}"))
                            .and_then(|mut v| v.pop().ok_or_else(|| "no result".to_string()))
                    })
                    .collect(),
                Err(e) => vec![Err(format!("{e:#}"))],
            };
            for (&i, result) in group.iter().zip(done) {
                results[i] = Some(result);
            }
            progress.inc(group.len());
        }
        for (item, result) in window.iter().zip(results) {
            match (&item.text, result) {
                (Err(why), _) => output.error(item, why),
                (Ok(text), Some(Ok(r))) => output.ok(item, render(text, &r))?,
                (Ok(_), Some(Err(why))) => output.error(item, &why),
                (Ok(_), None) => output.error(item, "no result"),
            }
        }
        output.end_chunk()?;
        progress.inc(window.iter().filter(|i| i.text.is_err()).count());
    }
    progress.tokens = tokens();
    let (code, succeeded, failed) = (output.exit_code(), output.succeeded, output.failed);
    output.finish()?;
    progress.finish(succeeded, failed);
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Texts are batched shortest first, ties in input order, unreadable lines left out.
    #[test]
    fn batches_take_texts_by_length() {
        let items: Vec<Item> = [
            &b"a longer text"[..],
            b"short",
            b"caf\xe9",
            b"tiny",
            b"a text",
            b"short",
        ]
        .iter()
        .enumerate()
        .map(|(n, line)| parse_line(line, n + 1, false))
        .collect();
        assert_eq!(by_length(&items), vec![3, 1, 5, 4, 0]);
    }

    #[test]
    fn lines_become_items_with_per_line_errors() {
        let good = parse_line(b"hello world", 1, false);
        assert_eq!(good.text.unwrap(), "hello world");
        let bad = parse_line(b"caf\xe9", 2, false);
        assert!(bad.text.unwrap_err().contains("UTF-8"));
        let json = parse_line(br#"{"id": "a7", "text": "Paris"}"#, 3, true);
        assert_eq!(json.id, Value::from("a7"));
        assert_eq!(json.text.unwrap(), "Paris");
        let broken = parse_line(br#"{"id": 1, "text": "#, 4, true);
        assert!(broken.text.unwrap_err().contains("malformed JSON"));
        let crlf = parse_line(b"line\r", 5, false);
        assert_eq!(crlf.text.unwrap(), "line");
        assert!(parse_line(b"  ", 6, true)
            .text
            .unwrap_err()
            .contains("empty line"));
    }

    #[test]
    fn a_terminal_on_stdin_gets_a_hint_and_a_pipe_does_not() {
        assert!(stdin_hint(true).unwrap().contains("Ctrl-D"));
        assert_eq!(stdin_hint(false), None);
    }

    #[test]
    fn the_summary_line_counts_in_words_and_gives_the_rate() {
        assert_eq!(
            summary(1, 0, 10, 0.5),
            "1 text, 10 tokens, 0.50 s, 20 tokens/s"
        );
        assert_eq!(
            summary(3, 1, 0, 0.0),
            "3 texts (1 failed), 0 tokens, 0.00 s"
        );
    }

    #[test]
    fn plain_text_lines_that_look_like_json_stay_text() {
        let item = parse_line(b"{y}", 1, false);
        assert_eq!(item.text.unwrap(), "{y}");
        let item = parse_line(br#"{"text": "x"}"#, 2, false);
        assert_eq!(item.text.unwrap(), r#"{"text": "x"}"#);
    }

    #[test]
    fn the_format_is_decided_per_file() {
        let args = |input: Option<&str>, input_format| IoArgs {
            texts: Vec::new(),
            input: input.map(PathBuf::from),
            input_format,
            format: Format::Text,
            output: None,
            resume: false,
            documents: false,
            blocks: false,
        };
        assert!(args(Some("a.jsonl"), InputFormat::Auto).jsonl());
        assert!(args(Some("a.NDJSON"), InputFormat::Auto).jsonl());
        assert!(!args(Some("a.txt"), InputFormat::Auto).jsonl());
        assert!(!args(None, InputFormat::Auto).jsonl());
        assert!(!args(Some("a.jsonl"), InputFormat::Text).jsonl());
        assert!(args(Some("a.txt"), InputFormat::Jsonl).jsonl());
        assert!(args(None, InputFormat::Jsonl).jsonl());
    }
}

/// Ctrl-C (SIGINT) and SIGTERM during a batch run end it between two writes of results, never
/// inside one.
///
/// A chunk's results go out in one `write` of up to hundreds of KB. The kernel copies it page
/// by page and stops at a page boundary when the process is killed, so with the default
/// disposition a Ctrl-C during that copy left a torn last line. With this handler a signal
/// that arrives while no write is in progress exits at once (status 128 + the signal, as the
/// default would); one that arrives during a write lets it finish and exits right after it.
/// SIGKILL cannot be caught: a run killed that way may still end in a torn line, which
/// `--resume` cuts off before it appends.
mod interrupt {
    use std::sync::atomic::{AtomicBool, AtomicI32, Ordering::SeqCst};

    /// A write of results is in progress.
    static WRITING: AtomicBool = AtomicBool::new(false);
    /// The signal received (0: none).
    static RECEIVED: AtomicI32 = AtomicI32::new(0);

    /// Exit as the signal's default action would report it.
    fn exit_for(signal: i32) -> ! {
        // SAFETY: `_exit` is async-signal-safe and ends the process without running anything.
        unsafe { libc::_exit(128 + signal) }
    }

    #[cfg(unix)]
    extern "C" fn on_signal(signal: libc::c_int) {
        RECEIVED.store(signal, SeqCst);
        if !WRITING.load(SeqCst) {
            exit_for(signal);
        }
    }

    /// Handle SIGINT and SIGTERM as above (once per process; a no-op off Unix).
    pub fn install() {
        #[cfg(unix)]
        {
            static ONCE: std::sync::Once = std::sync::Once::new();
            ONCE.call_once(|| {
                let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
                // SAFETY: the handler only touches atomics and calls `_exit`, both
                // async-signal-safe.
                unsafe {
                    libc::signal(libc::SIGINT, handler);
                    libc::signal(libc::SIGTERM, handler);
                }
            });
        }
    }

    /// Run `write` so that a signal cannot cut it short. (The flag is set before the check
    /// and the handler stores before it loads, so a signal is seen by one side or both.)
    pub fn writing<T>(write: impl FnOnce() -> T) -> T {
        WRITING.store(true, SeqCst);
        let pending = RECEIVED.load(SeqCst);
        if pending != 0 {
            exit_for(pending);
        }
        let result = write();
        WRITING.store(false, SeqCst);
        let pending = RECEIVED.load(SeqCst);
        if pending != 0 {
            exit_for(pending);
        }
        result
    }
}
