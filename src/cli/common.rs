//! Options shared by every command that loads a model.

use clap::Args;
use trident_core::{DeviceChoice, Dtype, HubOptions, ModelFiles};

/// Where the model comes from and where it runs.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Model")]
pub struct ModelArgs {
    /// A local directory (config.json, model.safetensors, tokenizer.json) or a Hugging Face
    /// Hub id such as `org/name` (optionally `@revision`); the command's default when omitted.
    #[arg(short, long, value_name = "DIR|HUB_ID")]
    pub model: Option<String>,

    /// Where to run: auto (CUDA when present, else CPU), cpu, cuda or mps.
    #[arg(long, default_value = "auto", value_name = "DEVICE", ignore_case = true, value_parser = choices::<DeviceChoice>(&[("auto", &[]), ("cpu", &[]), ("cuda", &["gpu"]), ("mps", &[])]))]
    pub device: DeviceChoice,

    /// Numeric format: f32 (exact, transformers' results), bf16 (half the memory traffic;
    /// fast on CPUs with AVX512-BF16 or AMX) or int8 (dynamic quantization of the linear
    /// layers). bf16 and int8 trade a little accuracy for speed: see BENCHMARKS.md.
    #[arg(long, default_value = "f32", value_name = "DTYPE", ignore_case = true, value_parser = choices::<Dtype>(&[("f32", &["float32", "float"]), ("bf16", &["bfloat16"]), ("int8", &["qint8"])]))]
    pub dtype: Dtype,

    /// Texts per forward pass.
    #[arg(long, default_value_t = 8, value_name = "N", value_parser = at_least_one)]
    pub batch_size: u64,
}

impl ModelArgs {
    /// Resolve `--model` (or `default`) to the model's files.
    ///
    /// A `--model` that is not a directory here but reads like a hub id (`weights/bert-tiny-ner`
    /// from another directory, `org/name`) is tried on the hub at once; when that fails, the
    /// error says both: no such local directory, and what the hub said.
    pub fn files(&self, default: &str) -> anyhow::Result<ModelFiles> {
        let spec = self.model.as_deref().unwrap_or(default);
        let files = ModelFiles::resolve(spec, HubOptions::from_env())?;
        if self.model.is_some() && matches!(files.source(), trident_core::files::Source::Hub { .. })
        {
            if let Err(e) = files.get("config.json") {
                let here = std::env::current_dir()
                    .map(|d| d.display().to_string())
                    .unwrap_or_else(|_| "the current directory".into());
                anyhow::bail!("no local directory `{spec}` in {here}; as a hub id it failed: {e}");
            }
        }
        Ok(files)
    }
}

/// A parser for a flag with a fixed set of values (each with its aliases) that the library
/// parses with `FromStr`: clap lists the values in `--help` and in errors, and suggests the
/// closest one for a typo (`--aggregation firts` → `first`).
pub fn choices<T>(
    values: &'static [(&'static str, &'static [&'static str])],
) -> impl clap::builder::TypedValueParser<Value = T>
where
    T: std::str::FromStr + Default + Clone + Send + Sync + 'static,
{
    use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
    PossibleValuesParser::new(
        values
            .iter()
            .map(|(name, aliases)| PossibleValue::new(*name).aliases(aliases.iter().copied())),
    )
    // Every listed value parses; the default is never reached.
    .map(|s| s.parse::<T>().unwrap_or_default())
}

/// `--batch-size` and other counts: a whole number of at least 1.
pub fn at_least_one(s: &str) -> Result<u64, String> {
    match s.parse::<u64>() {
        Ok(n) if n >= 1 => Ok(n),
        Ok(_) => Err("must be at least 1".into()),
        Err(_) => Err(format!("`{s}` is not a whole number (give 1 or more)")),
    }
}

impl ModelArgs {
    /// What stays fixed for the loaded model: device and numeric format.
    pub fn load_options(&self) -> trident_core::LoadOptions {
        trident_core::LoadOptions {
            device: self.device,
            dtype: self.dtype,
        }
    }
}

/// The library names options as its API does (`num_beams`, `stride`, model `x`); on the
/// command line they are flags. Each pair is an API name and the flag that sets it.
const FLAGS: &[(&str, &str)] = &[
    ("max_new_tokens", "--max-new-tokens"),
    ("min_new_tokens", "--min-new-tokens"),
    ("num_beams", "--num-beams"),
    ("num_return_sequences", "--num-return-sequences"),
    ("length_penalty", "--length-penalty"),
    ("no_repeat_ngram_size", "--no-repeat-ngram-size"),
    ("repetition_penalty", "--repetition-penalty"),
    ("early_stopping", "--early-stopping"),
    ("do_sample", "--do-sample"),
    ("temperature", "--temperature"),
    ("top_k", "--top-k"),
    ("top_p", "--top-p"),
    ("stop strings", "--stop-strings"),
    ("show_probs", "--show-probs"),
    ("batch_size", "--batch-size"),
    ("max_input_tokens", "--max-input-tokens"),
    ("stride", "--stride"),
    ("dtype", "--dtype"),
    ("device", "--device"),
    ("model", "--model"),
];

/// A library error message with the API's option names replaced by the flags that set them
/// (`num_beams must be at least 1` → `--num-beams must be at least 1`). Only whole words are
/// replaced, and `device`/`model` only where they name the option (`device cuda:`,
/// ``model `x` ``).
pub fn with_flags(message: &str) -> String {
    let mut out = message.to_string();
    for (name, flag) in FLAGS {
        let mut result = String::with_capacity(out.len());
        let mut rest = out.as_str();
        while let Some(at) = rest.find(name) {
            let (before, after) = (&rest[..at], &rest[at + name.len()..]);
            let boundary_before = before
                .chars()
                .next_back()
                .is_none_or(|c| !(c.is_alphanumeric() || c == '_' || c == '-'));
            let boundary_after = after
                .chars()
                .next()
                .is_none_or(|c| !(c.is_alphanumeric() || c == '_'));
            // Plain English words only count where they name the option's value.
            let names_option = match *name {
                "device" => after.starts_with(" cuda") || after.starts_with(" mps"),
                "model" => after.starts_with(" `"),
                "stride" => after.starts_with(' '),
                _ => true,
            };
            result.push_str(before);
            if boundary_before && boundary_after && names_option {
                result.push_str(flag);
            } else {
                result.push_str(name);
            }
            rest = after;
        }
        result.push_str(rest);
        out = result;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_names_become_flags_and_english_stays() {
        assert_eq!(
            with_flags("num_beams must be at least 1 (1 = no beam search)"),
            "--num-beams must be at least 1 (1 = no beam search)"
        );
        assert_eq!(
            with_flags("stride 9 must be smaller than the 8 text tokens"),
            "--stride 9 must be smaller than the 8 text tokens"
        );
        assert_eq!(
            with_flags("device cuda: no CUDA device is visible"),
            "--device cuda: no CUDA device is visible"
        );
        assert_eq!(
            with_flags("model `x/y`: no such directory; the model has 3 top_keys"),
            "--model `x/y`: no such directory; the model has 3 top_keys"
        );
    }
}
