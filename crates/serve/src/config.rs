//! The server's settings: command-line flags (in the `trident` binary), a TOML file
//! (`--config serve.toml`) and `TRIDENT_*` environment variables, as containers expect.
//! Precedence: flags over the environment over the file over the defaults.

use serde::Deserialize;
use std::path::Path;

/// One model to serve: the name clients use (`ner`, `gen`, …) and where it comes from.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ModelSpec {
    /// The name in routes' `model` field and in `/v1/models`.
    pub name: String,
    /// A local directory or a hub id.
    pub source: String,
    /// The task, when it should not be read from the checkpoint (`ner`, `classify`, `embed`,
    /// `summarize`, `translate`, `generate`).
    #[serde(default)]
    pub task: Option<String>,
}

impl ModelSpec {
    /// Parse `NAME=SOURCE`, `NAME:TASK=SOURCE` or a bare `SOURCE` (named after its last path
    /// component).
    pub fn parse(spec: &str) -> Result<Self, String> {
        let (name, source) = match spec.split_once('=') {
            Some((n, s)) => (n.trim().to_string(), s.trim().to_string()),
            None => {
                let s = spec.trim().trim_end_matches('/');
                let n = s.rsplit('/').next().unwrap_or(s);
                (n.to_string(), s.to_string())
            }
        };
        let (name, task) = match name.split_once(':') {
            Some((n, t)) => (n.to_string(), Some(t.to_string())),
            None => (name, None),
        };
        if name.is_empty() || source.is_empty() {
            return Err(format!(
                "--model '{spec}': give NAME=DIR|HUB_ID (e.g. ner=dslim/bert-base-NER), optionally NAME:TASK=…"
            ));
        }
        Ok(ModelSpec { name, source, task })
    }
}

/// Every setting of `trident serve`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServeConfig {
    /// Address to listen on.
    pub host: String,
    /// Port to listen on (0: any free port).
    pub port: u16,
    /// The models; empty: the CLI's default models.
    pub models: Vec<ModelSpec>,
    /// Most tokens in one encoder batch (requests are packed up to it, shortest first). It
    /// bounds the server's peak memory: at 4,096, NER's peak RSS grew 12–15 % from 16 to 64
    /// clients (batches of ~26 paragraphs); at 2,048 it stayed flat at the same throughput.
    pub max_batch_tokens: usize,
    /// Most requests in one batch.
    pub max_batch_requests: usize,
    /// Requests in flight at once; beyond it the server answers 429 with `Retry-After`.
    pub max_concurrent_requests: usize,
    /// Longest input in tokens an encoder request may have (longer: 413; NER and
    /// summaries split long texts themselves, so this bounds the work per input).
    pub max_input_tokens: usize,
    /// Most inputs in one request.
    pub max_client_batch_size: usize,
    /// Largest request body in bytes (larger: 413).
    pub max_payload_bytes: usize,
    /// Seconds a request may take before it is answered 504 (its generation is stopped).
    pub request_timeout_s: u64,
    /// Most new tokens a generation request may ask for.
    pub max_new_tokens: usize,
    /// When set, every route but `/health` needs `Authorization: Bearer <key>`.
    pub api_key: Option<String>,
    /// Access log as JSON lines on stderr (else readable lines).
    pub json_log: bool,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            host: "127.0.0.1".into(),
            port: 8080,
            models: Vec::new(),
            max_batch_tokens: 2_048,
            max_batch_requests: 64,
            max_concurrent_requests: 512,
            max_input_tokens: 8_192,
            max_client_batch_size: 64,
            max_payload_bytes: 2 * 1024 * 1024,
            request_timeout_s: 300,
            max_new_tokens: 1_024,
            api_key: None,
            json_log: false,
        }
    }
}

impl ServeConfig {
    /// Read a TOML file with any of the fields (`[[models]]` tables with `name`, `source`,
    /// `task`).
    pub fn from_toml(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Apply `TRIDENT_HOST`, `TRIDENT_PORT`, `TRIDENT_MODELS` (comma-separated specs),
    /// `TRIDENT_MAX_BATCH_TOKENS`, `TRIDENT_MAX_BATCH_REQUESTS`,
    /// `TRIDENT_MAX_CONCURRENT_REQUESTS`, `TRIDENT_MAX_INPUT_TOKENS`,
    /// `TRIDENT_MAX_CLIENT_BATCH_SIZE`, `TRIDENT_MAX_PAYLOAD_BYTES`,
    /// `TRIDENT_REQUEST_TIMEOUT`, `TRIDENT_MAX_NEW_TOKENS`, `TRIDENT_API_KEY`,
    /// `TRIDENT_JSON_LOG` from `env` (a lookup, so tests need not touch the process's).
    pub fn apply_env(&mut self, env: impl Fn(&str) -> Option<String>) -> Result<(), String> {
        fn num<T: std::str::FromStr>(name: &str, v: &str) -> Result<T, String> {
            v.trim()
                .parse()
                .map_err(|_| format!("{name}={v:?} is not a valid number"))
        }
        if let Some(v) = env("TRIDENT_HOST") {
            self.host = v;
        }
        if let Some(v) = env("TRIDENT_PORT") {
            self.port = num("TRIDENT_PORT", &v)?;
        }
        if let Some(v) = env("TRIDENT_MODELS") {
            self.models = v
                .split(',')
                .filter(|s| !s.trim().is_empty())
                .map(ModelSpec::parse)
                .collect::<Result<_, _>>()?;
        }
        let sizes: [(&str, &mut usize); 7] = [
            ("TRIDENT_MAX_BATCH_TOKENS", &mut self.max_batch_tokens),
            ("TRIDENT_MAX_BATCH_REQUESTS", &mut self.max_batch_requests),
            (
                "TRIDENT_MAX_CONCURRENT_REQUESTS",
                &mut self.max_concurrent_requests,
            ),
            ("TRIDENT_MAX_INPUT_TOKENS", &mut self.max_input_tokens),
            (
                "TRIDENT_MAX_CLIENT_BATCH_SIZE",
                &mut self.max_client_batch_size,
            ),
            ("TRIDENT_MAX_PAYLOAD_BYTES", &mut self.max_payload_bytes),
            ("TRIDENT_MAX_NEW_TOKENS", &mut self.max_new_tokens),
        ];
        for (name, field) in sizes {
            if let Some(v) = env(name) {
                *field = num(name, &v)?;
            }
        }
        if let Some(v) = env("TRIDENT_REQUEST_TIMEOUT") {
            self.request_timeout_s = num("TRIDENT_REQUEST_TIMEOUT", &v)?;
        }
        if let Some(v) = env("TRIDENT_API_KEY").filter(|v| !v.is_empty()) {
            self.api_key = Some(v);
        }
        if let Some(v) = env("TRIDENT_JSON_LOG") {
            self.json_log = matches!(v.trim(), "1" | "true" | "yes");
        }
        Ok(())
    }

    /// Check the limits make sense.
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("max_batch_tokens", self.max_batch_tokens),
            ("max_batch_requests", self.max_batch_requests),
            ("max_concurrent_requests", self.max_concurrent_requests),
            ("max_input_tokens", self.max_input_tokens),
            ("max_client_batch_size", self.max_client_batch_size),
            ("max_payload_bytes", self.max_payload_bytes),
            ("max_new_tokens", self.max_new_tokens),
        ];
        for (name, v) in positive {
            if v == 0 {
                return Err(format!("{name} must be at least 1"));
            }
        }
        if self.request_timeout_s == 0 {
            return Err("request_timeout must be at least 1 second".into());
        }
        let mut names: Vec<&str> = self.models.iter().map(|m| m.name.as_str()).collect();
        names.sort_unstable();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(format!(
                "two models are named '{}': give each --model its own NAME=",
                w[0]
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_specs_parse_with_names_and_tasks() {
        let m = ModelSpec::parse("ner=dslim/bert-base-NER").unwrap();
        assert_eq!(
            (m.name.as_str(), m.source.as_str(), m.task),
            ("ner", "dslim/bert-base-NER", None)
        );
        let m = ModelSpec::parse("fast:classify=weights/bert-tiny-sentiment").unwrap();
        assert_eq!(m.task.as_deref(), Some("classify"));
        assert_eq!(
            ModelSpec::parse("weights/gpt2-tiny/").unwrap().name,
            "gpt2-tiny"
        );
        assert!(ModelSpec::parse("ner=").is_err());
    }

    #[test]
    fn the_environment_and_a_file_set_fields() {
        let mut c = ServeConfig::default();
        let env = |k: &str| match k {
            "TRIDENT_PORT" => Some("9000".to_string()),
            "TRIDENT_MODELS" => Some("a=x,b:embed=y".to_string()),
            "TRIDENT_MAX_BATCH_TOKENS" => Some("100".to_string()),
            _ => None,
        };
        c.apply_env(env).unwrap();
        assert_eq!((c.port, c.models.len(), c.max_batch_tokens), (9000, 2, 100));
        let bad = |k: &str| (k == "TRIDENT_PORT").then(|| "lots".to_string());
        assert!(c.apply_env(bad).unwrap_err().contains("TRIDENT_PORT"));
        let t: ServeConfig = toml::from_str(
            "port = 7\n[[models]]\nname = \"ner\"\nsource = \"dslim/bert-base-NER\"\n",
        )
        .unwrap();
        assert_eq!((t.port, t.models[0].name.as_str()), (7, "ner"));
        assert!(toml::from_str::<ServeConfig>("prot = 7").is_err());
        let dup = ServeConfig {
            models: vec![
                ModelSpec::parse("a=x").unwrap(),
                ModelSpec::parse("a=y").unwrap(),
            ],
            ..Default::default()
        };
        assert!(dup.validate().unwrap_err().contains("two models"));
    }
}
