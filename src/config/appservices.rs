//! The `[appservices]` section: the registration files of the application services (bridges,
//! bots) this server talks to. As an environment variable,
//! `HEARTH_APPSERVICES__REGISTRATION_FILES` takes a TOML list or comma-separated paths.

use std::path::PathBuf;

use serde::Deserialize;

use super::ConfigError;

/// The `[appservices]` section, as read.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAppservices {
    #[serde(default, deserialize_with = "paths")]
    registration_files: Vec<PathBuf>,
}

/// A list of paths, or one string of comma-separated paths.
fn paths<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<PathBuf>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Paths {
        List(Vec<PathBuf>),
        Joined(String),
    }
    Ok(match Paths::deserialize(d)? {
        Paths::List(list) => list,
        Paths::Joined(joined) => joined
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .collect(),
    })
}

impl RawAppservices {
    /// The registration files, each named once.
    pub(super) fn validate(self) -> Result<Vec<PathBuf>, ConfigError> {
        let mut files: Vec<PathBuf> = Vec::with_capacity(self.registration_files.len());
        for file in self.registration_files {
            if files.contains(&file) {
                return Err(ConfigError(format!(
                    "appservices.registration_files: {} is listed twice",
                    file.display()
                )));
            }
            files.push(file);
        }
        Ok(files)
    }
}
