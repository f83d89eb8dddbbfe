//! Configuration: built-in defaults, then a TOML file, then `HERALD_*` environment variables,
//! then command-line flags; each layer overrides the one before. Every value is validated once,
//! here, and a bad one fails start-up with an error that names its key and where it came from.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Where a value came from, so an error can point at it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Default,
    File,
    Env,
    Flag,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    ReadFile { path: PathBuf, source: std::io::Error },
    #[error("config file {path}: {message}")]
    ParseFile { path: PathBuf, message: String },
    #[error("invalid value for `{key}` (from {origin}): {message}")]
    Invalid { key: &'static str, origin: String, message: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// Values as written in one layer; `None` means "not set here".
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Layer {
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub database_url: Option<String>,
    pub admin_token: Option<String>,
    pub secret_key: Option<String>,
    pub log_format: Option<String>,
    pub log_level: Option<String>,
    pub max_body_bytes: Option<String>,
    pub admin_session_ttl_seconds: Option<String>,
}

/// The environment variable for each key: `HERALD_` and the key in upper case.
const ENV_KEYS: &[&str] = &[
    "listen",
    "data_dir",
    "database_url",
    "admin_token",
    "secret_key",
    "log_format",
    "log_level",
    "max_body_bytes",
    "admin_session_ttl_seconds",
];

/// Variables that are not config keys but are read elsewhere.
const OTHER_ENV: &[&str] = &["HERALD_CONFIG"];

fn env_name(key: &str) -> String {
    format!("HERALD_{}", key.to_ascii_uppercase())
}

impl Layer {
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::ReadFile { path: path.to_owned(), source })?;
        // Numbers in TOML are accepted as numbers or strings; normalise to strings so that
        // every layer goes through the same validation.
        let value: toml::Table = text.parse().map_err(|e: toml::de::Error| ConfigError::ParseFile {
            path: path.to_owned(),
            message: e.message().to_owned(),
        })?;
        let mut normalised = toml::Table::new();
        for (key, val) in value {
            let val = match val {
                toml::Value::Integer(i) => toml::Value::String(i.to_string()),
                other => other,
            };
            normalised.insert(key, val);
        }
        Layer::deserialize(toml::Value::Table(normalised))
            .map_err(|e| ConfigError::ParseFile { path: path.to_owned(), message: e.message().to_owned() })
    }

    /// Reads `HERALD_*` variables. Unknown `HERALD_*` names are returned so the caller can warn
    /// about likely typos.
    pub fn from_env(vars: impl Iterator<Item = (String, String)>) -> (Self, Vec<String>) {
        let mut layer = Layer::default();
        let mut unknown = Vec::new();
        for (name, value) in vars {
            let Some(key) = ENV_KEYS.iter().find(|k| env_name(k) == name) else {
                if name.starts_with("HERALD_") && !OTHER_ENV.contains(&name.as_str()) {
                    unknown.push(name);
                }
                continue;
            };
            let slot = match *key {
                "listen" => &mut layer.listen,
                "database_url" => &mut layer.database_url,
                "admin_token" => &mut layer.admin_token,
                "secret_key" => &mut layer.secret_key,
                "log_format" => &mut layer.log_format,
                "log_level" => &mut layer.log_level,
                "max_body_bytes" => &mut layer.max_body_bytes,
                "admin_session_ttl_seconds" => &mut layer.admin_session_ttl_seconds,
                "data_dir" => {
                    layer.data_dir = Some(PathBuf::from(value));
                    continue;
                }
                _ => unreachable!("every ENV_KEYS entry is matched"),
            };
            *slot = Some(value);
        }
        (layer, unknown)
    }
}

/// The validated configuration a node runs with.
#[derive(Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub database_url: String,
    pub admin_token: Option<String>,
    pub secret_key: Option<String>,
    pub log_format: LogFormat,
    pub log_level: String,
    pub max_body_bytes: usize,
    pub admin_session_ttl_seconds: u64,
}

impl std::fmt::Debug for Config {
    // Hand-written so that secrets never reach a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("data_dir", &self.data_dir)
            .field("database_url", &redact_url(&self.database_url))
            .field("admin_token", &self.admin_token.as_ref().map(|_| "<set>"))
            .field("secret_key", &self.secret_key.as_ref().map(|_| "<set>"))
            .field("log_format", &self.log_format)
            .field("log_level", &self.log_level)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("admin_session_ttl_seconds", &self.admin_session_ttl_seconds)
            .finish()
    }
}

/// `postgres://user:secret@host/db` becomes `postgres://user:***@host/db`.
pub fn redact_url(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://")
        && let Some((creds, host)) = rest.split_once('@')
        && let Some((user, _)) = creds.split_once(':')
    {
        return format!("{scheme}://{user}:***@{host}");
    }
    url.to_owned()
}

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_DATA_DIR: &str = "./data";
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;
pub const DEFAULT_ADMIN_SESSION_TTL: u64 = 900;

/// Picks, for one key, the value of the highest layer that sets it.
fn pick<T: Clone>(layers: &[(Source, &Layer)], get: impl Fn(&Layer) -> Option<T>) -> Option<(T, Source)> {
    layers.iter().rev().find_map(|(src, layer)| get(layer).map(|v| (v, *src)))
}

fn origin(key: &str, source: Source) -> String {
    match source {
        Source::Default => "the default".into(),
        Source::File => "the config file".into(),
        Source::Env => env_name(key),
        Source::Flag => format!("--{}", key.replace('_', "-")),
    }
}

fn invalid(key: &'static str, source: Source, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key, origin: origin(key, source), message: message.into() }
}

fn parse_number<T>(
    key: &'static str,
    value: Option<(String, Source)>,
    default: T,
    range: std::ops::RangeInclusive<T>,
) -> Result<T, ConfigError>
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy,
{
    let Some((raw, source)) = value else { return Ok(default) };
    let parsed: T =
        raw.trim().parse().map_err(|_| invalid(key, source, format!("`{raw}` is not a whole number")))?;
    if !range.contains(&parsed) {
        return Err(invalid(key, source, format!("{parsed} is outside {}..={}", range.start(), range.end())));
    }
    Ok(parsed)
}

impl Config {
    /// Merges layers (lowest precedence first) and validates the result.
    pub fn resolve(file: &Layer, env: &Layer, flags: &Layer) -> Result<Config, ConfigError> {
        let layers = [(Source::File, file), (Source::Env, env), (Source::Flag, flags)];

        let listen = match pick(&layers, |l| l.listen.clone()) {
            Some((raw, src)) => raw.trim().parse::<SocketAddr>().map_err(|_| {
                invalid("listen", src, format!("`{raw}` is not an address like 127.0.0.1:8080"))
            })?,
            None => DEFAULT_LISTEN.parse().expect("valid default"),
        };

        let data_dir = pick(&layers, |l| l.data_dir.clone())
            .map(|(d, _)| d)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        if data_dir.as_os_str().is_empty() {
            return Err(invalid("data_dir", Source::Default, "must not be empty"));
        }

        let database_url = match pick(&layers, |l| l.database_url.clone()) {
            Some((url, src)) => {
                let url = url.trim().to_owned();
                let known = ["sqlite:", "postgres://", "postgresql://"];
                if !known.iter().any(|p| url.starts_with(p)) {
                    return Err(invalid(
                        "database_url",
                        src,
                        format!(
                            "`{}` must start with sqlite:, postgres:// or postgresql://",
                            redact_url(&url)
                        ),
                    ));
                }
                url
            }
            None => format!("sqlite://{}?mode=rwc", data_dir.join("herald.db").display()),
        };

        let admin_token = match pick(&layers, |l| l.admin_token.clone()) {
            Some((token, src)) => {
                if token.len() < 16 || token.chars().any(|c| c.is_whitespace() || c.is_control()) {
                    return Err(invalid(
                        "admin_token",
                        src,
                        "must be at least 16 characters with no whitespace",
                    ));
                }
                Some(token)
            }
            None => None,
        };

        let secret_key = match pick(&layers, |l| l.secret_key.clone()) {
            Some((key, src)) => {
                crate::crypto::MasterKey::from_base64(&key)
                    .map_err(|e| invalid("secret_key", src, e.to_string()))?;
                Some(key)
            }
            None => None,
        };

        let log_format = match pick(&layers, |l| l.log_format.clone()) {
            Some((raw, src)) => match raw.trim() {
                "text" => LogFormat::Text,
                "json" => LogFormat::Json,
                _ => return Err(invalid("log_format", src, format!("`{raw}` is not one of text, json"))),
            },
            None => LogFormat::Text,
        };

        let log_level = match pick(&layers, |l| l.log_level.clone()) {
            Some((raw, src)) => {
                tracing_subscriber::EnvFilter::try_new(&raw)
                    .map_err(|e| invalid("log_level", src, format!("`{raw}`: {e}")))?;
                raw
            }
            None => "info".into(),
        };

        let max_body_bytes = parse_number(
            "max_body_bytes",
            pick(&layers, |l| l.max_body_bytes.clone()),
            DEFAULT_MAX_BODY_BYTES,
            1024..=64 * 1024 * 1024,
        )?;
        let admin_session_ttl_seconds = parse_number(
            "admin_session_ttl_seconds",
            pick(&layers, |l| l.admin_session_ttl_seconds.clone()),
            DEFAULT_ADMIN_SESSION_TTL,
            1..=86_400,
        )?;

        Ok(Config {
            listen,
            data_dir,
            database_url,
            admin_token,
            secret_key,
            log_format,
            log_level,
            max_body_bytes,
            admin_session_ttl_seconds,
        })
    }

    pub fn is_sqlite(&self) -> bool {
        self.database_url.starts_with("sqlite:")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Layer {
        Layer::from_env(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string()))).0
    }

    #[test]
    fn later_layers_win() {
        let file =
            Layer { listen: Some("0.0.0.0:1".into()), log_level: Some("debug".into()), ..Default::default() };
        let env = env(&[("HERALD_LISTEN", "0.0.0.0:2")]);
        let flags = Layer { listen: Some("0.0.0.0:3".into()), ..Default::default() };
        let config = Config::resolve(&file, &env, &flags).unwrap();
        assert_eq!(config.listen.port(), 3);
        assert_eq!(config.log_level, "debug");
        let config = Config::resolve(&file, &env, &Layer::default()).unwrap();
        assert_eq!(config.listen.port(), 2);
    }

    #[test]
    fn errors_name_key_and_origin() {
        let err = Config::resolve(&Layer::default(), &env(&[("HERALD_LISTEN", "nope")]), &Layer::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("`listen`") && err.contains("HERALD_LISTEN"), "{err}");

        let flags = Layer { max_body_bytes: Some("12".into()), ..Default::default() };
        let err = Config::resolve(&Layer::default(), &Layer::default(), &flags).unwrap_err().to_string();
        assert!(err.contains("`max_body_bytes`") && err.contains("--max-body-bytes"), "{err}");

        let file = Layer { database_url: Some("mysql://x".into()), ..Default::default() };
        let err = Config::resolve(&file, &Layer::default(), &Layer::default()).unwrap_err().to_string();
        assert!(err.contains("`database_url`") && err.contains("config file"), "{err}");
    }

    #[test]
    fn unknown_env_is_reported() {
        let (_, unknown) = Layer::from_env(
            [("HERALD_LISTN".to_string(), "x".to_string()), ("HERALD_CONFIG".into(), "f".into())].into_iter(),
        );
        assert_eq!(unknown, vec!["HERALD_LISTN".to_string()]);
    }

    #[test]
    fn file_rejects_unknown_keys_and_accepts_numbers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("herald.toml");
        std::fs::write(&path, "listen = \"127.0.0.1:9\"\nmax_body_bytes = 4096\n").unwrap();
        let layer = Layer::from_file(&path).unwrap();
        assert_eq!(layer.max_body_bytes.as_deref(), Some("4096"));
        std::fs::write(&path, "lisen = \"x\"\n").unwrap();
        let err = Layer::from_file(&path).unwrap_err().to_string();
        assert!(err.contains("lisen"), "{err}");
    }

    #[test]
    fn secrets_are_redacted() {
        assert_eq!(redact_url("postgres://u:pw@h/db"), "postgres://u:***@h/db");
        let flags = Layer { admin_token: Some("a-very-secret-token".into()), ..Default::default() };
        let config = Config::resolve(&Layer::default(), &Layer::default(), &flags).unwrap();
        assert!(!format!("{config:?}").contains("very-secret"));
    }
}
