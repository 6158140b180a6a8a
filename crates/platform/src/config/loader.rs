//! Loading a service's settings: the settings' own defaults, then the file named by
//! `APP_CONFIG_FILE`, then `APP_…` environment variables (`APP_DATABASE__URL` sets
//! `database.url`: `APP_` prefix, `__` between levels).
//!
//! A key the settings do not have is refused, not ignored: a misspelt `APP_HTTP__PORTT` would
//! otherwise leave the port at its default without a word. The known keys are the settings'
//! own shape — every leaf of their defaults, serialized — so the list cannot drift from the
//! structs; each unknown key is named with where it came from and the nearest known key.

use config::{Config, ConfigBuilder, Environment, File, FileFormat, ValueKind};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::{BTreeSet, HashMap};
use std::fmt;

/// The variable naming the settings file; the loader's own, not a setting.
pub const CONFIG_FILE_VARIABLE: &str = "APP_CONFIG_FILE";
const ENV_PREFIX: &str = "APP_";
/// A known key at least this similar (Jaro-Winkler) to an unknown one is suggested.
const SUGGESTION_SIMILARITY: f64 = 0.8;

/// A service's settings as a whole: its own sections beside [`super::CommonSettings`], with a
/// `Default` that holds every default. Services implement it; loading is the platform's.
pub trait ServiceSettings: DeserializeOwned + Serialize + Default {
    /// The service's public HTTP port unless `http.port` is set (`crate::dev`).
    const PORT: u16;

    fn common(&self) -> &super::CommonSettings;

    /// Defaults, the file `APP_CONFIG_FILE`, the process's `APP_…` variables: what `main` loads.
    fn load() -> Result<Self, SettingsError> {
        load(Self::PORT, std::env::vars())
    }

    /// Defaults with these TOML documents on top (later ones win; no file, no environment):
    /// tests' settings, checked for unknown keys like a deployment's.
    fn overridden(documents: &[&str]) -> Result<Self, SettingsError> {
        load_overridden(Self::PORT, documents)
    }
}

/// Why settings could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("{}", list(.0))]
    UnknownKeys(Vec<UnknownKey>),
    #[error(transparent)]
    Invalid(#[from] config::ConfigError),
}

fn list(keys: &[UnknownKey]) -> String {
    keys.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// A key that no setting has, where it came from, and the known key nearest to it.
#[derive(Debug, Clone, PartialEq)]
pub struct UnknownKey {
    pub key: String,
    /// `from APP_HTTP__PORTT`, `in /etc/ordersys/order.toml`, ...
    pub origin: String,
    pub suggestion: Option<String>,
}

impl fmt::Display for UnknownKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown setting `{}` ({})", self.key, self.origin)?;
        if let Some(suggestion) = &self.suggestion {
            write!(f, "; did you mean `{suggestion}`?")?;
        }
        Ok(())
    }
}

/// Loads `T` from its defaults (`port` the default `http.port`), the file named by
/// `APP_CONFIG_FILE` among `variables`, then the `APP_…` ones among them.
pub fn load<T: DeserializeOwned + Serialize + Default>(
    port: u16,
    variables: impl IntoIterator<Item = (String, String)>,
) -> Result<T, SettingsError> {
    let mut settings_variables = HashMap::new();
    let mut file = None;
    for (name, value) in variables {
        if name == CONFIG_FILE_VARIABLE {
            file = Some(value);
        } else if name.starts_with(ENV_PREFIX) {
            settings_variables.insert(name, value);
        }
    }
    let mut builder = defaults(port)?;
    if let Some(path) = file {
        builder = builder.add_source(File::with_name(&path).required(true));
    }
    let environment = Environment::with_prefix("APP")
        .prefix_separator("_")
        .separator("__")
        .try_parsing(true)
        .source(Some(settings_variables));
    build(builder.add_source(environment))
}

/// Loads `T` from its defaults and these TOML documents (later ones win): no file, no
/// environment.
pub fn load_overridden<T: DeserializeOwned + Serialize + Default>(
    port: u16,
    documents: &[&str],
) -> Result<T, SettingsError> {
    let mut builder = defaults(port)?;
    for document in documents {
        builder = builder.add_source(File::from_str(document, FileFormat::Toml));
    }
    build(builder)
}

fn defaults(port: u16) -> Result<ConfigBuilder<config::builder::DefaultState>, SettingsError> {
    // The one default that is the service's rather than its settings' type's.
    Ok(Config::builder().set_default("http.port", port)?)
}

fn build<T: DeserializeOwned + Serialize + Default>(
    builder: ConfigBuilder<config::builder::DefaultState>,
) -> Result<T, SettingsError> {
    let config = builder.build()?;
    let known = known_keys(&T::default());
    let mut given = Vec::new();
    leaves(&config.cache, "", &mut given);
    given.sort();
    let unknown: Vec<UnknownKey> = given
        .into_iter()
        .filter(|(key, _)| !known.contains(key))
        .map(|(key, origin)| UnknownKey {
            origin: describe_origin(&key, origin.as_deref()),
            suggestion: nearest(&key, &known),
            key,
        })
        .collect();
    if !unknown.is_empty() {
        return Err(SettingsError::UnknownKeys(unknown));
    }
    config.clone().try_deserialize().map_err(|error| {
        // A service's settings flatten the common sections in, and serde's flatten loses the key
        // of an error inside them ("invalid duration" without saying whose): read them on their
        // own for an error that names it.
        match config.try_deserialize::<super::CommonSettings>() {
            Err(keyed) => keyed.into(),
            Ok(_) => error.into(),
        }
    })
}

/// Every setting's dotted key (`http.port`, `consumer.ack_wait`, ...): the leaves of the
/// settings' defaults, serialized (an unset `Option` is a leaf too).
pub fn known_keys<T: Serialize>(defaults: &T) -> BTreeSet<String> {
    fn walk(value: &serde_json::Value, prefix: &str, keys: &mut BTreeSet<String>) {
        match value {
            serde_json::Value::Object(fields) => {
                for (name, value) in fields {
                    walk(value, &join(prefix, name), keys);
                }
            }
            _ => {
                keys.insert(prefix.to_string());
            }
        }
    }
    let mut keys = BTreeSet::new();
    // Settings serialize to JSON without fail (plain fields, durations as text, secrets hidden);
    // should one not, it simply adds no keys and every key given for it is refused.
    if let Ok(value) = serde_json::to_value(defaults) {
        walk(&value, "", &mut keys);
    }
    keys
}

/// The variable that sets `key`: `http.port` → `APP_HTTP__PORT`.
pub fn variable_name(key: &str) -> String {
    format!("{ENV_PREFIX}{}", key.replace('.', "__").to_uppercase())
}

/// The leaves of the merged sources, with where each came from.
fn leaves(value: &config::Value, prefix: &str, out: &mut Vec<(String, Option<String>)>) {
    match &value.kind {
        ValueKind::Table(fields) => {
            for (name, value) in fields {
                leaves(value, &join(prefix, name), out);
            }
        }
        _ => out.push((prefix.to_string(), value.origin().map(str::to_string))),
    }
}

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

fn describe_origin(key: &str, origin: Option<&str>) -> String {
    match origin {
        // The `config` crate's name for values from `Environment`.
        Some("the environment") => format!("from {}", variable_name(key)),
        Some(file) => format!("in {file}"),
        None => "in the settings given".to_string(),
    }
}

/// The known key most like `key`, if any is like it at all.
pub fn nearest(key: &str, known: &BTreeSet<String>) -> Option<String> {
    known
        .iter()
        .map(|candidate| (strsim::jaro_winkler(key, candidate), candidate))
        .filter(|(similarity, _)| *similarity >= SUGGESTION_SIMILARITY)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, candidate)| candidate.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CommonSettings;
    use std::time::Duration;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn refused(result: Result<CommonSettings, SettingsError>) -> Vec<UnknownKey> {
        match result {
            Err(SettingsError::UnknownKeys(keys)) => keys,
            other => panic!("expected unknown keys, got {other:?}"),
        }
    }

    #[test]
    fn a_misspelt_variable_is_refused_with_its_name_and_the_nearest_key() {
        let keys = refused(load(7, vars(&[("APP_HTTP__PORTT", "1")])));
        assert_eq!(
            keys[0].to_string(),
            "unknown setting `http.portt` (from APP_HTTP__PORTT); did you mean `http.port`?"
        );
    }

    #[test]
    fn a_misspelt_key_in_a_document_is_refused_and_every_unknown_key_is_named() {
        let keys = refused(load_overridden(
            7,
            &["[consumer]\nack_wait_secs = 10\n[nonsense]\nxyz = 1\n"],
        ));
        let named: Vec<_> = keys.iter().map(|k| k.key.as_str()).collect();
        assert_eq!(named, ["consumer.ack_wait_secs", "nonsense.xyz"]);
        assert_eq!(keys[0].suggestion.as_deref(), Some("consumer.ack_wait"));
        assert_eq!(keys[1].suggestion, None, "nothing is like it");
    }

    #[test]
    fn variables_other_than_the_apps_and_the_file_variable_are_not_settings() {
        let settings: CommonSettings = load(
            7,
            vars(&[("PATH", "/bin"), ("HOME", "/root"), ("APP_HTTP__PORT", "9")]),
        )
        .unwrap();
        assert_eq!(settings.http.port, 9);
        let missing = load::<CommonSettings>(7, vars(&[(CONFIG_FILE_VARIABLE, "/nonexistent")]));
        assert!(
            matches!(missing, Err(SettingsError::Invalid(_))),
            "a named file must exist"
        );
    }

    #[test]
    fn a_key_in_a_file_is_refused_naming_the_file() {
        let path = std::env::temp_dir().join(format!("settings-{}.toml", std::process::id()));
        std::fs::write(&path, "[http]\nhots = \"0.0.0.0\"\n").unwrap();
        let keys = refused(load(
            7,
            vars(&[(CONFIG_FILE_VARIABLE, path.to_str().unwrap())]),
        ));
        std::fs::remove_file(&path).ok();
        assert_eq!(keys[0].key, "http.hots");
        assert!(keys[0].origin.contains("settings-"), "{}", keys[0].origin);
        assert_eq!(keys[0].suggestion.as_deref(), Some("http.host"));
    }

    #[test]
    fn durations_are_read_as_people_write_them() {
        let settings: CommonSettings = load(
            7,
            vars(&[
                ("APP_CONSUMER__ROUND_INTERVAL", "20ms"),
                ("APP_RETENTION__INBOX_MAX_AGE", "7d"),
                ("APP_WORKERS__HANG_AFTER", "1m 30s"),
            ]),
        )
        .unwrap();
        assert_eq!(settings.consumer.round_interval, Duration::from_millis(20));
        assert_eq!(
            settings.retention.inbox_max_age,
            Duration::from_secs(7 * 24 * 3600)
        );
        assert_eq!(settings.workers.hang_after, Duration::from_secs(90));
        let bare_number = load::<CommonSettings>(7, vars(&[("APP_CONSUMER__ACK_WAIT", "10")]));
        assert!(
            bare_number.unwrap_err().to_string().contains("ack_wait"),
            "a number without its unit is refused, naming the key"
        );
    }

    #[test]
    fn the_known_keys_are_the_settings_leaves_and_variable_names_follow_them() {
        let known = known_keys(&CommonSettings::default());
        for key in [
            "http.port",
            "http.admin_host",
            "auth.jwt_secret",
            "development",
        ] {
            assert!(known.contains(key), "{key}");
        }
        assert!(!known.contains("http"), "sections are not settings");
        assert_eq!(variable_name("http.admin_port"), "APP_HTTP__ADMIN_PORT");
        assert_eq!(
            nearest("retention.inbox_secs", &known).as_deref(),
            Some("retention.inbox_max_age")
        );
    }
}
