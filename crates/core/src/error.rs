//! The one error type of the workspace.
//!
//! Every message says what went wrong, where, and (when we know) how to fix it.

use std::path::PathBuf;

/// Everything that can go wrong while loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },

    /// A file the model needs is not there.
    #[error("{model}: missing {file}. {hint}")]
    MissingFile {
        /// The model directory or hub id.
        model: String,
        /// The file name that was looked for.
        file: String,
        /// How to provide it.
        hint: String,
    },

    /// A config file is malformed or holds a value we cannot use.
    #[error("config {path}: {message}")]
    Config {
        /// The config file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },

    /// The checkpoint asks for something this version does not implement.
    #[error("unsupported: {0}")]
    Unsupported(String),

    /// A weights file is corrupt, or lacks or mis-shapes a tensor.
    #[error("weights {path}: {message}")]
    Weights {
        /// The weights file (or directory for sharded checkpoints).
        path: PathBuf,
        /// What is wrong.
        message: String,
    },

    /// The tokenizer could not be loaded or failed on a text.
    #[error("tokenizer: {0}")]
    Tokenizer(String),

    /// The user's input or options cannot be used.
    #[error("invalid input: {0}")]
    Input(String),

    /// Talking to the Hugging Face Hub failed.
    #[error("hub: {0}")]
    Hub(String),

    /// libtorch reported an error (shape mismatch, out of memory, unavailable device, …).
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

/// `Result` with the workspace error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A config error for `path`.
    pub fn config(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::Config {
            path: path.into(),
            message: message.into(),
        }
    }

    /// A weights error for `path`.
    pub fn weights(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::Weights {
            path: path.into(),
            message: message.into(),
        }
    }

    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
