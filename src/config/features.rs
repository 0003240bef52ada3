//! The configuration sections of the team-messaging and Element X features: `[oauth]`,
//! `[user_directory]`, `[voip]`, `[rtc]` and `[push]`, as read (`Raw*`) and as validated.
//! `config.rs` merges and checks them with the rest; errors name the key.

use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, key_error};
use crate::services::media::ssrf::IpRange;

/// The `[push]` section, validated.
#[derive(Clone, Debug)]
pub struct PushConfig {
    /// Address ranges push gateways may have although the built-in rules deny them.
    pub gateway_ip_allow: Vec<IpRange>,
    /// Address ranges push gateways may never have.
    pub gateway_ip_deny: Vec<IpRange>,
    /// Time limit of one request to a push gateway.
    pub gateway_timeout: Duration,
    /// Whether the thread-subscription push rules (MSC4306) apply: events in threads the user
    /// is not subscribed to notify only on mentions.
    pub thread_subscription_rules: bool,
}

/// The `[oauth]` section, validated.
#[derive(Clone, Debug)]
pub struct OAuthConfig {
    /// OAuth 2.0 API on or off (off: `auth_metadata` answers 404 `M_UNRECOGNIZED`).
    pub enabled: bool,
    /// How long an authorization code may be exchanged.
    pub code_lifetime: Duration,
    /// How long a device authorization (`device_code`/`user_code`) lives.
    pub device_code_lifetime: Duration,
    /// Seconds a device-grant client waits between polls.
    pub device_poll_interval: Duration,
}

/// The `[voip]` section, validated.
#[derive(Clone, Debug, Default)]
pub struct VoipConfig {
    /// TURN server URIs handed to clients (empty: no TURN server).
    pub turn_uris: Vec<String>,
    /// coturn's `static-auth-secret` (`use-auth-secret`): credentials are made per request.
    pub turn_shared_secret: Option<String>,
    /// Fixed credentials, used when no shared secret is set.
    pub turn_username: Option<String>,
    /// The password going with `turn_username`.
    pub turn_password: Option<String>,
    /// How long credentials made from the shared secret stay valid.
    pub turn_user_lifetime: Duration,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawPush {
    gateway_ip_allow: Vec<String>,
    gateway_ip_deny: Vec<String>,
    gateway_timeout_secs: u64,
    thread_subscription_rules: bool,
}

impl Default for RawPush {
    fn default() -> Self {
        Self {
            gateway_ip_allow: Vec::new(),
            gateway_ip_deny: Vec::new(),
            gateway_timeout_secs: 10,
            thread_subscription_rules: false,
        }
    }
}

impl RawPush {
    pub(super) fn validate(self) -> Result<PushConfig, ConfigError> {
        let ranges = |key: &str, list: &[String]| {
            list.iter()
                .map(|s| IpRange::parse(s).map_err(|e| key_error(key, e)))
                .collect::<Result<Vec<_>, _>>()
        };
        if self.gateway_timeout_secs == 0 {
            return Err(key_error("push.gateway_timeout_secs", "must be at least 1"));
        }
        Ok(PushConfig {
            gateway_ip_allow: ranges("push.gateway_ip_allow", &self.gateway_ip_allow)?,
            gateway_ip_deny: ranges("push.gateway_ip_deny", &self.gateway_ip_deny)?,
            gateway_timeout: Duration::from_secs(self.gateway_timeout_secs),
            thread_subscription_rules: self.thread_subscription_rules,
        })
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawUserDirectory {
    pub(super) search_all_users: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawOAuth {
    pub(super) enabled: bool,
    pub(super) code_lifetime_secs: u64,
    pub(super) device_code_lifetime_secs: u64,
    pub(super) device_poll_interval_secs: u64,
}

impl Default for RawOAuth {
    fn default() -> Self {
        Self {
            enabled: true,
            code_lifetime_secs: 600,
            device_code_lifetime_secs: 600,
            device_poll_interval_secs: 5,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawVoip {
    turn_uris: Vec<String>,
    turn_shared_secret: Option<String>,
    turn_username: Option<String>,
    turn_password: Option<String>,
    turn_user_lifetime_secs: u64,
}

impl Default for RawVoip {
    fn default() -> Self {
        Self {
            turn_uris: Vec::new(),
            turn_shared_secret: None,
            turn_username: None,
            turn_password: None,
            turn_user_lifetime_secs: 3600,
        }
    }
}

impl RawVoip {
    pub(super) fn validate(self) -> Result<VoipConfig, ConfigError> {
        for uri in &self.turn_uris {
            if !(uri.starts_with("turn:") || uri.starts_with("turns:") || uri.starts_with("stun:")) {
                return Err(key_error(
                    "voip.turn_uris",
                    format!("\"{uri}\" is not a turn:, turns: or stun: URI"),
                ));
            }
        }
        if self.turn_shared_secret.as_deref() == Some("") {
            return Err(key_error("voip.turn_shared_secret", "must not be empty"));
        }
        if self.turn_username.is_some() != self.turn_password.is_some() {
            return Err(key_error(
                "voip.turn_username",
                "turn_username and turn_password go together",
            ));
        }
        if self.turn_user_lifetime_secs == 0 {
            return Err(key_error("voip.turn_user_lifetime_secs", "must be at least 1"));
        }
        Ok(VoipConfig {
            turn_uris: self.turn_uris,
            turn_shared_secret: self.turn_shared_secret,
            turn_username: self.turn_username,
            turn_password: self.turn_password,
            turn_user_lifetime: Duration::from_secs(self.turn_user_lifetime_secs),
        })
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawRtc {
    transports: Vec<toml::Table>,
}

impl RawRtc {
    pub(super) fn validate(self) -> Result<Vec<serde_json::Map<String, serde_json::Value>>, ConfigError> {
        let key = "rtc.transports";
        self.transports
            .into_iter()
            .map(|table| {
                let serde_json::Value::Object(object) = serde_json::to_value(&table).map_err(|e| key_error(key, e))?
                else {
                    return Err(key_error(key, "each transport must be a table"));
                };
                match object.get("type").and_then(serde_json::Value::as_str) {
                    None | Some("") => return Err(key_error(key, "each transport needs a `type` string")),
                    Some("livekit") => {
                        let url = object.get("livekit_service_url").and_then(serde_json::Value::as_str);
                        if !url.is_some_and(|u| u.starts_with("https://") || u.starts_with("http://")) {
                            return Err(key_error(
                                key,
                                "a livekit transport needs `livekit_service_url`, an http(s):// URL",
                            ));
                        }
                    }
                    Some(_) => {}
                }
                Ok(object)
            })
            .collect()
    }
}
