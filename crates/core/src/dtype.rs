//! The numeric format a model computes in.

use crate::{Error, Result};
use std::fmt;
use std::str::FromStr;

/// The numeric format of a model's weights and arithmetic, chosen at load time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Dtype {
    /// 32-bit floats everywhere: the checkpoints' own precision and exact parity with
    /// transformers.
    #[default]
    F32,
    /// bfloat16 weights and activations (logits are returned as f32): half the memory
    /// traffic of f32 and, on CPUs with AVX512-BF16 or AMX, about twice its GEMM speed.
    /// Results differ from f32 in the third significant digit.
    Bf16,
    /// Dynamic int8 quantization of the linear layers, as `torch.quantization.quantize_dynamic`
    /// does: int8 weights with one scale per output channel, activations quantized per row at
    /// run time, integer products; embeddings, norms and attention stay f32.
    Int8,
}

impl Dtype {
    /// The names accepted by [`Dtype::from_str`] and `--dtype`.
    pub const NAMES: [&'static str; 3] = ["f32", "bf16", "int8"];
}

impl FromStr for Dtype {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "float32" | "float" => Ok(Dtype::F32),
            "bf16" | "bfloat16" => Ok(Dtype::Bf16),
            "int8" | "qint8" => Ok(Dtype::Int8),
            other => Err(Error::Input(format!(
                "unknown dtype `{other}`: use one of {}",
                Dtype::NAMES.join(", ")
            ))),
        }
    }
}

impl fmt::Display for Dtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Dtype::F32 => "f32",
            Dtype::Bf16 => "bf16",
            Dtype::Int8 => "int8",
        })
    }
}
