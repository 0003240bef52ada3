//! Calls: TURN credentials for 1:1 VoIP (spec client-server-api "Voice over IP",
//! `GET /voip/turnServer`) and the MatrixRTC transports advertised for group calls (MSC4143,
//! MSC4519: `GET /rtc/transports`, `org.matrix.msc4143.rtc_foci` in `/.well-known/matrix/client`).
//!
//! With a shared secret the credentials follow the TURN REST API that coturn implements
//! (`use-auth-secret`): the username is `<expiry as unix seconds>:<user id>` and the password is
//! base64(HMAC-SHA1(secret, username)), so coturn checks them without asking Hearth. Without a
//! secret, the configured static username and password are handed out (as Synapse does).

use std::time::Duration;

use base64::Engine as _;
use ruma::UserId;

use crate::config::VoipConfig;

/// TURN credentials for one user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TurnCredentials {
    /// The TURN username.
    pub username: String,
    /// The TURN password.
    pub password: String,
    /// The TURN server URIs.
    pub uris: Vec<String>,
    /// How long the credentials stay valid.
    pub ttl: Duration,
}

/// The credentials `user_id` gets at `now_secs` (Unix time), or `None` when no TURN server or
/// no way to authenticate with it is configured.
pub fn turn_credentials(config: &VoipConfig, user_id: &UserId, now_secs: u64) -> Option<TurnCredentials> {
    if config.turn_uris.is_empty() {
        return None;
    }
    let (username, password) = match (&config.turn_shared_secret, &config.turn_username, &config.turn_password) {
        (Some(secret), _, _) => {
            let expiry = now_secs + config.turn_user_lifetime.as_secs();
            let username = format!("{expiry}:{user_id}");
            let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret.as_bytes());
            let tag = ring::hmac::sign(&key, username.as_bytes());
            (username, base64::engine::general_purpose::STANDARD.encode(tag.as_ref()))
        }
        (None, Some(username), Some(password)) => (username.clone(), password.clone()),
        _ => return None,
    };
    Some(TurnCredentials {
        username,
        password,
        uris: config.turn_uris.clone(),
        ttl: config.turn_user_lifetime,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_secret_credentials_follow_the_turn_rest_api() {
        let config = VoipConfig {
            turn_uris: vec!["turn:turn.example:3478".into()],
            turn_shared_secret: Some("north".into()),
            turn_user_lifetime: Duration::from_secs(86400),
            ..VoipConfig::default()
        };
        let user = ruma::user_id!("@alice:hearth.test");
        let creds = turn_credentials(&config, user, 1_000).unwrap();
        assert_eq!(creds.username, "87400:@alice:hearth.test");
        // `printf '87400:@alice:hearth.test' | openssl dgst -sha1 -hmac north -binary | base64`
        assert_eq!(creds.password, "MED0P3kv+dTXOKtH12WWEG0J9uE=");
        assert_eq!(creds.ttl, Duration::from_secs(86400));
    }

    #[test]
    fn static_credentials_and_nothing_configured() {
        let user = ruma::user_id!("@alice:hearth.test");
        assert_eq!(turn_credentials(&VoipConfig::default(), user, 0), None);
        let config = VoipConfig {
            turn_uris: vec!["turn:turn.example:3478".into()],
            turn_user_lifetime: Duration::from_secs(60),
            ..VoipConfig::default()
        };
        assert_eq!(turn_credentials(&config, user, 0), None, "URIs but no credentials");
        let config = VoipConfig {
            turn_username: Some("u".into()),
            turn_password: Some("p".into()),
            ..config
        };
        let creds = turn_credentials(&config, user, 0).unwrap();
        assert_eq!((creds.username.as_str(), creds.password.as_str()), ("u", "p"));
    }
}
