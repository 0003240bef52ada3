//! Configuration in two stages: the TOML file (plus `HEARTH_<SECTION>__<KEY>` environment
//! variables and command-line overrides) is read into a raw, serde-shaped [`RawConfig`]; then
//! [`RawConfig::validate`] turns it into the typed [`Config`] the server is built from.
//!
//! Every failure names the key at fault (`config key "registration.mode": …`), and unknown keys
//! are refused rather than ignored, so a typo cannot silently leave a default in force.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use ruma::OwnedServerName;
use serde::Deserialize;

use crate::services::media::ssrf::IpRange;

mod appservices;
mod features;
mod federation;
mod load;
mod media;

use appservices::RawAppservices;
pub use features::{OAuthConfig, PushConfig, VoipConfig};
use features::{RawOAuth, RawPush, RawRtc, RawUserDirectory, RawVoip};
use federation::RawFederation;
pub use federation::{FederationConfig, TlsListener};
pub use load::{Overrides, load};
pub use media::MediaConfig;
use media::RawMedia;

/// A configuration problem, phrased for the operator.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

fn key_error(key: &str, message: impl std::fmt::Display) -> ConfigError {
    ConfigError(format!("config key \"{key}\": {message}"))
}

/// Who may create accounts through `/register`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegistrationMode {
    /// Anyone (UIA stage `m.login.dummy`).
    Open,
    /// Only with a registration token (`m.login.registration_token`).
    Token,
    /// Nobody through the API; admins use `hearth user create`.
    Closed,
}

/// Log line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// A token bucket: sustained rate and burst.
#[derive(Clone, Copy, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Requests per second allowed on average.
    pub per_second: f64,
    /// Requests allowed at once after a quiet period.
    pub burst: f64,
}

/// The validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// The server name in user ids (`@alice:<server_name>`).
    pub server_name: OwnedServerName,
    /// Addresses to listen on (plain HTTP; put TLS in a reverse proxy).
    pub listen: Vec<SocketAddr>,
    /// Peers whose `X-Forwarded-For` / `Forwarded` headers name the client (reverse proxies).
    pub trusted_proxies: Vec<IpRange>,
    /// Largest accepted request body, in bytes.
    pub max_request_size: usize,
    /// The ed25519 signing key file (created at first start when missing).
    pub signing_key_path: PathBuf,
    /// Database directory.
    pub database_path: PathBuf,
    /// RocksDB block cache, in bytes.
    pub cache_bytes: usize,
    /// Sync the WAL before acknowledging a write.
    pub sync_writes: bool,
    /// Registration policy.
    pub registration: RegistrationMode,
    /// New accounts start with their localpart as display name.
    pub localpart_as_display_name: bool,
    /// argon2 memory cost in KiB.
    pub password_memory_kib: u32,
    /// argon2 iterations.
    pub password_iterations: u32,
    /// argon2 lanes.
    pub password_parallelism: u32,
    /// Lifetime of access tokens issued with a refresh token.
    pub refreshable_token_lifetime: Duration,
    /// Initial (and `full_state`) syncs built at once; more wait their turn (`[sync]`).
    pub initial_sync_concurrency: usize,
    /// `tracing` filter directive.
    pub log_level: String,
    /// Log line format.
    pub log_format: LogFormat,
    /// `m.homeserver.base_url` for `/.well-known/matrix/client`.
    pub well_known_client: Option<String>,
    /// `m.server` for `/.well-known/matrix/server`.
    pub well_known_server: Option<String>,
    /// The `[federation]` section.
    pub federation: FederationConfig,
    /// The registration files of the application services (`[appservices]`).
    pub appservice_registration_files: Vec<PathBuf>,
    /// The room version `createRoom` uses when the client names none.
    pub default_room_version: ruma::RoomVersionId,
    /// Rate limiting on or off.
    pub rate_limits_enabled: bool,
    /// Limit for `/login`, per client address.
    pub rate_limit_login: RateLimit,
    /// Limit for `/register`, per client address.
    pub rate_limit_register: RateLimit,
    /// Limit for every other rate-limited endpoint, per user (or address when anonymous).
    pub rate_limit_client: RateLimit,
    /// Limit for sending room events (`/send`, state `PUT`, `/redact`), per user.
    pub rate_limit_message: RateLimit,
    /// Limit for `/sendToDevice`, per user.
    pub rate_limit_to_device: RateLimit,
    /// Limit for `/keys/upload`, per user.
    pub rate_limit_key_upload: RateLimit,
    /// Limit for the public room list, per user (or address when anonymous).
    pub rate_limit_public_rooms: RateLimit,
    /// The media repository.
    pub media: MediaConfig,
    /// The public base URL clients reach the server at (`public_baseurl`, else
    /// `well_known.client`); `None`: taken from each request's `Host` (development only).
    pub public_baseurl: Option<String>,
    /// The built-in OAuth 2.0 authorization server.
    pub oauth: OAuthConfig,
    /// The user directory searches every local user, not only those sharing a room with the
    /// searcher or in a public room.
    pub user_directory_search_all_users: bool,
    /// TURN credentials for `/voip/turnServer`.
    pub voip: VoipConfig,
    /// MatrixRTC transports (`/rtc/transports`, `org.matrix.msc4143.rtc_foci`), each a JSON
    /// object with a `type`.
    pub rtc_transports: Vec<serde_json::Map<String, serde_json::Value>>,
    /// Push notifications (push gateways).
    pub push: PushConfig,
}

/// The file as written: every key optional, defaults filled in by serde.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawConfig {
    server_name: String,
    listen: ListenAddrs,
    trusted_proxies: Vec<String>,
    max_request_size: u64,
    signing_key_path: Option<PathBuf>,
    database: RawDatabase,
    registration: RawRegistration,
    passwords: RawPasswords,
    sessions: RawSessions,
    sync: RawSync,
    logging: RawLogging,
    well_known: RawWellKnown,
    federation: RawFederation,
    appservices: RawAppservices,
    rooms: RawRooms,
    rate_limits: RawRateLimits,
    media: RawMedia,
    public_baseurl: Option<String>,
    oauth: RawOAuth,
    user_directory: RawUserDirectory,
    voip: RawVoip,
    rtc: RawRtc,
    push: RawPush,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum ListenAddrs {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawDatabase {
    path: PathBuf,
    cache_size_mb: u64,
    sync_writes: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawRegistration {
    mode: Option<String>,
    localpart_as_display_name: bool,
}

impl Default for RawRegistration {
    fn default() -> Self {
        Self {
            mode: None,
            localpart_as_display_name: true,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawPasswords {
    memory_kib: u32,
    iterations: u32,
    parallelism: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawSessions {
    refreshable_token_lifetime_secs: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawSync {
    initial_concurrency: usize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawLogging {
    level: String,
    format: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawWellKnown {
    client: Option<String>,
    server: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawRooms {
    default_room_version: RoomVersionText,
}

/// A room version as written: `"12"`, or `12` (what an environment variable gives).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RoomVersionText {
    Text(String),
    Number(u64),
}

impl Default for RawRooms {
    fn default() -> Self {
        Self {
            default_room_version: RoomVersionText::Text("12".into()),
        }
    }
}

/// Room versions new rooms may have.
pub const NEW_ROOM_VERSIONS: &[&str] = &["10", "11", "12"];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawRateLimits {
    enabled: bool,
    login: RateLimit,
    register: RateLimit,
    client: RateLimit,
    message: RateLimit,
    to_device: RateLimit,
    key_upload: RateLimit,
    public_rooms: RateLimit,
}

impl Default for RawConfig {
    fn default() -> Self {
        Self {
            server_name: "localhost".into(),
            listen: ListenAddrs::Many(vec!["127.0.0.1:8008".into()]),
            trusted_proxies: Vec::new(),
            max_request_size: 10 * 1024 * 1024,
            signing_key_path: None,
            database: RawDatabase::default(),
            registration: RawRegistration::default(),
            passwords: RawPasswords::default(),
            sessions: RawSessions::default(),
            sync: RawSync::default(),
            logging: RawLogging::default(),
            well_known: RawWellKnown::default(),
            federation: RawFederation::default(),
            appservices: RawAppservices::default(),
            rooms: RawRooms::default(),
            rate_limits: RawRateLimits::default(),
            media: RawMedia::default(),
            public_baseurl: None,
            oauth: RawOAuth::default(),
            user_directory: RawUserDirectory::default(),
            voip: RawVoip::default(),
            rtc: RawRtc::default(),
            push: RawPush::default(),
        }
    }
}

impl Default for RawDatabase {
    fn default() -> Self {
        Self {
            path: PathBuf::from("./hearth-data"),
            cache_size_mb: 64,
            sync_writes: true,
        }
    }
}

impl Default for RawPasswords {
    fn default() -> Self {
        Self {
            memory_kib: 19 * 1024,
            iterations: 2,
            parallelism: 1,
        }
    }
}

impl Default for RawSessions {
    fn default() -> Self {
        Self {
            refreshable_token_lifetime_secs: 300,
        }
    }
}

impl Default for RawSync {
    fn default() -> Self {
        Self { initial_concurrency: 2 }
    }
}

impl Default for RawLogging {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: "text".into(),
        }
    }
}

impl Default for RawRateLimits {
    fn default() -> Self {
        Self {
            enabled: true,
            login: RateLimit {
                per_second: 0.17,
                burst: 5.0,
            },
            register: RateLimit {
                per_second: 0.17,
                burst: 5.0,
            },
            client: RateLimit {
                per_second: 10.0,
                burst: 50.0,
            },
            message: RateLimit {
                per_second: 2.0,
                burst: 30.0,
            },
            to_device: RateLimit {
                per_second: 10.0,
                burst: 100.0,
            },
            key_upload: RateLimit {
                per_second: 2.0,
                burst: 20.0,
            },
            public_rooms: RateLimit {
                per_second: 1.0,
                burst: 20.0,
            },
        }
    }
}

impl RawConfig {
    /// Checks every value and builds the typed configuration.
    pub fn validate(self) -> Result<Config, ConfigError> {
        let server_name = OwnedServerName::try_from(self.server_name.as_str()).map_err(|e| {
            key_error(
                "server_name",
                format!("\"{}\" is not a valid server name ({e})", self.server_name),
            )
        })?;
        let listen_strings = match self.listen {
            ListenAddrs::One(s) => s
                .split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect(),
            ListenAddrs::Many(v) => v,
        };
        if listen_strings.is_empty() {
            return Err(key_error("listen", "at least one address is needed"));
        }
        let listen = listen_strings
            .iter()
            .map(|s| {
                s.parse::<SocketAddr>().map_err(|_| {
                    key_error(
                        "listen",
                        format!("\"{s}\" is not an address:port such as 127.0.0.1:8008 or [::1]:8008"),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let trusted_proxies = self
            .trusted_proxies
            .iter()
            .map(|s| IpRange::parse(s).map_err(|e| key_error("trusted_proxies", e)))
            .collect::<Result<Vec<_>, _>>()?;
        if self.max_request_size < 1024 {
            return Err(key_error("max_request_size", "must be at least 1024 bytes"));
        }
        if self.database.cache_size_mb == 0 {
            return Err(key_error("database.cache_size_mb", "must be at least 1"));
        }
        let all_loopback = listen.iter().all(|a| a.ip().is_loopback());
        let registration = match self.registration.mode.as_deref() {
            None if all_loopback => RegistrationMode::Open,
            None => RegistrationMode::Closed,
            Some("open") => RegistrationMode::Open,
            Some("token") => RegistrationMode::Token,
            Some("closed") => RegistrationMode::Closed,
            Some(other) => {
                return Err(key_error(
                    "registration.mode",
                    format!("expected one of \"open\", \"token\", \"closed\", found \"{other}\""),
                ));
            }
        };
        let version = match &self.rooms.default_room_version {
            RoomVersionText::Text(text) => text.clone(),
            RoomVersionText::Number(number) => number.to_string(),
        };
        let version = version.as_str();
        if !NEW_ROOM_VERSIONS.contains(&version) {
            return Err(key_error(
                "rooms.default_room_version",
                format!("\"{version}\" is not a room version new rooms may have (one of 10, 11, 12)"),
            ));
        }
        let default_room_version =
            ruma::RoomVersionId::try_from(version).map_err(|e| key_error("rooms.default_room_version", e))?;
        let p = &self.passwords;
        argon2::Params::new(p.memory_kib, p.iterations, p.parallelism, None).map_err(|e| {
            key_error(
                "passwords",
                format!(
                    "invalid argon2 cost (memory_kib = {}, iterations = {}, parallelism = {}): {e}",
                    p.memory_kib, p.iterations, p.parallelism
                ),
            )
        })?;
        if self.sessions.refreshable_token_lifetime_secs == 0 {
            return Err(key_error(
                "sessions.refreshable_token_lifetime_secs",
                "must be at least 1",
            ));
        }
        if self.sync.initial_concurrency == 0 {
            return Err(key_error("sync.initial_concurrency", "must be at least 1"));
        }
        tracing_subscriber::EnvFilter::try_new(&self.logging.level).map_err(|e| {
            key_error(
                "logging.level",
                format!("\"{}\" is not a valid level or filter: {e}", self.logging.level),
            )
        })?;
        let log_format = match self.logging.format.as_str() {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => {
                return Err(key_error(
                    "logging.format",
                    format!("expected \"text\" or \"json\", found \"{other}\""),
                ));
            }
        };
        if let Some(url) = &self.well_known.client
            && !(url.starts_with("https://") || url.starts_with("http://"))
        {
            return Err(key_error(
                "well_known.client",
                format!("\"{url}\" must be an http(s):// URL"),
            ));
        }
        if let Some(server) = &self.well_known.server {
            let host = server
                .rsplit_once(':')
                .filter(|(_, port)| port.parse::<u16>().is_ok())
                .map(|(h, _)| h)
                .unwrap_or(server);
            if <&ruma::ServerName>::try_from(server.as_str()).is_err() || host.is_empty() {
                return Err(key_error(
                    "well_known.server",
                    format!("\"{server}\" must be a host name with an optional :port"),
                ));
            }
        }
        for (key, limit) in [
            ("rate_limits.login", self.rate_limits.login),
            ("rate_limits.register", self.rate_limits.register),
            ("rate_limits.client", self.rate_limits.client),
            ("rate_limits.message", self.rate_limits.message),
            ("rate_limits.to_device", self.rate_limits.to_device),
            ("rate_limits.key_upload", self.rate_limits.key_upload),
            ("rate_limits.public_rooms", self.rate_limits.public_rooms),
        ] {
            if !(limit.per_second > 0.0 && limit.burst >= 1.0) {
                return Err(key_error(key, "per_second must be above 0 and burst at least 1"));
            }
        }
        let public_baseurl = match &self.public_baseurl {
            Some(url) => {
                let ok = (url.starts_with("https://") || url.starts_with("http://"))
                    && !url.contains(['?', '#'])
                    && url.split("://").nth(1).is_some_and(|rest| !rest.is_empty());
                if !ok {
                    return Err(key_error(
                        "public_baseurl",
                        format!("\"{url}\" must be an http(s):// URL without query or fragment"),
                    ));
                }
                Some(url.trim_end_matches('/').to_owned())
            }
            None => self
                .well_known
                .client
                .as_ref()
                .map(|u| u.trim_end_matches('/').to_owned()),
        };
        for (key, value) in [
            ("oauth.code_lifetime_secs", self.oauth.code_lifetime_secs),
            ("oauth.device_code_lifetime_secs", self.oauth.device_code_lifetime_secs),
            ("oauth.device_poll_interval_secs", self.oauth.device_poll_interval_secs),
        ] {
            if value == 0 {
                return Err(key_error(key, "must be at least 1"));
            }
        }
        let oauth = OAuthConfig {
            enabled: self.oauth.enabled,
            code_lifetime: Duration::from_secs(self.oauth.code_lifetime_secs),
            device_code_lifetime: Duration::from_secs(self.oauth.device_code_lifetime_secs),
            device_poll_interval: Duration::from_secs(self.oauth.device_poll_interval_secs),
        };
        let signing_key_path = self
            .signing_key_path
            .unwrap_or_else(|| self.database.path.join("signing.key"));
        Ok(Config {
            server_name,
            listen,
            trusted_proxies,
            max_request_size: self.max_request_size as usize,
            signing_key_path,
            database_path: self.database.path,
            cache_bytes: (self.database.cache_size_mb as usize) << 20,
            sync_writes: self.database.sync_writes,
            registration,
            localpart_as_display_name: self.registration.localpart_as_display_name,
            password_memory_kib: p.memory_kib,
            password_iterations: p.iterations,
            password_parallelism: p.parallelism,
            refreshable_token_lifetime: Duration::from_secs(self.sessions.refreshable_token_lifetime_secs),
            initial_sync_concurrency: self.sync.initial_concurrency,
            log_level: self.logging.level,
            log_format,
            well_known_client: self.well_known.client,
            well_known_server: self.well_known.server,
            federation: self.federation.validate()?,
            appservice_registration_files: self.appservices.validate()?,
            default_room_version,
            rate_limits_enabled: self.rate_limits.enabled,
            rate_limit_login: self.rate_limits.login,
            rate_limit_register: self.rate_limits.register,
            rate_limit_client: self.rate_limits.client,
            rate_limit_message: self.rate_limits.message,
            rate_limit_to_device: self.rate_limits.to_device,
            rate_limit_key_upload: self.rate_limits.key_upload,
            rate_limit_public_rooms: self.rate_limits.public_rooms,
            media: self.media.validate()?,
            public_baseurl,
            oauth,
            // A server anyone can sign up on would hand every stranger the list of its users.
            user_directory_search_all_users: self
                .user_directory
                .search_all_users
                .unwrap_or(registration != RegistrationMode::Open),
            voip: self.voip.validate()?,
            rtc_transports: self.rtc.validate()?,
            push: self.push.validate()?,
        })
    }
}

impl Config {
    /// The defaults, as `hearth serve` with no file and no environment would use them.
    pub fn defaults() -> Config {
        RawConfig::default()
            .validate()
            .expect("the built-in defaults are valid")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_level_keys_match_raw_config() {
        for key in load::TOP_LEVEL_KEYS {
            let mut t = toml::Table::new();
            t.insert((*key).to_owned(), toml::Value::Integer(0));
            if let Err(err) = toml::Value::Table(t).try_into::<RawConfig>() {
                let err = err.to_string();
                assert!(!err.contains("unknown field"), "{key} is not a RawConfig field: {err}");
            }
        }
    }

    fn load_str(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, text).unwrap();
        load(
            Some(&path),
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
            &Overrides::default(),
        )
    }

    #[test]
    fn the_example_file_parses_and_matches_the_defaults() {
        let example = load_str(include_str!("../homeserver.example.toml"), &[]).unwrap();
        let defaults = Config::defaults();
        assert_eq!(format!("{example:?}"), format!("{defaults:?}"));
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = load_str("[database]\npaht = \"x\"\n", &[]).unwrap_err().to_string();
        assert!(err.contains("database") && err.contains("paht"), "{err}");
    }

    #[test]
    fn bad_values_are_named() {
        let err = load_str("[registration]\nmode = \"maybe\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("registration.mode"), "{err}");
        let err = load_str("[database]\ncache_size_mb = \"lots\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("database.cache_size_mb"), "{err}");
        let err = load_str("listen = \"nowhere\"\n", &[]).unwrap_err().to_string();
        assert!(err.contains("listen"), "{err}");
    }

    #[test]
    fn environment_overrides_the_file() {
        let c = load_str(
            "server_name = \"a.example\"\n",
            &[
                ("HEARTH_SERVER_NAME", "b.example"),
                ("HEARTH_RATE_LIMITS__ENABLED", "false"),
                ("HEARTH_DATABASE__PATH", "/tmp/x"),
            ],
        )
        .unwrap();
        assert_eq!(c.server_name.as_str(), "b.example");
        assert!(!c.rate_limits_enabled);
        assert_eq!(c.database_path, PathBuf::from("/tmp/x"));
        assert!(
            load_str("", &[("HEARTH_BIN", "/usr/bin/hearth")]).is_ok(),
            "variables naming no config key are ignored"
        );
        let err = load_str("", &[("HEARTH_DATABASE__NOPE", "1")]).unwrap_err().to_string();
        assert!(err.contains("HEARTH_DATABASE__NOPE"), "{err}");
    }

    #[test]
    fn default_room_version_is_read_and_checked() {
        assert_eq!(Config::defaults().default_room_version, ruma::RoomVersionId::V12);
        let c = load_str("[rooms]\ndefault_room_version = \"11\"\n", &[]).unwrap();
        assert_eq!(c.default_room_version, ruma::RoomVersionId::V11);
        let c = load_str("", &[("HEARTH_ROOMS__DEFAULT_ROOM_VERSION", "10")]).unwrap();
        assert_eq!(c.default_room_version, ruma::RoomVersionId::V10);
        let err = load_str("", &[("HEARTH_ROOMS__DEFAULT_ROOM_VERSION", "9")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("rooms.default_room_version"), "{err}");
    }

    #[test]
    fn the_federation_section_is_read_and_checked() {
        let off = Config::defaults().federation;
        assert!(!off.enabled && off.listen.is_none() && !off.allow_private_destinations);
        let dir = tempfile::tempdir().unwrap();
        let pem = dir.path().join("x.pem");
        std::fs::write(&pem, "not used until the listener starts").unwrap();
        let pem = pem.display().to_string();
        let c = load_str(
            &format!("[federation]\nenabled = true\nlisten = \"127.0.0.1:8448\"\ntls_cert_file = \"{pem}\"\ntls_key_file = \"{pem}\"\n"),
            &[
                ("HEARTH_FEDERATION__DENIED_SERVERS", "[\"*.evil.example\"]"),
                ("HEARTH_FEDERATION__ALLOW_PRIVATE_DESTINATIONS", "true"),
                ("HEARTH_FEDERATION__DNS_SERVER", "127.0.0.1:5353"),
            ],
        )
        .unwrap()
        .federation;
        assert!(c.enabled && c.allow_private_destinations);
        assert_eq!(c.listen.unwrap().addr.port(), 8448);
        assert_eq!(c.denied_servers, ["*.evil.example"]);
        assert_eq!(c.dns_server.unwrap().port(), 5353);
        for (text, key) in [
            ("listen = \"127.0.0.1:8448\"", "federation.tls_cert_file"),
            ("listen = \"8448\"", "federation.listen"),
            ("allowed_servers = [\"a b\"]", "federation.allowed_servers"),
            ("trusted_key_servers = [\"\"]", "federation.trusted_key_servers"),
            ("extra_ca_file = \"/nonexistent/ca.pem\"", "federation.extra_ca_file"),
            ("tls_cert = \"x\"", "federation.tls_cert"),
        ] {
            let err = load_str(&format!("[federation]\n{text}\n"), &[])
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
    }

    #[test]
    fn trusted_proxies_are_address_ranges() {
        assert!(Config::defaults().trusted_proxies.is_empty());
        let c = load_str("trusted_proxies = [\"127.0.0.1\", \"10.0.0.0/8\", \"::1/128\"]\n", &[]).unwrap();
        assert_eq!(c.trusted_proxies.len(), 3);
        assert!(c.trusted_proxies[1].contains("10.1.2.3".parse().unwrap()));
        let err = load_str("trusted_proxies = [\"proxy.example\"]\n", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("trusted_proxies"), "{err}");
    }

    #[test]
    fn people_sections_are_read_and_checked() {
        let defaults = Config::defaults();
        assert!(
            !defaults.user_directory_search_all_users,
            "open registration: shared rooms only"
        );
        assert!(defaults.voip.turn_uris.is_empty() && defaults.rtc_transports.is_empty());
        let c = load_str("listen = \"0.0.0.0:8008\"\n", &[]).unwrap();
        assert!(c.user_directory_search_all_users, "a closed server searches everyone");
        let c = load_str(
            "[user_directory]\nsearch_all_users = false\n[registration]\nmode = \"token\"\n",
            &[],
        )
        .unwrap();
        assert!(!c.user_directory_search_all_users);
        let c = load_str(
            "[rtc]\ntransports = [{ type = \"livekit\", livekit_service_url = \"https://lk.example\" }]\n",
            &[],
        )
        .unwrap();
        assert_eq!(c.rtc_transports[0]["livekit_service_url"], "https://lk.example");
        for bad in [
            "[rtc]\ntransports = [{ type = \"livekit\" }]\n",
            "[rtc]\ntransports = [{ url = \"x\" }]\n",
        ] {
            let err = load_str(bad, &[]).unwrap_err().to_string();
            assert!(err.contains("rtc.transports"), "{err}");
        }
        let err = load_str("[voip]\nturn_uris = [\"http://x\"]\n", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("voip.turn_uris"), "{err}");
        let err = load_str("[voip]\nturn_username = \"u\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("voip.turn_username"), "{err}");
        let c = load_str(
            "",
            &[("HEARTH_VOIP__TURN_URIS", "[\"turn:127.0.0.1:3478?transport=udp\"]")],
        )
        .unwrap();
        assert_eq!(c.voip.turn_uris.len(), 1);
    }

    #[test]
    fn registration_defaults_to_closed_off_loopback() {
        assert_eq!(Config::defaults().registration, RegistrationMode::Open);
        let c = load_str("listen = \"0.0.0.0:8008\"\n", &[]).unwrap();
        assert_eq!(c.registration, RegistrationMode::Closed);
    }

    #[test]
    fn public_baseurl_and_oauth_keys() {
        let c = Config::defaults();
        assert!(c.oauth.enabled, "Element X needs the OAuth 2.0 API");
        assert_eq!(c.public_baseurl, None);
        let c = load_str("[well_known]\nclient = \"https://m.example.org/\"\n", &[]).unwrap();
        assert_eq!(c.public_baseurl.as_deref(), Some("https://m.example.org"));
        let c = load_str(
            "public_baseurl = \"https://hs.example.org/\"\n[well_known]\nclient = \"https://m.example.org\"\n",
            &[],
        )
        .unwrap();
        assert_eq!(c.public_baseurl.as_deref(), Some("https://hs.example.org"));
        for bad in ["matrix.example.org", "https://x.org/?a=b", "https://"] {
            let err = load_str(&format!("public_baseurl = \"{bad}\"\n"), &[]).unwrap_err().0;
            assert!(err.contains("public_baseurl"), "{err}");
        }
        let err = load_str("[oauth]\ncode_lifetime_secs = 0\n", &[]).unwrap_err().0;
        assert!(err.contains("oauth.code_lifetime_secs"), "{err}");
        let c = load_str("", &[("HEARTH_OAUTH__ENABLED", "false")]).unwrap();
        assert!(!c.oauth.enabled);
    }
}
