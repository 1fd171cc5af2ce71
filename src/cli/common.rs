//! Options shared by every command that loads a model.

use clap::Args;
use trident_core::{DeviceChoice, Dtype, HubOptions, ModelFiles};

/// Where the model comes from and where it runs.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// A local directory (config.json, model.safetensors, tokenizer.json) or a Hugging Face
    /// Hub id such as `org/name` (optionally `@revision`); the command's default when omitted.
    #[arg(short, long, value_name = "DIR|HUB_ID")]
    pub model: Option<String>,

    /// Where to run: auto (CUDA when present, else CPU), cpu, cuda or mps.
    #[arg(long, default_value = "auto", value_name = "DEVICE")]
    pub device: DeviceChoice,

    /// Numeric format: f32 (exact, transformers' results), bf16 (half the memory traffic;
    /// fast on CPUs with AVX512-BF16 or AMX) or int8 (dynamic quantization of the linear
    /// layers). bf16 and int8 trade a little accuracy for speed: see BENCHMARKS.md.
    #[arg(long, default_value = "f32", value_name = "DTYPE")]
    pub dtype: Dtype,

    /// Texts per forward pass.
    #[arg(long, default_value_t = 8, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub batch_size: u64,
}

impl ModelArgs {
    /// Resolve `--model` (or `default`) to the model's files.
    pub fn files(&self, default: &str) -> anyhow::Result<ModelFiles> {
        let spec = self.model.as_deref().unwrap_or(default);
        Ok(ModelFiles::resolve(spec, HubOptions::from_env())?)
    }
}
