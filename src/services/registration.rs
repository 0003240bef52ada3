//! Who may register: the configured mode, the UIA flows it implies, and registration tokens
//! (created by admins, used up by registrations).

use std::sync::Arc;

use ruma::api::client::uiaa::{AuthFlow, AuthType};

use super::uiaa::flow;
use crate::{
    Error, Result,
    config::RegistrationMode,
    storage::{
        Batch, Db,
        tables::registration_tokens::{RegistrationTokenRecord, RegistrationTokensTable},
    },
    util,
};

/// The registration service.
pub struct Registration {
    db: Arc<Db>,
    table: RegistrationTokensTable,
    mode: RegistrationMode,
    /// Serialises the "uses left? then use one" step.
    use_lock: tokio::sync::Mutex<()>,
}

/// A token as listed by admins.
#[derive(Debug, Clone)]
pub struct TokenInfo {
    /// The token itself.
    pub token: String,
    /// Stored details.
    pub record: RegistrationTokenRecord,
}

impl Registration {
    /// Builds the service.
    pub fn new(db: Arc<Db>, mode: RegistrationMode) -> Self {
        Self {
            table: RegistrationTokensTable::new(Arc::clone(&db)),
            db,
            mode,
            use_lock: tokio::sync::Mutex::new(()),
        }
    }

    /// The configured mode.
    pub fn mode(&self) -> RegistrationMode {
        self.mode
    }

    /// The UIA flows `/register` offers, or 403 when registration is closed.
    pub fn flows(&self) -> Result<Vec<AuthFlow>> {
        match self.mode {
            RegistrationMode::Open => Ok(vec![flow(AuthType::Dummy)]),
            RegistrationMode::Token => Ok(vec![flow(AuthType::RegistrationToken)]),
            RegistrationMode::Closed => Err(Error::forbidden("Registration has been disabled")),
        }
    }

    /// Whether a token exists, has not expired and has uses left.
    pub fn token_is_usable(&self, token: &str) -> Result<bool> {
        Ok(self.table.get(token)?.is_some_and(|r| usable(&r)))
    }

    /// Queues one use of `token` into the registration's batch; fails if none is left. Hold the
    /// returned guard until the batch is committed.
    pub async fn queue_use(&self, batch: &mut Batch, token: &str) -> Result<tokio::sync::MutexGuard<'_, ()>> {
        let guard = self.use_lock.lock().await;
        let mut record = self
            .table
            .get(token)?
            .filter(usable)
            .ok_or_else(|| Error::forbidden("The registration token is no longer valid"))?;
        record.completed += 1;
        self.table.put(batch, token, &record)?;
        Ok(guard)
    }

    /// Creates a token (random when `token` is `None`).
    pub async fn create_token(
        &self,
        token: Option<String>,
        uses_allowed: Option<u32>,
        expires_ms: Option<u64>,
    ) -> Result<TokenInfo> {
        let token = token.unwrap_or_else(|| util::random_string(16));
        if token.is_empty()
            || token.len() > 64
            || !token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'~' | b'-'))
        {
            return Err(Error::invalid_param(
                "Registration tokens are 1-64 characters of A-Z, a-z, 0-9, '.', '_', '~' and '-'",
            ));
        }
        if self.table.get(&token)?.is_some() {
            return Err(Error::invalid_param(format!("Token {token} already exists")));
        }
        let record = RegistrationTokenRecord {
            uses_allowed,
            completed: 0,
            expires_ms,
            created_ms: util::now_ms(),
        };
        let mut batch = self.db.batch();
        self.table.put(&mut batch, &token, &record)?;
        batch.commit().await?;
        Ok(TokenInfo { token, record })
    }

    /// Every token.
    pub fn list_tokens(&self) -> Result<Vec<TokenInfo>> {
        Ok(self
            .table
            .list()?
            .into_iter()
            .map(|(token, record)| TokenInfo { token, record })
            .collect())
    }

    /// Deletes a token; `Ok(false)` if it did not exist.
    pub async fn delete_token(&self, token: &str) -> Result<bool> {
        if self.table.get(token)?.is_none() {
            return Ok(false);
        }
        let mut batch = self.db.batch();
        self.table.delete(&mut batch, token);
        batch.commit().await?;
        Ok(true)
    }
}

fn usable(record: &RegistrationTokenRecord) -> bool {
    record.uses_allowed.is_none_or(|n| record.completed < n) && record.expires_ms.is_none_or(|e| e > util::now_ms())
}
