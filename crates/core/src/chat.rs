//! Chat templates: a checkpoint's Jinja `chat_template` turned into a prompt, as transformers'
//! `apply_chat_template` renders it, and what a chat does with the answer (stop strings cut
//! off, also while streaming).
//!
//! The template comes from `chat_template.jinja` when the checkpoint has one (transformers 5
//! saves it so, and it wins), else from `tokenizer_config.json`'s `chat_template`: a string, or a
//! list of named templates of which "default" is taken. It is rendered by minijinja set up the
//! way transformers sets up Jinja: `trim_blocks` and `lstrip_blocks`, loop controls
//! (`break`/`continue`), `raise_exception(msg)` (an error with that message), `strftime_now(fmt)`
//! (the local time, through C's `strftime` as Python's is), `tojson` as transformers overrides it
//! (Python's `json.dumps`: `", "`/`": "` separators, non-ASCII and `<>&'` kept, `indent`,
//! `sort_keys`, `ensure_ascii`, `separators`), Python's string, dict and list methods
//! (`.strip()`, `.startswith()`, `.items()`, … through minijinja-contrib's pycompat), and the
//! variables `messages`, `add_generation_prompt`, `bos_token` and `eos_token` (the last two from
//! tokenizer_config.json, a string or an AddedToken object; left undefined when absent). The
//! `{% generation %}` blocks some templates mark the assistant's text with render their body.
//!
//! Templates that write the BOS token meet tokenizers that add it too (Llama 3): transformers
//! then encodes the rendered text without special tokens. Trident's pipelines encode prompts with
//! them, so [`ChatTemplate::prompt`] drops the template's BOS when the tokenizer adds its own:
//! the model sees one BOS either way.

use crate::{Error, ModelFiles, Result, TextEncoder};
use minijinja::value::Kwargs;
use minijinja::{Environment, ErrorKind, Value};
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::path::Path;

/// The files a chat template is looked for in, in transformers' order of precedence.
pub const TEMPLATE_FILES: [&str; 2] = ["chat_template.jinja", "tokenizer_config.json"];

/// The name the template is registered under (error messages say which file instead).
const NAME: &str = "chat_template";

/// One message of a conversation. Templates see any serializable message; this is the usual
/// `{"role", "content"}` pair.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// `system`, `user` or `assistant` (templates may know others, e.g. `tool`).
    pub role: String,
    /// Its text.
    pub content: String,
}

impl Message {
    /// A message of `role` saying `content`.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Message {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// A checkpoint's chat template, compiled once; rendering is `&self` and thread-safe.
pub struct ChatTemplate {
    env: Environment<'static>,
    /// Where it came from, for messages (`tokenizer_config.json`, `chat_template.jinja`).
    origin: String,
    bos_token: Option<String>,
    eos_token: Option<String>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("origin", &self.origin)
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .finish_non_exhaustive()
    }
}

/// The part of tokenizer_config.json (or special_tokens_map.json) a chat needs.
#[derive(Deserialize, Default)]
struct TokenizerConfig {
    #[serde(default)]
    chat_template: Option<serde_json::Value>,
    #[serde(default)]
    bos_token: Option<serde_json::Value>,
    #[serde(default)]
    eos_token: Option<serde_json::Value>,
}

/// A special token as tokenizer_config.json writes it: a string, or an AddedToken object with
/// its `content`.
fn token_text(v: &Option<serde_json::Value>) -> Option<String> {
    match v {
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        Some(serde_json::Value::Object(o)) => o.get("content")?.as_str().map(String::from),
        _ => None,
    }
}

fn read_config(path: &Path) -> Result<TokenizerConfig> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::config(path, e.to_string()))
}

/// The template of tokenizer_config.json's `chat_template`: a string, or the "default" of a list
/// of `{"name", "template"}` (as transformers picks without tools).
fn config_template(value: &serde_json::Value, path: &Path) -> Result<String> {
    match value {
        serde_json::Value::String(s) => Ok(s.clone()),
        serde_json::Value::Array(list) => {
            let mut names = Vec::new();
            for entry in list {
                let name = entry.get("name").and_then(|n| n.as_str());
                let template = entry.get("template").and_then(|t| t.as_str());
                match (name, template) {
                    (Some("default"), Some(t)) => return Ok(t.to_string()),
                    (Some(n), Some(_)) => names.push(n.to_string()),
                    _ => {
                        return Err(Error::config(
                            path,
                            "chat_template: each entry of the list needs a string \"name\" and \
                             \"template\"",
                        ))
                    }
                }
            }
            Err(Error::config(
                path,
                format!(
                    "chat_template: several named templates ({}) and none named \"default\"",
                    names.join(", ")
                ),
            ))
        }
        other => Err(Error::config(
            path,
            format!("chat_template must be a string or a list of named templates, not {other}"),
        )),
    }
}

impl ChatTemplate {
    /// The chat template of a checkpoint, or an error naming the files looked at when it has
    /// none.
    pub fn from_files(files: &ModelFiles) -> Result<ChatTemplate> {
        Self::find(files)?.ok_or_else(|| {
            Error::Input(format!(
                "{} has no chat template (looked for {} and a \"chat_template\" in {}); give \
                 plain prompts instead",
                files.name(),
                TEMPLATE_FILES[0],
                TEMPLATE_FILES[1]
            ))
        })
    }

    /// The chat template of a checkpoint, `None` when it has none (see the module
    /// documentation for where it is looked for). A template that does not compile is an
    /// error.
    pub fn find(files: &ModelFiles) -> Result<Option<ChatTemplate>> {
        let config_path = files.get_optional(TEMPLATE_FILES[1])?;
        let mut config = match &config_path {
            Some(p) => read_config(p)?,
            None => TokenizerConfig::default(),
        };
        let (source, origin) = match files.get_optional(TEMPLATE_FILES[0])? {
            Some(path) => (
                std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?,
                path,
            ),
            None => match (&config.chat_template, &config_path) {
                (Some(value), Some(path)) if !value.is_null() => {
                    (config_template(value, path)?, path.clone())
                }
                _ => return Ok(None),
            },
        };
        // Older checkpoints keep their special tokens in special_tokens_map.json only.
        if config.bos_token.is_none() || config.eos_token.is_none() {
            if let Some(path) = files.get_optional("special_tokens_map.json")? {
                let map = read_config(&path)?;
                config.bos_token = config.bos_token.or(map.bos_token);
                config.eos_token = config.eos_token.or(map.eos_token);
            }
        }
        let file = origin
            .file_name()
            .map_or_else(String::new, |f| f.to_string_lossy().into_owned());
        Self::with_origin(
            source,
            token_text(&config.bos_token),
            token_text(&config.eos_token),
            file,
        )
        .map_err(|e| match e {
            // Where the template that does not compile is, in full.
            Error::Input(message) => Error::config(&origin, message),
            other => other,
        })
        .map(Some)
    }

    /// A template from its Jinja source, with the checkpoint's BOS and EOS tokens (the
    /// template's `bos_token` and `eos_token`; undefined when `None`).
    pub fn new(
        source: impl Into<String>,
        bos_token: Option<String>,
        eos_token: Option<String>,
    ) -> Result<ChatTemplate> {
        Self::with_origin(
            source.into(),
            bos_token,
            eos_token,
            "the chat template".into(),
        )
    }

    fn with_origin(
        source: String,
        bos_token: Option<String>,
        eos_token: Option<String>,
        origin: String,
    ) -> Result<ChatTemplate> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.add_template_owned(NAME, generation_blocks(&source))
            .map_err(|e| {
                Error::Input(format!(
                    "the chat template does not compile: {}",
                    describe(&e)
                ))
            })?;
        Ok(ChatTemplate {
            env,
            origin,
            bos_token,
            eos_token,
        })
    }

    /// Which file the template came from (`chat_template.jinja` or `tokenizer_config.json`),
    /// for messages.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The template's `bos_token`.
    pub fn bos_token(&self) -> Option<&str> {
        self.bos_token.as_deref()
    }

    /// The template's `eos_token`.
    pub fn eos_token(&self) -> Option<&str> {
        self.eos_token.as_deref()
    }

    /// The conversation as the template writes it, byte for byte what transformers'
    /// `apply_chat_template(messages, tokenize=False, add_generation_prompt=…)` returns. A
    /// template's `raise_exception(msg)` is an error whose message ends with `msg`.
    pub fn render<M: Serialize>(
        &self,
        messages: &[M],
        add_generation_prompt: bool,
    ) -> Result<String> {
        let mut context = serde_json::Map::new();
        let messages = serde_json::to_value(messages)
            .map_err(|e| Error::Input(format!("the messages cannot be serialized: {e}")))?;
        context.insert("messages".into(), messages);
        context.insert(
            "add_generation_prompt".into(),
            serde_json::Value::Bool(add_generation_prompt),
        );
        for (name, token) in [
            ("bos_token", &self.bos_token),
            ("eos_token", &self.eos_token),
        ] {
            if let Some(t) = token {
                context.insert(name.into(), serde_json::Value::String(t.clone()));
            }
        }
        let template = self
            .env
            .get_template(NAME)
            .map_err(|e| Error::Input(format!("{}: {}", self.origin, describe(&e))))?;
        template
            .render(Value::from_serialize(&context))
            .map_err(|e| match raised(&e) {
                Some(message) => Error::Input(format!(
                    "the chat template ({}) refused the messages: {message}",
                    self.origin
                )),
                None => Error::Input(format!(
                    "the chat template ({}) failed: {}",
                    self.origin,
                    describe(&e)
                )),
            })
    }

    /// The prompt for a model to answer the conversation: the rendering with the generation
    /// prompt, without the template's BOS token when `tokenizer` adds one itself (so that the
    /// encoded prompt holds one BOS, as transformers' encoding of the rendering does).
    pub fn prompt<M: Serialize>(&self, messages: &[M], tokenizer: &TextEncoder) -> Result<String> {
        let rendered = self.render(messages, true)?;
        Ok(self.without_doubled_bos(rendered, tokenizer))
    }

    /// `rendered` without its leading BOS token when `tokenizer` adds one of its own.
    pub fn without_doubled_bos(&self, rendered: String, tokenizer: &TextEncoder) -> String {
        let Some(bos) = self.bos_token.as_deref().filter(|b| !b.is_empty()) else {
            return rendered;
        };
        let adds_bos = tokenizer.token_id(bos).is_some_and(|id| {
            tokenizer
                .encode("")
                .is_ok_and(|e| e.ids.first() == Some(&id))
        });
        match rendered.strip_prefix(bos) {
            Some(rest) if adds_bos => rest.to_string(),
            _ => rendered,
        }
    }
}

/// The error `raise_exception` makes: its message, found again after rendering.
#[derive(Debug)]
struct Raised(String);

impl std::fmt::Display for Raised {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Raised {}

/// `raise_exception(message)`: stop rendering with `message` (transformers raises a
/// `TemplateError` with it).
fn raise_exception(message: String) -> std::result::Result<Value, minijinja::Error> {
    Err(
        minijinja::Error::new(ErrorKind::InvalidOperation, message.clone())
            .with_source(Raised(message)),
    )
}

/// The message of a `raise_exception` behind `e`, when it is one.
fn raised(e: &minijinja::Error) -> Option<String> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(r) = s.downcast_ref::<Raised>() {
            return Some(r.0.clone());
        }
        source = s.source();
    }
    None
}

/// A minijinja error in one line: what went wrong and the template line.
fn describe(e: &minijinja::Error) -> String {
    let what = match e.detail() {
        Some(detail) => format!("{}: {detail}", e.kind()),
        None => e.kind().to_string(),
    };
    match e.line() {
        Some(line) => format!("{what} (line {line})"),
        None => what,
    }
}

/// `strftime_now(format)`: the local time formatted as Python's `datetime.now().strftime`.
fn strftime_now(format: String) -> std::result::Result<String, minijinja::Error> {
    strftime(&format, None).map_err(|e| minijinja::Error::new(ErrorKind::InvalidOperation, e))
}

/// C's `strftime` (which Python's calls) of the local time now, or of `at` seconds since the
/// epoch in UTC.
#[cfg(unix)]
fn strftime(format: &str, at: Option<i64>) -> std::result::Result<String, String> {
    let c_format = std::ffi::CString::new(format)
        .map_err(|_| "strftime_now: the format holds a NUL character".to_string())?;
    // SAFETY: `tm` is written by localtime_r / gmtime_r before it is read; strftime writes at
    // most `buffer.len()` bytes and returns how many it wrote.
    unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        let filled = match at {
            None => {
                let now = libc::time(std::ptr::null_mut());
                !libc::localtime_r(&now, &mut tm).is_null()
            }
            Some(t) => {
                let t = t as libc::time_t;
                !libc::gmtime_r(&t, &mut tm).is_null()
            }
        };
        if !filled {
            return Err("strftime_now: the local time is unknown".into());
        }
        // strftime returns 0 both for a too small buffer and for an empty result.
        let mut size = 64 + 8 * format.len();
        while size <= 1 << 16 {
            let mut buffer = vec![0u8; size];
            let n = libc::strftime(
                buffer.as_mut_ptr().cast(),
                buffer.len(),
                c_format.as_ptr(),
                &tm,
            );
            if n > 0 || format.is_empty() {
                buffer.truncate(n);
                return Ok(String::from_utf8_lossy(&buffer).into_owned());
            }
            size *= 4;
        }
        Ok(String::new())
    }
}

/// Without C's `strftime`: the date as ISO 8601, whatever the format.
#[cfg(not(unix))]
fn strftime(_format: &str, at: Option<i64>) -> std::result::Result<String, String> {
    let secs = at.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64)
    });
    // Days to a civil date (Howard Hinnant's algorithm).
    let z = secs.div_euclid(86_400) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    Ok(format!("{year:04}-{month:02}-{day:02}"))
}

/// `tojson` as transformers defines it: Python's `json.dumps(x, ensure_ascii=False,
/// indent=None, separators=None, sort_keys=False)`.
fn tojson(value: Value, kwargs: Kwargs) -> std::result::Result<String, minijinja::Error> {
    let indent: Option<Value> = kwargs.get("indent")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    let separators: Option<Vec<String>> = kwargs.get("separators")?;
    kwargs.assert_all_used()?;
    let indent = match indent {
        None => None,
        Some(v) if v.is_none() || v.is_undefined() => None,
        Some(v) => match v.as_str() {
            Some(s) => Some(s.to_string()),
            None => Some(" ".repeat(usize::try_from(v)?)),
        },
    };
    let (item, key) = match separators.as_deref() {
        Some([item, key]) => (item.clone(), key.clone()),
        Some(_) => {
            return Err(minijinja::Error::new(
                ErrorKind::InvalidOperation,
                "tojson: separators must be two strings",
            ))
        }
        // Python's defaults: no space at line ends when indenting.
        None if indent.is_some() => (",".to_string(), ": ".to_string()),
        None => (", ".to_string(), ": ".to_string()),
    };
    let json = serde_json::to_value(&value).map_err(|e| {
        minijinja::Error::new(ErrorKind::InvalidOperation, "tojson: cannot serialize")
            .with_source(e)
    })?;
    let style = JsonStyle {
        indent,
        item,
        key,
        sort_keys: sort_keys.unwrap_or(false),
        ensure_ascii: ensure_ascii.unwrap_or(false),
    };
    let mut out = String::new();
    style.write(&json, 0, &mut out);
    Ok(out)
}

/// Python's `json.dumps` settings.
struct JsonStyle {
    indent: Option<String>,
    item: String,
    key: String,
    sort_keys: bool,
    ensure_ascii: bool,
}

impl JsonStyle {
    fn newline(&self, depth: usize, out: &mut String) {
        if let Some(indent) = &self.indent {
            out.push('\n');
            for _ in 0..depth {
                out.push_str(indent);
            }
        }
    }

    fn write(&self, v: &serde_json::Value, depth: usize, out: &mut String) {
        use serde_json::Value as J;
        match v {
            J::Null => out.push_str("null"),
            J::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            J::Number(n) => out.push_str(&n.to_string()),
            J::String(s) => self.string(s, out),
            J::Array(items) if items.is_empty() => out.push_str("[]"),
            J::Array(items) => {
                out.push('[');
                for (i, x) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(&self.item);
                    }
                    self.newline(depth + 1, out);
                    self.write(x, depth + 1, out);
                }
                self.newline(depth, out);
                out.push(']');
            }
            J::Object(map) if map.is_empty() => out.push_str("{}"),
            J::Object(map) => {
                let mut entries: Vec<(&String, &serde_json::Value)> = map.iter().collect();
                if self.sort_keys {
                    entries.sort_by(|a, b| a.0.cmp(b.0));
                }
                out.push('{');
                for (i, (k, x)) in entries.into_iter().enumerate() {
                    if i > 0 {
                        out.push_str(&self.item);
                    }
                    self.newline(depth + 1, out);
                    self.string(k, out);
                    out.push_str(&self.key);
                    self.write(x, depth + 1, out);
                }
                self.newline(depth, out);
                out.push('}');
            }
        }
    }

    /// A JSON string as Python writes it.
    fn string(&self, s: &str, out: &mut String) {
        out.push('"');
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '\u{8}' => out.push_str("\\b"),
                '\u{c}' => out.push_str("\\f"),
                c if (c as u32) < 0x20 || (self.ensure_ascii && !c.is_ascii()) => {
                    let mut units = [0u16; 2];
                    for u in c.encode_utf16(&mut units) {
                        let _ = write!(out, "\\u{u:04x}");
                    }
                }
                c => out.push(c),
            }
        }
        out.push('"');
    }
}

/// The template with `{% generation %}…{% endgeneration %}` (transformers' marker of the
/// assistant's text, which minijinja does not know) turned into `{% if true %}…{% endif %}`,
/// whitespace control kept.
fn generation_blocks(source: &str) -> String {
    if !source.contains("generation") {
        return source.to_string();
    }
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(at) = rest.find("{%") {
        out.push_str(&rest[..at]);
        let tag = &rest[at..];
        let Some(end) = tag.find("%}") else {
            out.push_str(tag);
            return out;
        };
        let inner = &tag[2..end];
        let (open, body) = match inner.strip_prefix(['-', '+']) {
            Some(b) => (&inner[..1], b),
            None => ("", inner),
        };
        let (body, close) = match body.strip_suffix(['-', '+']) {
            Some(b) => (b, &body[b.len()..]),
            None => (body, ""),
        };
        match body.trim() {
            "generation" => {
                let _ = write!(out, "{{%{open} if true {close}%}}");
            }
            "endgeneration" => {
                let _ = write!(out, "{{%{open} endif {close}%}}");
            }
            _ => out.push_str(&tag[..end + 2]),
        }
        rest = &tag[end + 2..];
    }
    out.push_str(rest);
    out
}

/// `text` up to the first of `stops` found at or after byte `from` (OpenAI's `stop`: the
/// answer ends before it; the engine stops at the token that completes it, so it is cut here).
pub fn before_stop(text: &str, from: usize, stops: &[String]) -> String {
    let from = from.min(text.len());
    let tail = text.get(from..).unwrap_or("");
    match stops.iter().filter_map(|s| tail.find(s.as_str())).min() {
        Some(at) => text[..from + at].to_string(),
        None => text.to_string(),
    }
}

/// Streamed text held back while it could still be the start of a stop string, so that a
/// stop string is never shown.
#[derive(Debug, Default)]
pub struct StopFilter {
    pending: String,
    stopped: bool,
}

impl StopFilter {
    /// Add `text` and return what can be shown now: nothing after a stop string, and never
    /// the end that may begin one.
    pub fn push(&mut self, text: &str, stops: &[String]) -> String {
        if self.stopped {
            return String::new();
        }
        self.pending.push_str(text);
        if let Some(at) = stops
            .iter()
            .filter_map(|s| self.pending.find(s.as_str()))
            .min()
        {
            self.stopped = true;
            let out = self.pending[..at].to_string();
            self.pending.clear();
            return out;
        }
        // Keep the longest end of the pending text that begins some stop string.
        let keep = stops
            .iter()
            .filter_map(|s| {
                (1..s.len())
                    .filter(|&n| s.is_char_boundary(n) && self.pending.ends_with(&s[..n]))
                    .max()
            })
            .max()
            .unwrap_or(0);
        let split = self.pending.len() - keep;
        let out = self.pending[..split].to_string();
        self.pending.drain(..split);
        out
    }

    /// What is left when the generation ends without a stop string.
    pub fn flush(&mut self) -> String {
        if self.stopped {
            String::new()
        } else {
            std::mem::take(&mut self.pending)
        }
    }

    /// Whether a stop string has been seen.
    pub fn stopped(&self) -> bool {
        self.stopped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn template(source: &str) -> ChatTemplate {
        ChatTemplate::new(source, Some("<s>".into()), Some("</s>".into())).unwrap()
    }

    #[test]
    fn raise_exception_is_an_error_with_its_message() {
        let t = template("{{ raise_exception('Roles must alternate') }}");
        let e = t.render(&[Message::new("user", "hi")], true).unwrap_err();
        assert!(
            e.to_string()
                .ends_with("refused the messages: Roles must alternate"),
            "{e}"
        );
    }

    #[test]
    fn tojson_writes_as_python_json_dumps() {
        let t = template(
            "{{ messages[0] | tojson }}|{{ messages[0] | tojson(indent=2) }}|\
             {{ messages[0] | tojson(sort_keys=true, ensure_ascii=true) }}|{{ [] | tojson }}|\
             {{ {'a': [1, 2.5, none, true]} | tojson(separators=[',', ':']) }}",
        );
        let m = json!({"role": "user", "content": "café <b>\u{1}\"\\\n"});
        let out = t.render(&[m], false).unwrap();
        assert_eq!(
            out,
            "{\"role\": \"user\", \"content\": \"café <b>\\u0001\\\"\\\\\\n\"}|\
             {\n  \"role\": \"user\",\n  \"content\": \"café <b>\\u0001\\\"\\\\\\n\"\n}|\
             {\"content\": \"caf\\u00e9 <b>\\u0001\\\"\\\\\\n\", \"role\": \"user\"}|[]|\
             {\"a\":[1,2.5,null,true]}"
        );
    }

    #[test]
    fn python_methods_loop_controls_and_trimmed_blocks() {
        let t = template(
            "{% for m in messages %}\n  {% if m.role == 'system' %}\n    {% continue %}\n  {% endif %}\n\
             {{ m.content.strip().upper() }}{% if m.content.startswith(' a') %}!{% endif %}\n\
             {% if loop.index > 2 %}{% break %}{% endif %}\n{% endfor %}",
        );
        let messages = [
            Message::new("system", "s"),
            Message::new("user", " a "),
            Message::new("user", "b"),
            Message::new("user", "never"),
        ];
        // As Jinja2 renders it: trim_blocks eats the newline after each block tag.
        assert_eq!(t.render(&messages, false).unwrap(), "A!B");
    }

    #[test]
    fn special_tokens_are_variables_and_absent_ones_undefined() {
        let t = template("{{ bos_token }}{{ eos_token }}");
        assert_eq!(t.render::<Message>(&[], false).unwrap(), "<s></s>");
        let t =
            ChatTemplate::new("[{{ bos_token }}]{{ bos_token is defined }}", None, None).unwrap();
        assert_eq!(
            t.render::<Message>(&[], false).unwrap(),
            "[]False",
            "as Jinja2 writes it"
        );
    }

    #[test]
    fn generation_blocks_render_their_body() {
        let t = template("a {%- generation -%} b {% endgeneration %}c");
        assert_eq!(t.render::<Message>(&[], false).unwrap(), "ab c");
        assert_eq!(
            generation_blocks("{% if x %}{%+ generation %}"),
            "{% if x %}{%+ if true %}"
        );
    }

    #[test]
    fn a_template_that_does_not_compile_is_an_error() {
        let e = ChatTemplate::new("{% for %}", None, None).unwrap_err();
        assert!(e.to_string().contains("does not compile"), "{e}");
    }

    #[cfg(unix)]
    #[test]
    fn strftime_formats_as_c_does() {
        // 2024-07-26 12:34:56 UTC.
        let at = Some(1_722_000_000 - 1_722_000_000 % 86_400 + 45_296);
        assert_eq!(strftime("%d %b %Y", at).unwrap(), "26 Jul 2024");
        assert_eq!(
            strftime("%A %B %-d, %H:%M:%S %%", at).unwrap(),
            "Friday July 26, 12:34:56 %"
        );
        assert_eq!(strftime("", at).unwrap(), "");
        assert!(!strftime_now("%Y".into()).unwrap().is_empty());
    }

    #[test]
    fn the_list_form_picks_default() {
        let p = Path::new("tokenizer_config.json");
        let list =
            json!([{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]);
        assert_eq!(config_template(&list, p).unwrap(), "D");
        let none = json!([{"name": "tool_use", "template": "T"}]);
        assert!(config_template(&none, p)
            .unwrap_err()
            .to_string()
            .contains("none named \"default\""));
        assert!(config_template(&json!(3), p).is_err());
    }

    #[test]
    fn stop_strings_are_held_back_and_cut() {
        let stops = vec!["<end>".to_string()];
        let mut f = StopFilter::default();
        assert_eq!(f.push("Hello <e", &stops), "Hello ");
        assert_eq!(f.push("n", &stops), "");
        assert_eq!(f.push("d> more", &stops), "");
        assert!(f.stopped());
        assert_eq!(f.flush(), "");
        let mut f = StopFilter::default();
        assert_eq!(f.push("a <e", &stops), "a ");
        assert_eq!(f.flush(), "<e");
        assert_eq!(before_stop("ab<end>cd", 0, &stops), "ab");
        assert_eq!(before_stop("<end>ab", 5, &stops), "<end>ab");
    }
}
