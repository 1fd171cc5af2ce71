//! Training data: labelled texts from CSV or JSON Lines, tagged sentences from CoNLL files or
//! JSON Lines, their tag schemes, and their encoding into model inputs with labels (a
//! word's first sub-token carries its tag, the rest are ignored, as in transformers'
//! token-classification example).
//!
//! Every error names the file, and the line when one is at fault.

use crate::text::{Encoded, TextEncoder};
use crate::{Error, Result};
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::Path;
use std::str::FromStr;

/// The label of a token that counts in no loss and no score (PyTorch's `ignore_index`).
pub const IGNORE: i64 = -100;

/// A text and its class.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelledText {
    /// The text.
    pub text: String,
    /// Its label, as written in the file.
    pub label: String,
    /// Where it comes from (`file:line`), for messages.
    pub origin: String,
}

/// A sentence split into words, with a tag per word.
#[derive(Debug, Clone, PartialEq)]
pub struct TaggedSentence {
    /// The words.
    pub words: Vec<String>,
    /// One IOB2 tag per word (converted from the file's scheme).
    pub tags: Vec<String>,
    /// Where it comes from (`file:line`), for messages.
    pub origin: String,
}

/// One encoded training example.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    /// The tokens, with the model's special tokens.
    pub encoded: Encoded,
    /// One label id (classification), or one per token with [`IGNORE`] where no label
    /// counts (token classification).
    pub labels: Vec<i64>,
}

/// How entity tags are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TagScheme {
    /// `B-` only where an entity follows another of its type; `I-` otherwise.
    Iob1,
    /// `B-` at the start of every entity, `I-` inside (the default; what the NER pipelines
    /// group).
    #[default]
    Iob2,
    /// `B-`, `I-`, `E-` (last word) and `S-` (single-word entity); also called IOBES.
    Bioes,
}

impl FromStr for TagScheme {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "iob1" => Ok(TagScheme::Iob1),
            "iob2" | "bio" | "iob" => Ok(TagScheme::Iob2),
            "bioes" | "iobes" => Ok(TagScheme::Bioes),
            other => Err(Error::Input(format!(
                "unknown tag scheme `{other}`: Trident reads iob1, iob2 (BIO) and bioes (IOBES)"
            ))),
        }
    }
}

impl TagScheme {
    fn name(self) -> &'static str {
        match self {
            TagScheme::Iob1 => "IOB1",
            TagScheme::Iob2 => "IOB2",
            TagScheme::Bioes => "BIOES",
        }
    }

    /// Check one tag: `Ok((prefix, type))`, `prefix` `None` for `O`.
    fn parse(self, tag: &str) -> std::result::Result<(Option<char>, &str), String> {
        if tag == "O" {
            return Ok((None, ""));
        }
        let allowed: &[char] = match self {
            TagScheme::Iob1 | TagScheme::Iob2 => &['B', 'I'],
            TagScheme::Bioes => &['B', 'I', 'E', 'S'],
        };
        let mut chars = tag.chars();
        let prefix = chars.next();
        let kind = tag.get(2..).unwrap_or("");
        match (prefix, tag.as_bytes().get(1)) {
            (Some(p), Some(b'-')) if allowed.contains(&p) && !kind.is_empty() => {
                Ok((Some(p), kind))
            }
            (Some('E' | 'S'), Some(b'-')) if !kind.is_empty() => Err(format!(
                "tag `{tag}` is not an {} tag (O, B-TYPE, I-TYPE); for E-/S- tags set the tag \
                 scheme to bioes",
                self.name()
            )),
            _ => Err(format!(
                "tag `{tag}` is in no tag scheme Trident reads: expected O or PREFIX-TYPE with \
                 the {} prefixes {} (schemes: iob1, iob2, bioes)",
                self.name(),
                allowed
                    .iter()
                    .map(|c| format!("{c}-"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }

    /// Tags of one sentence in this scheme → IOB2; `at(i)` says where tag `i` is, for errors.
    pub fn to_iob2(self, tags: &[String], at: impl Fn(usize) -> String) -> Result<Vec<String>> {
        let mut out = Vec::with_capacity(tags.len());
        let mut prev: Option<&str> = None; // the previous word's type, None after O
        for (i, tag) in tags.iter().enumerate() {
            let (prefix, kind) = self
                .parse(tag)
                .map_err(|m| Error::Input(format!("{}: {m}", at(i))))?;
            let converted = match (self, prefix) {
                (_, None) => "O".to_string(),
                (TagScheme::Iob1, Some('I')) if prev != Some(kind) => format!("B-{kind}"),
                (TagScheme::Bioes, Some('S')) => format!("B-{kind}"),
                (TagScheme::Bioes, Some('E')) => format!("I-{kind}"),
                _ => tag.clone(),
            };
            prev = prefix.map(|_| kind);
            out.push(converted);
        }
        Ok(out)
    }
}

/// The format of a data file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Csv(u8),
    JsonLines,
    Conll,
}

/// By extension (`.csv`, `.tsv`, `.jsonl`/`.json`/`.ndjson`, `.conll`/`.txt`/…), else by the
/// first character (`{`: JSON Lines).
fn format_of(path: &Path, text: &str, tagged: bool) -> Format {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    match ext.as_str() {
        "jsonl" | "json" | "ndjson" => Format::JsonLines,
        "csv" if !tagged => Format::Csv(b','),
        "tsv" if !tagged => Format::Csv(b'\t'),
        _ if text.trim_start().starts_with('{') => Format::JsonLines,
        _ if tagged => Format::Conll,
        _ => Format::Csv(b','),
    }
}

fn read_text(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    String::from_utf8(bytes).map_err(|e| {
        let upto = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        let line = upto.iter().filter(|&&b| b == b'\n').count() + 1;
        Error::Input(format!("{}:{line}: not valid UTF-8", path.display()))
    })
}

/// Read labelled texts from a CSV/TSV file with a header row, or JSON Lines, taking the
/// columns `text_column` and `label_column` (labels are strings; numbers are read as their
/// text).
pub fn read_labelled_texts(
    path: &Path,
    text_column: &str,
    label_column: &str,
) -> Result<Vec<LabelledText>> {
    let text = read_text(path)?;
    let file = path.display().to_string();
    let rows: Vec<(usize, Vec<(String, Value)>)> = match format_of(path, &text, false) {
        Format::Csv(sep) => {
            let records = parse_csv(&text, sep)
                .map_err(|(line, m)| Error::Input(format!("{file}:{line}: {m}")))?;
            let mut records = records.into_iter();
            let Some((_, header)) = records.next() else {
                return Err(empty(&file));
            };
            for column in [text_column, label_column] {
                if !header.iter().any(|h| h == column) {
                    return Err(Error::Input(format!(
                        "{file}: no column `{column}` in the header ({}); name the columns \
                         with text_column and label_column",
                        header.join(", ")
                    )));
                }
            }
            records
                .filter(|(_, r)| !(r.len() == 1 && r[0].trim().is_empty()))
                .map(|(line, r)| {
                    if r.len() != header.len() {
                        return Err(Error::Input(format!(
                            "{file}:{line}: {} fields where the header has {}",
                            r.len(),
                            header.len()
                        )));
                    }
                    Ok((
                        line,
                        header
                            .iter()
                            .cloned()
                            .zip(r.into_iter().map(Value::String))
                            .collect(),
                    ))
                })
                .collect::<Result<_>>()?
        }
        _ => json_lines(&text, &file)?
            .into_iter()
            .map(|(line, o)| (line, o.into_iter().collect()))
            .collect(),
    };
    let mut out = Vec::with_capacity(rows.len());
    for (line, row) in rows {
        let field = |name: &str| -> Result<String> {
            let v = row
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v)
                .ok_or_else(|| {
                    Error::Input(format!(
                        "{file}:{line}: no field `{name}`; name the fields with text_column and \
                     label_column"
                    ))
                })?;
            match v {
                Value::String(s) => Ok(s.clone()),
                Value::Number(n) => Ok(n.to_string()),
                Value::Bool(b) => Ok(b.to_string()),
                other => Err(Error::Input(format!(
                    "{file}:{line}: field `{name}` is {other}, not a string"
                ))),
            }
        };
        let (text, label) = (field(text_column)?, field(label_column)?);
        if label.trim().is_empty() {
            return Err(Error::Input(format!("{file}:{line}: the label is empty")));
        }
        out.push(LabelledText {
            text,
            label,
            origin: format!("{file}:{line}"),
        });
    }
    if out.is_empty() {
        return Err(empty(&file));
    }
    Ok(out)
}

/// Read tagged sentences from a CoNLL file (a word and its tag per line, the word first and
/// the tag last, other columns ignored; a blank line between sentences; `-DOCSTART-` lines
/// skipped) or JSON Lines with `tokens_column` and `tags_column` lists, converting `scheme`
/// to IOB2.
pub fn read_tagged_sentences(
    path: &Path,
    tokens_column: &str,
    tags_column: &str,
    scheme: TagScheme,
) -> Result<Vec<TaggedSentence>> {
    let text = read_text(path)?;
    let file = path.display().to_string();
    let mut out = Vec::new();
    if format_of(path, &text, true) == Format::JsonLines {
        for (line, o) in json_lines(&text, &file)? {
            let list = |name: &str| -> Result<Vec<String>> {
                let v = o.get(name).ok_or_else(|| {
                    Error::Input(format!(
                        "{file}:{line}: no field `{name}`; name the fields with tokens_column \
                         and tags_column"
                    ))
                })?;
                let items = v.as_array().ok_or_else(|| {
                    Error::Input(format!("{file}:{line}: field `{name}` is not a list"))
                })?;
                items
                    .iter()
                    .map(|i| match i {
                        Value::String(s) => Ok(s.clone()),
                        other => Err(Error::Input(format!(
                            "{file}:{line}: `{name}` holds {other}, not a string (tags are \
                             written as strings such as B-PER)"
                        ))),
                    })
                    .collect()
            };
            let (words, tags) = (list(tokens_column)?, list(tags_column)?);
            if words.len() != tags.len() {
                return Err(Error::Input(format!(
                    "{file}:{line}: {} tokens but {} tags",
                    words.len(),
                    tags.len()
                )));
            }
            if words.is_empty() {
                continue;
            }
            let tags = scheme.to_iob2(&tags, |i| format!("{file}:{line} (tag {})", i + 1))?;
            out.push(TaggedSentence {
                words,
                tags,
                origin: format!("{file}:{line}"),
            });
        }
    } else {
        let mut words = Vec::new();
        let mut tags = Vec::new();
        let mut lines = Vec::new();
        let mut flush =
            |words: &mut Vec<String>, tags: &mut Vec<String>, lines: &mut Vec<usize>| {
                if words.is_empty() {
                    return Ok(());
                }
                let converted = scheme.to_iob2(tags, |i| format!("{file}:{}", lines[i]))?;
                out.push(TaggedSentence {
                    words: std::mem::take(words),
                    tags: converted,
                    origin: format!("{file}:{}", lines[0]),
                });
                tags.clear();
                lines.clear();
                Ok::<(), Error>(())
            };
        for (i, line) in text.lines().enumerate() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.is_empty() {
                flush(&mut words, &mut tags, &mut lines)?;
                continue;
            }
            if fields[0] == "-DOCSTART-" {
                flush(&mut words, &mut tags, &mut lines)?;
                continue;
            }
            if fields.len() < 2 {
                return Err(Error::Input(format!(
                    "{file}:{}: expected a word and its tag separated by whitespace, got `{}`",
                    i + 1,
                    line.trim()
                )));
            }
            words.push(fields[0].to_string());
            tags.push(fields[fields.len() - 1].to_string());
            lines.push(i + 1);
        }
        flush(&mut words, &mut tags, &mut lines)?;
    }
    if out.is_empty() {
        return Err(empty(&file));
    }
    Ok(out)
}

fn empty(file: &str) -> Error {
    Error::Input(format!("{file} holds no examples"))
}

/// Non-blank lines of a JSON Lines file as objects, with their line numbers.
fn json_lines(text: &str, file: &str) -> Result<Vec<(usize, serde_json::Map<String, Value>)>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Value>(line) {
            Ok(Value::Object(o)) => out.push((i + 1, o)),
            Ok(_) => return Err(Error::Input(format!("{file}:{}: not a JSON object", i + 1))),
            Err(e) => {
                return Err(Error::Input(format!(
                    "{file}:{}: not valid JSON ({e})",
                    i + 1
                )))
            }
        }
    }
    Ok(out)
}

/// CSV records, each with the line it starts on.
type Records = Vec<(usize, Vec<String>)>;

/// RFC 4180 records: fields split by `sep`, quoted fields with `""` for a quote and line
/// breaks inside. Returns each record with the line it starts on; an error is `(line, why)`.
fn parse_csv(text: &str, sep: u8) -> std::result::Result<Records, (usize, String)> {
    let sep = sep as char;
    let mut records = Vec::new();
    let mut record = Vec::new();
    let mut field = String::new();
    let mut chars = text
        .strip_prefix('\u{feff}')
        .unwrap_or(text)
        .chars()
        .peekable();
    let (mut line, mut start_line) = (1usize, 1usize);
    let mut quoted = false; // inside a quoted field
    let mut was_quoted = false; // the current field was quoted (only whitespace may follow)
    while let Some(c) = chars.next() {
        if quoted {
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                '"' => quoted = false,
                '\n' => {
                    line += 1;
                    field.push(c);
                }
                _ => field.push(c),
            }
            continue;
        }
        match c {
            '"' if field.is_empty() && !was_quoted => {
                quoted = true;
                was_quoted = true;
            }
            '"' => {
                return Err((
                    line,
                    "a quote inside an unquoted field (write it as \"\" inside a quoted field)"
                        .into(),
                ))
            }
            c if c == sep => {
                record.push(std::mem::take(&mut field));
                was_quoted = false;
            }
            '\r' if chars.peek() == Some(&'\n') => {}
            '\n' => {
                record.push(std::mem::take(&mut field));
                records.push((start_line, std::mem::take(&mut record)));
                was_quoted = false;
                line += 1;
                start_line = line;
            }
            _ if was_quoted => {
                if !c.is_whitespace() {
                    return Err((line, "text after a closing quote".into()));
                }
            }
            _ => field.push(c),
        }
    }
    if quoted {
        return Err((start_line, "a quoted field is never closed".into()));
    }
    if !field.is_empty() || !record.is_empty() || was_quoted {
        record.push(field);
        records.push((start_line, record));
    }
    Ok(records)
}

/// The class labels of `examples`, sorted (transformers' run_glue sorts string labels).
pub fn class_labels(examples: &[LabelledText]) -> Vec<String> {
    let set: BTreeSet<&str> = examples.iter().map(|e| e.label.as_str()).collect();
    set.into_iter().map(String::from).collect()
}

/// The tag labels of `sentences` (IOB2): `O`, then `B-` and `I-` of every entity type in
/// sorted order (both, even when a type's `I-` never occurs, so the model can predict it).
pub fn tag_labels(sentences: &[TaggedSentence]) -> Vec<String> {
    let types: BTreeSet<&str> = sentences
        .iter()
        .flat_map(|s| s.tags.iter())
        .filter_map(|t| t.get(2..).filter(|_| t != "O"))
        .collect();
    let mut labels = vec!["O".to_string()];
    for t in types {
        labels.push(format!("B-{t}"));
        labels.push(format!("I-{t}"));
    }
    labels
}

/// Labels that occur in `seen` but not in `known`, with where each first occurs.
fn unknown<'a>(
    seen: impl Iterator<Item = (&'a str, &'a str)>,
    known: &[String],
) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for (label, origin) in seen {
        if !known.iter().any(|k| k == label) && !out.iter().any(|(l, _)| l == label) {
            out.push((label.to_string(), origin.to_string()));
        }
    }
    out
}

fn unknown_error(what: &str, unknown: Vec<(String, String)>, known: &[String]) -> Result<()> {
    match unknown.first() {
        None => Ok(()),
        Some((label, origin)) => Err(Error::Input(format!(
            "{origin}: {what} `{label}` does not occur in the training data{} (the model's \
             labels: {})",
            if unknown.len() > 1 {
                format!(" (nor do {} more)", unknown.len() - 1)
            } else {
                String::new()
            },
            known.join(", ")
        ))),
    }
}

/// Encode labelled texts: `[CLS] text [SEP]` truncated to `max_length` tokens, and the
/// label's index in `labels` (a label not in it is an error naming where it occurs).
pub fn encode_labelled_texts(
    encoder: &TextEncoder,
    examples: &[LabelledText],
    labels: &[String],
    max_length: usize,
) -> Result<Vec<Example>> {
    unknown_error(
        "label",
        unknown(
            examples
                .iter()
                .map(|e| (e.label.as_str(), e.origin.as_str())),
            labels,
        ),
        labels,
    )?;
    examples
        .iter()
        .map(|e| {
            let (encoded, _) = encoder.encode_truncated(&e.text, max_length)?;
            let id = labels.iter().position(|l| *l == e.label).unwrap_or(0) as i64;
            Ok(Example {
                encoded,
                labels: vec![id],
            })
        })
        .collect()
}

/// Encode tagged sentences: the words joined by spaces, tokenized with the model's special
/// tokens and truncated to `max_length`; a word's first token carries its tag's index in
/// `labels`, every other token [`IGNORE`]. Words cut by truncation (or that tokenize to
/// nothing) count in no loss and no score, as in transformers' example.
pub fn encode_tagged_sentences(
    encoder: &TextEncoder,
    sentences: &[TaggedSentence],
    labels: &[String],
    max_length: usize,
) -> Result<Vec<Example>> {
    unknown_error(
        "tag",
        unknown(
            sentences
                .iter()
                .flat_map(|s| s.tags.iter().map(|t| (t.as_str(), s.origin.as_str()))),
            labels,
        ),
        labels,
    )?;
    sentences
        .iter()
        .map(|s| {
            // Character spans of the words in the joined text.
            let mut text = String::new();
            let mut spans = Vec::with_capacity(s.words.len());
            let mut at = 0usize;
            for (i, w) in s.words.iter().enumerate() {
                if i > 0 {
                    text.push(' ');
                    at += 1;
                }
                let n = w.chars().count();
                spans.push((at, at + n));
                text.push_str(w);
                at += n;
            }
            let word_of = |c: usize| spans.iter().position(|&(a, b)| a <= c && c < b);
            let (encoded, _) = encoder.encode_truncated(&text, max_length)?;
            let mut last_word = None;
            let ids = encoded
                .offsets
                .iter()
                .zip(&encoded.special)
                .map(|(&(start, end), &special)| {
                    if special || end <= start {
                        return IGNORE;
                    }
                    // A byte-level token may start on the space before its word.
                    let word = word_of(start).or_else(|| word_of(end - 1));
                    match word {
                        Some(w) if last_word != Some(w) => {
                            last_word = Some(w);
                            labels.iter().position(|l| *l == s.tags[w]).unwrap_or(0) as i64
                        }
                        _ => IGNORE,
                    }
                })
                .collect();
            Ok(Example {
                encoded,
                labels: ids,
            })
        })
        .collect()
}

/// SplitMix64: a small, seedable generator whose sequence is fixed forever (shuffles must
/// repeat exactly when a run resumes, on any machine and Rust version).
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator for `seed` and a `stream` (e.g. the epoch).
    pub fn new(seed: u64, stream: u64) -> Self {
        let mut g =
            SplitMix64(seed ^ 0x9E37_79B9_7F4A_7C15u64.wrapping_mul(stream.wrapping_add(1)));
        g.next_u64();
        g
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A permutation of `0..n` (Fisher–Yates).
    pub fn permutation(&mut self, n: usize) -> Vec<usize> {
        let mut v: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            let j = (self.next_u64() % (i as u64 + 1)) as usize;
            v.swap(i, j);
        }
        v
    }
}

/// Split `items` into training and evaluation parts: `ratio` of them (rounded, at least one)
/// chosen at random for `seed` go to evaluation; both keep the file's order.
pub fn split_off<T>(items: Vec<T>, ratio: f64, seed: u64) -> Result<(Vec<T>, Vec<T>)> {
    if !(ratio > 0.0 && ratio < 1.0) {
        return Err(Error::Input(format!(
            "eval_split {ratio} must be between 0 and 1 (e.g. 0.1)"
        )));
    }
    let n = items.len();
    let k = ((n as f64 * ratio).round() as usize).max(1);
    if k >= n {
        return Err(Error::Input(format!(
            "eval_split {ratio} of {n} examples leaves nothing to train on"
        )));
    }
    let mut to_eval = vec![false; n];
    for i in SplitMix64::new(seed, u64::MAX)
        .permutation(n)
        .into_iter()
        .take(k)
    {
        to_eval[i] = true;
    }
    let (mut train, mut eval) = (Vec::new(), Vec::new());
    for (item, e) in items.into_iter().zip(to_eval) {
        if e {
            eval.push(item);
        } else {
            train.push(item);
        }
    }
    Ok((train, eval))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(s: &[&str]) -> Vec<String> {
        s.iter().map(|t| t.to_string()).collect()
    }

    #[test]
    fn schemes_convert_to_iob2() {
        let at = |i: usize| format!("tag {i}");
        assert_eq!(
            TagScheme::Iob1
                .to_iob2(
                    &tags(&["I-PER", "I-PER", "B-PER", "O", "I-LOC", "I-ORG"]),
                    at
                )
                .unwrap(),
            tags(&["B-PER", "I-PER", "B-PER", "O", "B-LOC", "B-ORG"])
        );
        assert_eq!(
            TagScheme::Bioes
                .to_iob2(&tags(&["S-PER", "B-ORG", "I-ORG", "E-ORG", "O"]), at)
                .unwrap(),
            tags(&["B-PER", "B-ORG", "I-ORG", "I-ORG", "O"])
        );
        let err = TagScheme::Iob2
            .to_iob2(&tags(&["O", "S-PER"]), at)
            .unwrap_err()
            .to_string();
        assert!(err.contains("tag 1") && err.contains("bioes"), "{err}");
        let err = TagScheme::Iob2
            .to_iob2(&tags(&["U-PER"]), at)
            .unwrap_err()
            .to_string();
        assert!(err.contains("no tag scheme"), "{err}");
        assert!("bilou".parse::<TagScheme>().is_err());
    }

    #[test]
    fn csv_quotes_and_line_numbers() {
        let recs = parse_csv("text,label\n\"a, \"\"b\"\"\nc\",pos\r\nd,neg", b',').unwrap();
        assert_eq!(recs.len(), 3);
        assert_eq!(recs[1], (2, vec!["a, \"b\"\nc".to_string(), "pos".into()]));
        assert_eq!(recs[2].0, 4);
        assert_eq!(parse_csv("a,\"b", b',').unwrap_err().0, 1);
        assert!(parse_csv("a,b\"c\"", b',').is_err());
    }

    #[test]
    fn permutations_are_fixed_by_seed_and_stream() {
        let a = SplitMix64::new(42, 0).permutation(10);
        assert_eq!(a, SplitMix64::new(42, 0).permutation(10));
        assert_ne!(a, SplitMix64::new(42, 1).permutation(10));
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, (0..10).collect::<Vec<_>>());
        let (train, eval) = split_off((0..20).collect::<Vec<_>>(), 0.1, 42).unwrap();
        assert_eq!((train.len(), eval.len()), (18, 2));
        assert!(split_off(vec![1, 2], 1.5, 0).is_err());
    }
}
