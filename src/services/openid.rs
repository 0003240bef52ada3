//! OpenID tokens (spec client-server-api "OpenID", server-server-api "OpenID"): a user asks for a
//! short-lived token (`POST /user/{userId}/openid/request_token`) and hands it to a third party
//! (a widget, an Element Call JWT service), which asks this server whom it names
//! (`GET /_matrix/federation/v1/openid/userinfo`).
//!
//! Tokens are random; only their SHA-256 is stored, with the user and the expiry, in RocksDB
//! (`tables::openid`), so a restart does not break a widget mid-session. Each new token's batch
//! deletes a few expired ones, so the table holds about one hour's worth of tokens.

use std::{sync::Arc, time::Duration};

use ruma::{OwnedUserId, UserId};

use crate::{
    Error, Result,
    storage::{
        Db,
        tables::openid::{OpenIdRecord, OpenIdTable},
    },
    util,
};

/// How long a token is valid (Synapse's `openid_token_lifetime`, one hour).
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(3600);

/// Expired tokens deleted with each new one (more than one, so the table shrinks).
const SWEEP: usize = 16;

/// The OpenID token service.
pub struct OpenId {
    table: OpenIdTable,
}

impl OpenId {
    /// Builds the service.
    pub fn new(db: Arc<Db>) -> Self {
        Self {
            table: OpenIdTable::new(db),
        }
    }

    /// A new token for `requester`, who may ask only for themselves (else 403 `M_FORBIDDEN`).
    pub async fn request_token(&self, requester: &UserId, for_user: &UserId) -> Result<String> {
        if requester != for_user {
            return Err(Error::forbidden("You may only request OpenID tokens for yourself"));
        }
        let token = util::random_string(32);
        let now = util::now_ms();
        let record = OpenIdRecord {
            user_id: requester.to_string(),
            expires_ms: now + TOKEN_LIFETIME.as_millis() as u64,
        };
        self.table
            .insert(&util::sha256(token.as_bytes()), &record, now, SWEEP)
            .await?;
        Ok(token)
    }

    /// The user a valid token names, or 401 `M_UNKNOWN_TOKEN` (unknown or expired).
    pub fn userinfo(&self, token: &str) -> Result<OwnedUserId> {
        let unknown = || Error::unknown_token(false);
        let record = self.table.get(&util::sha256(token.as_bytes()))?.ok_or_else(unknown)?;
        if record.expires_ms <= util::now_ms() {
            return Err(unknown());
        }
        OwnedUserId::try_from(record.user_id).map_err(|e| Error::internal(format!("stored OpenID user: {e}")))
    }

    /// Stores a token that expires at `expires_ms` (tests of expiry).
    #[doc(hidden)]
    pub async fn insert_for_tests(&self, token: &str, user_id: &UserId, expires_ms: u64) -> Result<()> {
        let record = OpenIdRecord {
            user_id: user_id.to_string(),
            expires_ms,
        };
        Ok(self
            .table
            .insert(&util::sha256(token.as_bytes()), &record, 0, 0)
            .await?)
    }
}
