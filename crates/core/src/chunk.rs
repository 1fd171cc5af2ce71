//! Fitting a long document into the encoder: split it at sentence boundaries into pieces that
//! each fit, so that nothing is cut. A sentence too long on its own is split between words,
//! and a word too long on its own between tokens.

use crate::{Encoded, Error, Result, TextEncoder};

/// Sentence-ending punctuation; after it comes whitespace (or the end) for a boundary.
const SENTENCE_END: &[char] = &['.', '!', '?', '…', '。', '！', '？'];
/// Closing marks that stay with the sentence they end (`He said "Go."`).
const CLOSERS: &[char] = &['"', '\'', ')', ']', '»', '”', '’'];
/// Full-width stops end a sentence even without a following space.
const FULL_WIDTH_END: &[char] = &['。', '！', '？'];

/// Character spans `[start, end)` of the sentences of `chars`; each keeps the whitespace that
/// follows it, so that the spans tile the text.
fn sentence_spans(chars: &[char], start: usize, end: usize) -> Vec<(usize, usize)> {
    let mut spans = Vec::new();
    let (mut from, mut i) = (start, start);
    while i < end {
        let c = chars[i];
        let mut stop = None;
        if c == '\n' {
            stop = Some(i + 1);
        } else if SENTENCE_END.contains(&c) {
            let mut j = i + 1;
            while j < end && CLOSERS.contains(&chars[j]) {
                j += 1;
            }
            if j == end || chars[j].is_whitespace() || FULL_WIDTH_END.contains(&c) {
                stop = Some(j);
            }
        }
        match stop {
            Some(mut e) => {
                while e < end && chars[e].is_whitespace() {
                    e += 1;
                }
                spans.push((from, e));
                from = e;
                i = e;
            }
            None => i += 1,
        }
    }
    if from < end {
        spans.push((from, end));
    }
    spans
}

/// Spans of the words of `chars[start..end]`, each with its trailing whitespace.
fn word_spans(chars: &[char], start: usize, end: usize) -> Vec<(usize, usize)> {
    let mut spans = Vec::new();
    let mut from = start;
    let mut i = start;
    while i < end {
        if chars[i].is_whitespace() {
            while i < end && chars[i].is_whitespace() {
                i += 1;
            }
            spans.push((from, i));
            from = i;
        } else {
            i += 1;
        }
    }
    if from < end {
        spans.push((from, end));
    }
    spans
}

/// Number of tokens that start in `[start, end)` (`starts` sorted).
fn tokens_in(starts: &[usize], start: usize, end: usize) -> usize {
    starts.partition_point(|&s| s < end) - starts.partition_point(|&s| s < start)
}

/// Units of at most `budget` tokens: sentences, else words, else runs of tokens.
fn units(chars: &[char], starts: &[usize], budget: usize) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    for (s, e) in sentence_spans(chars, 0, chars.len()) {
        if tokens_in(starts, s, e) <= budget {
            out.push((s, e));
            continue;
        }
        for (ws, we) in word_spans(chars, s, e) {
            if tokens_in(starts, ws, we) <= budget {
                out.push((ws, we));
                continue;
            }
            // One "word" longer than the budget (a URL, a run of symbols): cut between tokens.
            let inner: Vec<usize> = starts
                .iter()
                .copied()
                .filter(|&t| t >= ws && t < we)
                .collect();
            let mut from = ws;
            for piece in inner.chunks(budget.max(1)).skip(1) {
                out.push((from, piece[0]));
                from = piece[0];
            }
            out.push((from, we));
        }
    }
    out
}

/// Group consecutive units into chunks of at most `budget` tokens.
fn pack(units: &[(usize, usize)], starts: &[usize], budget: usize) -> Vec<(usize, usize)> {
    let mut chunks: Vec<(usize, usize)> = Vec::new();
    let mut current: Option<(usize, usize, usize)> = None; // start, end, tokens
    for &(s, e) in units {
        let n = tokens_in(starts, s, e);
        current = match current {
            Some((cs, _, ct)) if ct + n <= budget => Some((cs, e, ct + n)),
            Some((cs, ce, _)) => {
                chunks.push((cs, ce));
                Some((s, e, n))
            }
            None => Some((s, e, n)),
        };
    }
    if let Some((cs, ce, _)) = current {
        chunks.push((cs, ce));
    }
    chunks
}

/// A piece of a document that fits the encoder.
#[derive(Debug, Clone)]
pub struct Piece {
    /// The piece's text (without the prefix).
    pub text: String,
    /// `prefix + text`, tokenized with special tokens: what the model reads.
    pub encoded: Encoded,
}

/// Split `text` into pieces such that `prefix + piece` encodes to at most `limit` tokens
/// (special tokens included). A text that fits comes back whole, as the only piece.
pub fn split_to_fit(
    tokenizer: &TextEncoder,
    prefix: &str,
    text: &str,
    limit: usize,
) -> Result<Vec<Piece>> {
    let whole = tokenizer.encode(&format!("{prefix}{text}"))?;
    if whole.len() <= limit {
        return Ok(vec![Piece {
            text: text.to_string(),
            encoded: whole,
        }]);
    }
    let overhead = tokenizer.encode(prefix)?.len();
    let mut budget = limit
        .checked_sub(overhead)
        .filter(|&b| b > 0)
        .ok_or_else(|| {
            Error::Input(format!(
            "the input limit of {limit} tokens leaves no room for text after the prefix '{prefix}'"
        ))
        })?;
    let chars: Vec<char> = text.chars().collect();
    // Byte offset of every character (and of the end), to slice the text.
    let bytes: Vec<usize> = text
        .char_indices()
        .map(|(b, _)| b)
        .chain(std::iter::once(text.len()))
        .collect();
    // Where each token of the text starts, in characters of `text` (the prefix's tokens and
    // the special tokens are the overhead counted above).
    let skip = prefix.chars().count();
    let starts: Vec<usize> = whole
        .offsets
        .iter()
        .zip(&whole.special)
        .filter(|(&(s, _), &special)| !special && s >= skip)
        .map(|(&(s, _), _)| s - skip)
        .collect();
    // Tokens at a piece's edges can merge or split differently once the piece stands alone;
    // when a piece overshoots, shrink the budget by the overshoot and pack again.
    for _ in 0..8 {
        let mut pieces = Vec::new();
        let mut worst = 0;
        for (s, e) in pack(&units(&chars, &starts, budget), &starts, budget) {
            let piece = text[bytes[s]..bytes[e]].trim();
            if piece.is_empty() {
                continue;
            }
            let encoded = tokenizer.encode(&format!("{prefix}{piece}"))?;
            worst = worst.max(encoded.len().saturating_sub(limit));
            pieces.push(Piece {
                text: piece.to_string(),
                encoded,
            });
        }
        if worst == 0 {
            return Ok(pieces);
        }
        budget = budget.saturating_sub(worst);
        if budget == 0 {
            break;
        }
    }
    Err(Error::Input(format!(
        "cannot split the text into pieces of at most {limit} tokens"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spans(text: &str) -> Vec<String> {
        let chars: Vec<char> = text.chars().collect();
        sentence_spans(&chars, 0, chars.len())
            .into_iter()
            .map(|(s, e)| chars[s..e].iter().collect())
            .collect()
    }

    #[test]
    fn sentences_end_at_punctuation_before_space_and_at_newlines() {
        assert_eq!(
            spans("It rained. \"Go!\" he said.\nNew line 3.5 km"),
            vec!["It rained. ", "\"Go!\" ", "he said.\n", "New line 3.5 km"]
        );
        assert_eq!(
            spans("東京です。大阪です。"),
            vec!["東京です。", "大阪です。"]
        );
        assert_eq!(spans("e.g. this"), vec!["e.g. ", "this"]);
    }

    #[test]
    fn packing_never_exceeds_the_budget_and_covers_everything() {
        let text: Vec<char> = "aa bb. cc dd. ee.".chars().collect();
        // One token per word start.
        let starts = vec![0, 3, 7, 10, 14];
        let chunks = pack(&units(&text, &starts, 2), &starts, 2);
        assert_eq!(chunks, vec![(0, 7), (7, 14), (14, 17)]);
        // A sentence over budget falls back to words.
        let chunks = pack(&units(&text, &starts, 1), &starts, 1);
        assert_eq!(chunks.len(), 5);
        assert_eq!(chunks.last(), Some(&(14, 17)));
    }
}
