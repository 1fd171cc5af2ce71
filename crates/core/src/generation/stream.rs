//! What a caller can attach to a generation run: a callback that receives tokens as they are
//! produced (streaming), and the tokenizer's decoder, which stop strings need.

use crate::{Error, Result};

/// A token just produced for one output sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Token {
    /// Which output sequence (index into the result of `generate`).
    pub sequence: usize,
    /// The token id.
    pub id: i64,
}

/// Callback receiving each new token; an error it returns stops generation with that error.
pub type OnToken<'a> = &'a mut dyn FnMut(Token) -> Result<()>;

/// Turns generated ids into text (for stop strings).
pub type Detokenize<'a> = &'a dyn Fn(&[i64]) -> Result<String>;

/// Optional companions of a generation run.
///
/// Greedy search and sampling stream each token the step it is chosen. Beam search cannot
/// know which tokens survive until it ends, so it streams each returned sequence's tokens
/// once, at the end.
#[derive(Default)]
pub struct Hooks<'a> {
    /// Receives tokens as they are produced.
    pub on_token: Option<OnToken<'a>>,
    /// Decodes generated ids, so that `stop_strings` can be checked; required when the
    /// config has stop strings.
    pub detokenize: Option<Detokenize<'a>>,
}

impl Hooks<'_> {
    /// Pass `token` to the streaming callback, if any.
    pub(crate) fn emit(&mut self, token: Token) -> Result<()> {
        match self.on_token.as_mut() {
            Some(f) => f(token),
            None => Ok(()),
        }
    }
}

/// Stop strings with the decoder that checks them.
pub(crate) struct StopStrings<'a> {
    strings: &'a [String],
    detokenize: Option<Detokenize<'a>>,
}

impl<'a> StopStrings<'a> {
    /// An error when there are stop strings but nothing to decode ids with.
    pub(crate) fn new(strings: &'a [String], detokenize: Option<Detokenize<'a>>) -> Result<Self> {
        if !strings.is_empty() && detokenize.is_none() {
            return Err(Error::Input(
                "stop strings need the tokenizer's decoder: pass Hooks::detokenize".into(),
            ));
        }
        Ok(StopStrings {
            strings,
            detokenize,
        })
    }

    /// Whether the text of `generated` (new tokens only) contains a stop string. Checked after
    /// every token, so the first match ends inside the newest token.
    pub(crate) fn hit(&self, generated: &[i64]) -> Result<bool> {
        match self.detokenize {
            Some(decode) if !self.strings.is_empty() => {
                let text = decode(generated)?;
                Ok(self.strings.iter().any(|s| text.contains(s.as_str())))
            }
            _ => Ok(false),
        }
    }
}
