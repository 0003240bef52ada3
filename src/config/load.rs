//! Reading the configuration: the TOML file, then the `HEARTH_<SECTION>__<KEY>` environment
//! variables, then the command-line overrides, into a [`RawConfig`] that is then validated. A
//! deserialisation error names the key at fault and, when an environment variable set it,
//! that variable.

use std::path::{Path, PathBuf};

use super::{Config, ConfigError, RawConfig, key_error};

/// The top-level keys of the file; `HEARTH_*` variables outside them are ignored.
pub(super) const TOP_LEVEL_KEYS: &[&str] = &[
    "server_name",
    "listen",
    "trusted_proxies",
    "max_request_size",
    "signing_key_path",
    "database",
    "appservices",
    "registration",
    "passwords",
    "sessions",
    "sync",
    "logging",
    "well_known",
    "federation",
    "rooms",
    "rate_limits",
    "media",
    "public_baseurl",
    "oauth",
    "user_directory",
    "voip",
    "rtc",
    "push",
];

/// Command-line values that win over the file and the environment.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    /// `--server-name`.
    pub server_name: Option<String>,
    /// `--listen`.
    pub listen: Option<String>,
    /// `--data-dir`.
    pub data_dir: Option<PathBuf>,
}

/// Reads the configuration: `file` (if any), then `HEARTH_*` variables from `env`, then
/// `overrides`, then validation.
pub fn load(
    file: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
    overrides: &Overrides,
) -> Result<Config, ConfigError> {
    let mut table = match file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| ConfigError(format!("cannot read config file {}: {e}", path.display())))?;
            text.parse::<toml::Table>()
                .map_err(|e| ConfigError(format!("config file {} is not valid TOML: {e}", path.display())))?
        }
        None => toml::Table::new(),
    };
    let mut from_env = Vec::new();
    for (name, value) in env {
        let Some(rest) = name.strip_prefix("HEARTH_") else {
            continue;
        };
        let path: Vec<String> = rest.split("__").map(|p| p.to_ascii_lowercase()).collect();
        // Variables that name no configuration key at all (HEARTH_BIN for scripts, …) are not
        // meant for us; a typo inside a known section still fails below, naming the key.
        if !TOP_LEVEL_KEYS.contains(&path[0].as_str()) {
            continue;
        }
        if path.iter().any(String::is_empty) {
            return Err(ConfigError(format!("environment variable {name}: malformed key")));
        }
        set_path(&mut table, &path, parse_env_value(&value))
            .map_err(|e| ConfigError(format!("environment variable {name}: {e}")))?;
        from_env.push((path.join("."), name));
    }
    let mut set = |key: &str, value: toml::Value| {
        set_path(&mut table, &key.split('.').map(String::from).collect::<Vec<_>>(), value)
    };
    if let Some(name) = &overrides.server_name {
        set("server_name", name.clone().into()).map_err(ConfigError)?;
    }
    if let Some(listen) = &overrides.listen {
        set("listen", listen.clone().into()).map_err(ConfigError)?;
    }
    if let Some(dir) = &overrides.data_dir {
        set("database.path", dir.display().to_string().into()).map_err(ConfigError)?;
    }
    let raw: RawConfig = serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        let inner = inner.trim_end();
        let hint = from_env
            .iter()
            .find(|(p, _)| p.starts_with(&path) || path.starts_with(p.as_str()))
            .map(|(_, n)| format!(" (set by {n})"))
            .unwrap_or_default();
        if path == "." || path.is_empty() {
            ConfigError(format!("config: {inner}{hint}"))
        } else {
            key_error(&path, format!("{inner}{hint}"))
        }
    })?;
    raw.validate()
}

fn parse_env_value(value: &str) -> toml::Value {
    match format!("v = {value}").parse::<toml::Table>() {
        Ok(mut t) => t.remove("v").unwrap_or_else(|| value.into()),
        Err(_) => toml::Value::String(value.to_owned()),
    }
}

fn set_path(table: &mut toml::Table, path: &[String], value: toml::Value) -> Result<(), String> {
    let (last, parents) = path.split_last().ok_or("empty key")?;
    let mut current = table;
    for part in parents {
        let entry = current
            .entry(part.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        current = entry
            .as_table_mut()
            .ok_or_else(|| format!("\"{part}\" is not a section"))?;
    }
    current.insert(last.clone(), value);
    Ok(())
}
