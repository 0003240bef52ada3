//! The device authorization grant (RFC 8628) of the OAuth server: a device code the device
//! polls the token endpoint with, a user code the user types on the verification page, and the
//! user's answer. Grants live in memory, bounded, and expire like the other pending requests.

use std::time::{Duration, Instant};

use ruma::{OwnedDeviceId, OwnedUserId};

use super::{Client, DEVICE_CODE_GRANT, Exchange, OAuth, OAuthResult, Scope, oauth, parse_scope};
use crate::util::{self, bounded::Evict};

/// A device authorization (RFC 8628).
pub(super) struct DeviceGrant {
    client: Client,
    scope: Scope,
    user_code: String,
    expires: Instant,
    last_poll: Option<Instant>,
    status: DeviceStatus,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum DeviceStatus {
    Pending,
    Denied,
    Approved(OwnedUserId),
    Done,
}

impl Evict for DeviceGrant {
    fn stale(&self, now: Instant) -> bool {
        self.expires <= now
    }
}

/// The answer of the device authorization endpoint.
#[derive(Debug)]
pub struct DeviceAuthorization {
    /// The secret the device polls with.
    pub device_code: String,
    /// The code the user types.
    pub user_code: String,
    /// Its lifetime.
    pub expires_in: Duration,
    /// The polling interval.
    pub interval: Duration,
}

/// A device authorization as the verification page shows it.
#[derive(Debug, Clone)]
pub struct PendingDevice {
    /// The client's name.
    pub client_name: String,
    /// The device id it asks for.
    pub device_id: OwnedDeviceId,
}

pub(super) struct UserCode([u8; 32], Instant);

impl Evict for UserCode {
    fn stale(&self, now: Instant) -> bool {
        self.1 <= now
    }
}

impl OAuth {
    /// RFC 8628 §3.1–3.2: a device code to poll with and a user code to type.
    pub fn start_device(&self, client_id: Option<&str>, scope: Option<&str>) -> OAuthResult<DeviceAuthorization> {
        let client = self.known_client(client_id)?;
        if !client.may_use(DEVICE_CODE_GRANT) {
            return Err(oauth(
                "unauthorized_client",
                "The client did not register for the device_code grant",
            ));
        }
        let scope = parse_scope(scope.unwrap_or(""))?;
        let device_code = util::random_string(40);
        // Eight letters without vowels or look-alikes, as RFC 8628 §6.1 suggests.
        const ALPHABET: &[u8] = b"BCDFGHJKLMNPQRSTVWXZ";
        let user_code: String = {
            use rand::Rng;
            let mut rng = rand::thread_rng();
            (0..8)
                .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
                .collect()
        };
        let hash = util::sha256(device_code.as_bytes());
        let expires = Instant::now() + self.config.oauth.device_code_lifetime;
        self.devices.insert(
            hash,
            DeviceGrant {
                client,
                scope,
                user_code: user_code.clone(),
                expires,
                last_poll: None,
                status: DeviceStatus::Pending,
            },
        );
        self.user_codes.insert(user_code.clone(), UserCode(hash, expires));
        Ok(DeviceAuthorization {
            device_code,
            user_code: format!("{}-{}", &user_code[..4], &user_code[4..]),
            expires_in: self.config.oauth.device_code_lifetime,
            interval: self.config.oauth.device_poll_interval,
        })
    }

    fn normalise_user_code(code: &str) -> String {
        code.chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .map(|c| c.to_ascii_uppercase())
            .collect()
    }

    /// The pending device authorization a user code names.
    pub fn pending_device(&self, user_code: &str) -> Option<PendingDevice> {
        let code = Self::normalise_user_code(user_code);
        let hash = self.user_codes.with(code.as_str(), |c| c.map(|c| c.0))?;
        let now = Instant::now();
        self.devices.with(&hash, |d| {
            d.filter(|d| d.expires > now && d.status == DeviceStatus::Pending && d.user_code == code)
                .map(|d| PendingDevice {
                    client_name: d.client.display_name(),
                    device_id: d.scope.device_id.clone(),
                })
        })
    }

    /// The user approved (`Some(user)`) or refused (`None`) a device authorization; `false`
    /// when the code is unknown, expired or already answered.
    pub fn answer_device(&self, user_code: &str, user_id: Option<&OwnedUserId>) -> bool {
        let code = Self::normalise_user_code(user_code);
        let Some(hash) = self.user_codes.remove(code.as_str()).map(|c| c.0) else {
            return false;
        };
        let now = Instant::now();
        self.devices.with(&hash, |d| match d {
            Some(d) if d.expires > now && d.status == DeviceStatus::Pending => {
                d.status = match user_id {
                    Some(user) => DeviceStatus::Approved(user.clone()),
                    None => DeviceStatus::Denied,
                };
                true
            }
            _ => false,
        })
    }

    /// RFC 8628 §3.4–3.5: a poll of the token endpoint.
    pub fn poll_device(&self, device_code: Option<&str>, client_id: Option<&str>) -> OAuthResult<Exchange> {
        let client = self.known_client(client_id)?;
        let code = device_code.ok_or_else(|| oauth("invalid_request", "device_code is required"))?;
        let hash = util::sha256(code.as_bytes());
        let now = Instant::now();
        let interval = self.config.oauth.device_poll_interval;
        let outcome = self.devices.with(&hash, |d| {
            let d = d.ok_or_else(|| oauth("invalid_grant", "Unknown device_code"))?;
            if d.client.client_id != client.client_id {
                return Err(oauth("invalid_grant", "The device_code was issued to another client"));
            }
            match &d.status {
                DeviceStatus::Approved(user_id) => {
                    let exchange = Exchange {
                        code_hash: hash,
                        user_id: user_id.clone(),
                        scope: d.scope.clone(),
                        client_name: d.client.display_name(),
                        client_id: d.client.client_id.clone(),
                    };
                    d.status = DeviceStatus::Done;
                    Ok(Some(exchange))
                }
                DeviceStatus::Done => Err(oauth("invalid_grant", "The device_code was already used")),
                DeviceStatus::Denied => Err(oauth("access_denied", "The user refused the request")),
                DeviceStatus::Pending if d.expires <= now => Err(oauth("expired_token", "The device_code has expired")),
                DeviceStatus::Pending => {
                    let too_soon = d.last_poll.is_some_and(|last| now.duration_since(last) < interval);
                    d.last_poll = Some(now);
                    if too_soon {
                        Err(oauth("slow_down", "Polling too often"))
                    } else {
                        Ok(None)
                    }
                }
            }
        });
        match outcome? {
            Some(exchange) => Ok(exchange),
            None => Err(oauth("authorization_pending", "The user has not answered yet")),
        }
    }
}
