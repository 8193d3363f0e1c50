//! The catalogue: every model the router may pick, in the order it prefers them.
//!
//! Built from `[[models.catalog]]` in `revo.toml` (or the default hierarchy below) and checked
//! once at start: an unknown provider, a duplicate name, a price that is not a non-negative
//! decimal, or an entry missing what its provider needs is a start-up error, never a surprise
//! at request time.

use std::collections::HashSet;

use revo_events::UsdPerMtok;
use serde::{Deserialize, Serialize};

/// Who serves a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Provider {
    /// A model in Revo's registry, run by its engine (in-process or on `revo worker`s).
    Local,
    /// Ollama, vLLM, llama.cpp or any server speaking OpenAI's API on this network: free.
    OpenaiCompatible,
    Openai,
    Anthropic,
}

impl Provider {
    pub const ALL: [Provider; 4] = [
        Provider::Local,
        Provider::OpenaiCompatible,
        Provider::Openai,
        Provider::Anthropic,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Local => "local",
            Provider::OpenaiCompatible => "openai-compatible",
            Provider::Openai => "openai",
            Provider::Anthropic => "anthropic",
        }
    }

    pub fn parse(s: &str) -> Option<Provider> {
        Provider::ALL.into_iter().find(|p| p.as_str() == s)
    }

    /// Where the provider's API is when the entry names no `base_url`.
    pub fn default_base_url(self) -> Option<&'static str> {
        match self {
            Provider::Openai => Some("https://api.openai.com/v1"),
            Provider::Anthropic => Some("https://api.anthropic.com"),
            Provider::Local | Provider::OpenaiCompatible => None,
        }
    }

    /// Served on this machine or network, at no cost per token.
    pub fn is_local(self) -> bool {
        matches!(self, Provider::Local | Provider::OpenaiCompatible)
    }
}

/// Prices per million tokens, exact.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Prices {
    pub input_usd_per_mtok: UsdPerMtok,
    pub cached_input_usd_per_mtok: UsdPerMtok,
    pub cache_write_usd_per_mtok: UsdPerMtok,
    pub output_usd_per_mtok: UsdPerMtok,
}

/// One model of the catalogue, checked.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Entry {
    pub name: String,
    pub provider: Provider,
    /// The upstream id; for `local`, the registry name.
    pub model: String,
    pub base_url: Option<String>,
    /// The environment variable holding the API key (never the key itself).
    pub api_key_env: Option<String>,
    /// Lower is tried first.
    pub priority: i32,
    pub context_window: u32,
    pub max_output_tokens: u32,
    pub prices: Prices,
    pub capabilities: Vec<String>,
    pub tags: Vec<String>,
    /// The cascade's bar for this model's answers (`route: "cascade"`); `None`: the router's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub confidence_threshold: Option<f64>,
}

impl Entry {
    /// A registry model the catalogue does not list, asked for by name: local and free. Its
    /// window is the model's own (the engine refuses a prompt that does not fit).
    pub fn registry_model(name: &str) -> Entry {
        Entry {
            name: name.to_owned(),
            provider: Provider::Local,
            model: name.to_owned(),
            base_url: None,
            api_key_env: None,
            priority: 0,
            context_window: u32::MAX,
            max_output_tokens: REGISTRY_MAX_OUTPUT,
            prices: Prices::default(),
            capabilities: vec!["chat".into(), "completion".into()],
            tags: Vec::new(),
            confidence_threshold: None,
        }
    }
}

/// Most output tokens a registry model outside the catalogue is asked for.
pub const REGISTRY_MAX_OUTPUT: u32 = 4096;

/// `[[models.catalog]]` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntryFile {
    pub name: String,
    pub provider: String,
    pub model: Option<String>,
    pub base_url: Option<String>,
    pub api_key_env: Option<String>,
    pub priority: Option<i32>,
    pub context_window: Option<u32>,
    pub max_output_tokens: Option<u32>,
    pub input_usd_per_mtok: Option<String>,
    pub cached_input_usd_per_mtok: Option<String>,
    pub cache_write_usd_per_mtok: Option<String>,
    pub output_usd_per_mtok: Option<String>,
    pub capabilities: Option<Vec<String>>,
    pub tags: Option<Vec<String>>,
    pub confidence_threshold: Option<f64>,
}

/// The checked catalogue, ordered by priority (then name).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Catalog {
    pub entries: Vec<Entry>,
}

/// Longest name; names are also metric labels and URL segments.
const MAX_NAME: usize = 64;

impl Catalog {
    /// Checks every entry; the first problem found names the entry and what is wrong.
    pub fn from_files(files: Vec<EntryFile>) -> Result<Catalog, String> {
        let mut names = HashSet::new();
        let mut entries = Vec::with_capacity(files.len());
        for (i, f) in files.into_iter().enumerate() {
            let at = format!("[[models.catalog]] entry {} (`{}`)", i + 1, f.name);
            let name_ok = !f.name.is_empty()
                && f.name.len() <= MAX_NAME
                && f.name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b));
            if !name_ok {
                return Err(format!(
                    "{at}: a name is 1 to {MAX_NAME} letters, digits, `-`, `_`, `.` or `:`"
                ));
            }
            if !names.insert(f.name.clone()) {
                return Err(format!("{at}: the name is used twice"));
            }
            let provider = Provider::parse(&f.provider).ok_or_else(|| {
                let known: Vec<_> = Provider::ALL.iter().map(|p| p.as_str()).collect();
                format!(
                    "{at}: unknown provider `{}` (one of {})",
                    f.provider,
                    known.join(", ")
                )
            })?;
            let price = |field: &str, v: Option<String>| match v {
                None => Ok(UsdPerMtok::ZERO),
                Some(s) => UsdPerMtok::parse(&s).map_err(|e| format!("{at}: {field}: {e}")),
            };
            let prices = Prices {
                input_usd_per_mtok: price("input_usd_per_mtok", f.input_usd_per_mtok)?,
                cached_input_usd_per_mtok: price(
                    "cached_input_usd_per_mtok",
                    f.cached_input_usd_per_mtok,
                )?,
                cache_write_usd_per_mtok: price(
                    "cache_write_usd_per_mtok",
                    f.cache_write_usd_per_mtok,
                )?,
                output_usd_per_mtok: price("output_usd_per_mtok", f.output_usd_per_mtok)?,
            };
            let base_url = f
                .base_url
                .or_else(|| provider.default_base_url().map(str::to_owned));
            match (provider, &base_url) {
                (Provider::Local, Some(_)) => {
                    return Err(format!(
                        "{at}: a `local` model runs in Revo's engine and takes no base_url"
                    ))
                }
                (Provider::OpenaiCompatible, None) => {
                    return Err(format!(
                        "{at}: an `openai-compatible` model needs base_url (e.g. http://127.0.0.1:11434/v1)"
                    ))
                }
                (_, Some(url)) if !(url.starts_with("http://") || url.starts_with("https://")) => {
                    return Err(format!("{at}: base_url `{url}` is not an http(s) URL"))
                }
                _ => {}
            }
            let api_key_env = match (provider, f.api_key_env) {
                (Provider::Openai, None) => Some("OPENAI_API_KEY".to_owned()),
                (Provider::Anthropic, None) => Some("ANTHROPIC_API_KEY".to_owned()),
                (Provider::Local, Some(_)) => {
                    return Err(format!("{at}: a `local` model takes no api_key_env"))
                }
                (_, v) => v,
            };
            let context_window = f.context_window.unwrap_or(8192);
            let max_output_tokens = f.max_output_tokens.unwrap_or(context_window.min(4096));
            if context_window == 0 || max_output_tokens == 0 || max_output_tokens > context_window {
                return Err(format!(
                    "{at}: context_window and max_output_tokens must be positive, and \
                     max_output_tokens at most context_window"
                ));
            }
            if f.confidence_threshold
                .is_some_and(|t| !(0.0..=1.0).contains(&t))
            {
                return Err(format!("{at}: confidence_threshold is 0 to 1"));
            }
            entries.push(Entry {
                confidence_threshold: f.confidence_threshold,
                model: f.model.unwrap_or_else(|| f.name.clone()),
                name: f.name,
                provider,
                base_url,
                api_key_env,
                priority: f.priority.unwrap_or(100),
                context_window,
                max_output_tokens,
                prices,
                capabilities: f.capabilities.unwrap_or_default(),
                tags: f.tags.unwrap_or_default(),
            });
        }
        entries.sort_by(|a, b| (a.priority, &a.name).cmp(&(b.priority, &b.name)));
        Ok(Catalog { entries })
    }

    /// The product's hierarchy when `revo.toml` has no catalogue: the default local model;
    /// local slots for a DeepSeek-R1-class model (Ollama's default address) and a
    /// Llama-3.1-70B-class model (vLLM's), used once reachable; GPT-4o and Claude 3.5 Sonnet as
    /// cloud fallbacks, used once their keys are set. Cloud prices are the providers' list
    /// prices per million tokens.
    pub fn default_hierarchy() -> Catalog {
        let entry = |name: &str, provider: &str, model: &str| EntryFile {
            name: name.into(),
            provider: provider.into(),
            model: Some(model.into()),
            ..EntryFile::default()
        };
        let s = |v: &str| Some(v.to_owned());
        let files = vec![
            EntryFile {
                priority: Some(10),
                context_window: Some(8192),
                capabilities: Some(vec!["chat".into(), "completion".into()]),
                tags: Some(vec!["default".into()]),
                ..entry("smollm2", "local", "smollm2")
            },
            EntryFile {
                base_url: s("http://127.0.0.1:11434/v1"),
                priority: Some(20),
                context_window: Some(131_072),
                max_output_tokens: Some(32_768),
                capabilities: Some(vec!["chat".into(), "reasoning".into()]),
                ..entry("deepseek-r1", "openai-compatible", "deepseek-r1")
            },
            EntryFile {
                base_url: s("http://127.0.0.1:8000/v1"),
                priority: Some(30),
                context_window: Some(131_072),
                max_output_tokens: Some(8192),
                capabilities: Some(vec!["chat".into(), "tools".into()]),
                ..entry(
                    "llama-3.1-70b",
                    "openai-compatible",
                    "meta-llama/Llama-3.1-70B-Instruct",
                )
            },
            EntryFile {
                priority: Some(40),
                context_window: Some(128_000),
                max_output_tokens: Some(16_384),
                input_usd_per_mtok: s("2.50"),
                cached_input_usd_per_mtok: s("1.25"),
                output_usd_per_mtok: s("10.00"),
                capabilities: Some(vec!["chat".into(), "tools".into(), "vision".into()]),
                tags: Some(vec!["cloud".into()]),
                ..entry("gpt-4o", "openai", "gpt-4o")
            },
            EntryFile {
                priority: Some(50),
                context_window: Some(200_000),
                max_output_tokens: Some(8192),
                input_usd_per_mtok: s("3.00"),
                cached_input_usd_per_mtok: s("0.30"),
                cache_write_usd_per_mtok: s("3.75"),
                output_usd_per_mtok: s("15.00"),
                capabilities: Some(vec!["chat".into(), "tools".into(), "vision".into()]),
                tags: Some(vec!["cloud".into()]),
                ..entry(
                    "claude-3.5-sonnet",
                    "anthropic",
                    "claude-3-5-sonnet-20241022",
                )
            },
        ];
        // The default is written here and checked by a test: it cannot fail.
        Catalog::from_files(files).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(f: EntryFile) -> Result<Catalog, String> {
        Catalog::from_files(vec![f])
    }

    fn file(name: &str, provider: &str) -> EntryFile {
        EntryFile {
            name: name.into(),
            provider: provider.into(),
            ..EntryFile::default()
        }
    }

    #[test]
    fn the_default_hierarchy_is_valid_and_ordered_local_first() {
        let c = Catalog::default_hierarchy();
        let names: Vec<_> = c.entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "smollm2",
                "deepseek-r1",
                "llama-3.1-70b",
                "gpt-4o",
                "claude-3.5-sonnet"
            ]
        );
        let gpt = &c.entries[3];
        assert_eq!(gpt.api_key_env.as_deref(), Some("OPENAI_API_KEY"));
        assert_eq!(gpt.prices.output_usd_per_mtok.micros(), 10_000_000);
        assert!(c.entries[..3]
            .iter()
            .all(|e| e.provider.is_local() && e.prices == Prices::default()));
    }

    #[test]
    fn bad_entries_are_refused_with_what_is_wrong() {
        let cases: Vec<(EntryFile, &str)> = vec![
            (file("x", "ollama"), "unknown provider `ollama`"),
            (
                EntryFile {
                    output_usd_per_mtok: Some("-1".into()),
                    ..file("x", "openai")
                },
                "output_usd_per_mtok",
            ),
            (
                EntryFile {
                    input_usd_per_mtok: Some("0.0000001".into()),
                    ..file("x", "openai")
                },
                "more than 6 decimals",
            ),
            (file("x", "openai-compatible"), "needs base_url"),
            (
                EntryFile {
                    base_url: Some("http://h".into()),
                    ..file("x", "local")
                },
                "takes no base_url",
            ),
            (
                EntryFile {
                    base_url: Some("ftp://h".into()),
                    ..file("x", "openai-compatible")
                },
                "not an http(s) URL",
            ),
            (file("bad name", "local"), "a name is"),
            (
                EntryFile {
                    max_output_tokens: Some(9000),
                    context_window: Some(8000),
                    ..file("x", "local")
                },
                "at most context_window",
            ),
        ];
        for (f, want) in cases {
            let e = one(f).unwrap_err();
            assert!(e.contains(want), "{e} does not say {want}");
        }
        // Without max_output_tokens, a small window bounds the default.
        let small = one(EntryFile {
            context_window: Some(2048),
            ..file("x", "local")
        });
        assert_eq!(small.unwrap().entries[0].max_output_tokens, 2048);
        let twice = Catalog::from_files(vec![file("x", "local"), file("x", "openai")]);
        assert!(twice.unwrap_err().contains("used twice"));
    }
}
