//! Finding a model's files: a local directory, or a Hugging Face Hub id resolved
//! through the standard HF cache (`$HF_HOME/hub/models--org--name/snapshots/REV/FILE`).

use crate::{Error, Result};
use std::path::{Path, PathBuf};

/// Where a model's files come from.
#[derive(Debug, Clone)]
pub enum Source {
    /// A directory on disk holding config.json, weights and tokenizer files.
    Local(PathBuf),
    /// A hub repository, read from the HF cache and downloaded when online.
    Hub {
        /// `org/name`.
        id: String,
        /// Branch, tag or commit (default `main`).
        revision: String,
    },
}

/// How to reach the hub.
#[derive(Debug, Clone)]
pub struct HubOptions {
    /// The cache directory (`.../huggingface/hub`).
    pub cache_dir: PathBuf,
    /// Never touch the network (`HF_HUB_OFFLINE=1`).
    pub offline: bool,
    /// Access token for gated or private repositories (`HF_TOKEN`).
    pub token: Option<String>,
    /// Hub endpoint (`HF_ENDPOINT`, default `https://huggingface.co`).
    pub endpoint: String,
    /// Show download progress bars.
    pub progress: bool,
}

fn env_flag(name: &str) -> bool {
    std::env::var(name)
        .map(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
        .unwrap_or(false)
}

impl HubOptions {
    /// Read the standard Hugging Face environment variables:
    /// `HF_HUB_CACHE`, `HF_HOME`, `XDG_CACHE_HOME`, `HF_HUB_OFFLINE` (or `TRANSFORMERS_OFFLINE`),
    /// `HF_TOKEN`, `HF_ENDPOINT`.
    pub fn from_env() -> Self {
        let var = |n: &str| {
            std::env::var_os(n)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        let cache_dir = var("HF_HUB_CACHE")
            .or_else(|| var("HF_HOME").map(|h| h.join("hub")))
            .or_else(|| var("XDG_CACHE_HOME").map(|x| x.join("huggingface").join("hub")))
            .or_else(|| var("HOME").map(|h| h.join(".cache").join("huggingface").join("hub")))
            .unwrap_or_else(|| PathBuf::from(".cache/huggingface/hub"));
        HubOptions {
            cache_dir,
            offline: env_flag("HF_HUB_OFFLINE") || env_flag("TRANSFORMERS_OFFLINE"),
            token: std::env::var("HF_TOKEN").ok().filter(|t| !t.is_empty()),
            endpoint: std::env::var("HF_ENDPOINT")
                .ok()
                .filter(|e| !e.is_empty())
                .unwrap_or_else(|| "https://huggingface.co".to_string()),
            progress: true,
        }
    }
}

/// A model's files, looked up one by one as the loader needs them.
#[derive(Debug, Clone)]
pub struct ModelFiles {
    source: Source,
    hub: HubOptions,
}

/// Whether `spec` is written like a hub id (`name` or `org/name`), not like a path.
fn looks_like_hub_id(spec: &str) -> bool {
    let ok_chars = spec
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
    let parts: Vec<&str> = spec.split('/').collect();
    ok_chars
        && parts.len() <= 2
        && parts
            .iter()
            .all(|p| !p.is_empty() && !p.starts_with('.') && !p.ends_with('.'))
        && !spec.contains("..")
}

impl ModelFiles {
    /// Resolve a model name: an existing directory is used as is; anything written like a hub id
    /// (`gpt2`, `dslim/bert-base-NER`, optionally `@revision`) goes through the HF cache.
    pub fn resolve(spec: &str, hub: HubOptions) -> Result<Self> {
        let spec = spec.trim();
        if spec.is_empty() {
            return Err(Error::Input(
                "the model name is empty: give a directory or a hub id".into(),
            ));
        }
        let path = Path::new(spec);
        if path.is_dir() {
            return Ok(ModelFiles {
                source: Source::Local(path.to_path_buf()),
                hub,
            });
        }
        if path.exists() {
            return Err(Error::Input(format!(
                "model `{spec}` is a file; give the directory that holds config.json and the weights"
            )));
        }
        let (id, revision) = match spec.split_once('@') {
            Some((id, rev)) if !rev.is_empty() => (id, rev.to_string()),
            _ => (spec, "main".to_string()),
        };
        if !looks_like_hub_id(id) {
            return Err(Error::Input(format!(
                "model `{spec}`: no such directory, and it is not a hub id like `org/name`"
            )));
        }
        Ok(ModelFiles {
            source: Source::Hub {
                id: id.to_string(),
                revision,
            },
            hub,
        })
    }

    /// A local directory.
    pub fn local(dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        if !dir.is_dir() {
            return Err(Error::Input(format!(
                "model directory {} does not exist",
                dir.display()
            )));
        }
        Ok(ModelFiles {
            source: Source::Local(dir),
            hub: HubOptions::from_env(),
        })
    }

    /// Where the files come from.
    pub fn source(&self) -> &Source {
        &self.source
    }

    /// A short name for messages: the directory or the hub id.
    pub fn name(&self) -> String {
        match &self.source {
            Source::Local(dir) => dir.display().to_string(),
            Source::Hub { id, .. } => id.clone(),
        }
    }

    /// The path of `file`, downloading it when it is a hub file not yet cached.
    /// Errors when the file does not exist.
    pub fn get(&self, file: &str) -> Result<PathBuf> {
        self.get_optional(file)?.ok_or_else(|| self.missing(file))
    }

    /// The error for a missing `file`, with how to provide it.
    pub fn missing(&self, file: &str) -> Error {
        let hint = match &self.source {
            Source::Local(_) => {
                "Put it in the model directory (the files a Hugging Face model repository holds)."
                    .to_string()
            }
            Source::Hub { .. } if self.hub.offline => format!(
                "HF_HUB_OFFLINE is set and it is not in the cache at {}: unset HF_HUB_OFFLINE \
                 to download it, or give the model as a local directory.",
                self.hub.cache_dir.display()
            ),
            Source::Hub { .. } => "The repository does not have it.".to_string(),
        };
        Error::MissingFile {
            model: self.name(),
            file: file.to_string(),
            hint,
        }
    }

    /// The path of `file`, or `None` when the model does not have it.
    pub fn get_optional(&self, file: &str) -> Result<Option<PathBuf>> {
        match &self.source {
            Source::Local(dir) => {
                let p = dir.join(file);
                Ok(p.is_file().then_some(p))
            }
            Source::Hub { id, revision } => self.hub_get(id, revision, file),
        }
    }

    fn hub_get(&self, id: &str, revision: &str, file: &str) -> Result<Option<PathBuf>> {
        use hf_hub::{Cache, Repo, RepoType};
        let repo = Repo::with_revision(id.to_string(), RepoType::Model, revision.to_string());
        let cache = Cache::new(self.hub.cache_dir.clone());
        if let Some(path) = cache.repo(repo.clone()).get(file) {
            return Ok(Some(path));
        }
        // The cache also records files known to be absent (`.no_exist/REV/FILE`).
        let cached_absent = self
            .hub
            .cache_dir
            .join(repo.folder_name())
            .join(".no_exist");
        if cached_absent.is_dir() {
            if let Ok(entries) = std::fs::read_dir(&cached_absent) {
                for e in entries.flatten() {
                    if e.path().join(file).exists() {
                        return Ok(None);
                    }
                }
            }
        }
        if self.hub.offline {
            // Offline with nothing cached: optional files are simply absent; required ones
            // get the error from `get`, which names the cache and the fix.
            if self.hub.cache_dir.join(repo.folder_name()).is_dir() {
                return Ok(None);
            }
            return Err(Error::Hub(format!(
                "{id} is not in the cache at {} and HF_HUB_OFFLINE is set: unset it to download, \
                 or give the model as a local directory",
                self.hub.cache_dir.display()
            )));
        }
        let api = hf_hub::api::sync::ApiBuilder::from_cache(cache)
            .with_endpoint(self.hub.endpoint.clone())
            .with_token(self.hub.token.clone())
            .with_progress(self.hub.progress)
            .build()
            .map_err(|e| Error::Hub(format!("cannot set up the hub client: {e}")))?;
        match api.repo(repo).download(file) {
            Ok(path) => Ok(Some(path)),
            Err(hf_hub::api::sync::ApiError::RequestError(e))
                if matches!(*e, ureq::Error::Status(404, _)) =>
            {
                Ok(None)
            }
            Err(hf_hub::api::sync::ApiError::RequestError(e))
                if matches!(*e, ureq::Error::Status(401 | 403, _)) =>
            {
                Err(Error::Hub(format!(
                    "{id}: access denied for {file}; the repository may be gated or private: \
                     set HF_TOKEN to a token with access"
                )))
            }
            Err(e) => Err(Error::Hub(format!(
                "cannot download {file} of {id} from {}: {e}. Check the network, or set \
                 HF_HUB_OFFLINE=1 to use only the cache at {}, or give the model as a local directory",
                self.hub.endpoint,
                self.hub.cache_dir.display()
            ))),
        }
    }
}

/// Whether the hub answers within a short timeout (for `trident doctor`).
pub fn hub_reachable(hub: &HubOptions) -> std::result::Result<(), String> {
    if hub.offline {
        return Err("HF_HUB_OFFLINE is set".into());
    }
    let agent = ureq::AgentBuilder::new()
        .timeout(std::time::Duration::from_secs(5))
        .build();
    match agent
        .head(&format!("{}/api/models/gpt2", hub.endpoint))
        .call()
    {
        Ok(_) => Ok(()),
        Err(ureq::Error::Status(code, _)) if code < 500 => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub_in(dir: &Path, offline: bool) -> HubOptions {
        HubOptions {
            cache_dir: dir.to_path_buf(),
            offline,
            token: None,
            endpoint: "http://127.0.0.1:9".into(),
            progress: false,
        }
    }

    #[test]
    fn hub_ids_and_paths_are_told_apart() {
        assert!(looks_like_hub_id("gpt2"));
        assert!(looks_like_hub_id("dslim/bert-base-NER"));
        assert!(!looks_like_hub_id("./weights/x"));
        assert!(!looks_like_hub_id("/abs/path"));
        assert!(!looks_like_hub_id("a/b/c"));
        assert!(!looks_like_hub_id("../x"));
    }

    #[test]
    fn resolves_files_from_a_standard_hf_cache_offline() {
        let tmp = std::env::temp_dir().join(format!("trident-cache-{}", std::process::id()));
        let snap = tmp.join("models--org--tiny/snapshots/abc123");
        std::fs::create_dir_all(&snap).unwrap();
        std::fs::create_dir_all(tmp.join("models--org--tiny/refs")).unwrap();
        std::fs::write(tmp.join("models--org--tiny/refs/main"), "abc123").unwrap();
        std::fs::write(snap.join("config.json"), "{}").unwrap();

        let files = ModelFiles::resolve("org/tiny", hub_in(&tmp, true)).unwrap();
        assert_eq!(files.get("config.json").unwrap(), snap.join("config.json"));
        assert!(files.get_optional("tokenizer.json").unwrap().is_none());
        let err = files.get("model.safetensors").unwrap_err().to_string();
        assert!(err.contains("HF_HUB_OFFLINE"), "{err}");

        let err = ModelFiles::resolve("org/absent", hub_in(&tmp, true))
            .unwrap()
            .get("config.json")
            .unwrap_err()
            .to_string();
        assert!(err.contains("not in the cache"), "{err}");
        std::fs::remove_dir_all(&tmp).unwrap();
    }

    #[test]
    fn a_missing_directory_is_a_clear_error() {
        let err = ModelFiles::resolve("./no/such/dir", HubOptions::from_env())
            .unwrap_err()
            .to_string();
        assert!(err.contains("no such directory"), "{err}");
    }
}
