//! Local accounts: username rules, creation, argon2 passwords, admin flag, deactivation.

use std::sync::Arc;

use ruma::{OwnedUserId, UserId};

use super::passwords::Passwords;
use crate::{
    Error, Result,
    config::Config,
    storage::{
        Batch, Db,
        tables::accounts::{AccountRecord, AccountsTable},
    },
    util,
};

/// What a password login found.
#[derive(Debug, PartialEq, Eq)]
pub enum LoginCheck {
    /// The password is the account's.
    Valid(OwnedUserId),
    /// The account is deactivated.
    Deactivated,
    /// No such account, or not its password.
    Invalid,
}

/// The accounts service.
pub struct Accounts {
    table: AccountsTable,
    config: Arc<Config>,
    passwords: Passwords,
    /// Serialises "is the name free? then take it", so two registrations cannot both win.
    create_lock: tokio::sync::Mutex<()>,
}

impl Accounts {
    /// Builds the service.
    pub fn new(db: Arc<Db>, config: Arc<Config>) -> Result<Self> {
        Ok(Self {
            table: AccountsTable::new(db),
            passwords: Passwords::new(&config)?,
            config,
            create_lock: tokio::sync::Mutex::new(()),
        })
    }

    /// Turns a requested username (localpart or full user id) into a local user id, applying
    /// the spec's grammar and Synapse's reservations (no leading `_`, not purely numeric).
    pub fn user_id_for_new_account(&self, username: &str) -> Result<OwnedUserId> {
        let localpart = self.localpart_of(username)?;
        if localpart.is_empty() {
            return Err(Error::invalid_username("User ID cannot be empty"));
        }
        if !localpart
            .bytes()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'=' | b'-' | b'/' | b'+'))
        {
            return Err(Error::invalid_username(
                "User ID can only contain characters a-z, 0-9, or '=_-./+'",
            ));
        }
        if localpart.starts_with('_') {
            return Err(Error::invalid_username("User ID may not begin with _"));
        }
        if localpart.bytes().all(|b| b.is_ascii_digit()) {
            return Err(Error::invalid_username("Numeric user IDs are reserved for guest users"));
        }
        let user_id = format!("@{localpart}:{}", self.config.server_name);
        if user_id.len() > 255 {
            return Err(Error::invalid_username("User ID may not be longer than 255 characters"));
        }
        UserId::parse(user_id).map_err(|e| Error::invalid_username(format!("Invalid user ID: {e}")))
    }

    /// The localpart of `username` when it names a user of this server (a bare localpart or a
    /// full `@local:server`).
    fn localpart_of<'a>(&self, username: &'a str) -> Result<&'a str> {
        match username.strip_prefix('@') {
            Some(rest) => match rest.split_once(':') {
                Some((local, server)) if server == self.config.server_name.as_str() => Ok(local),
                _ => Err(Error::invalid_username("User ID does not belong to this server")),
            },
            None => Ok(username),
        }
    }

    /// Resolves a login identifier (localpart or full id, any case) to an existing local user id.
    pub fn resolve_local_user(&self, username: &str) -> Result<Option<OwnedUserId>> {
        let Ok(localpart) = self.localpart_of(username) else {
            return Ok(None);
        };
        let lower = localpart.to_lowercase();
        for candidate in [localpart, lower.as_str()] {
            let user_id = format!("@{candidate}:{}", self.config.server_name);
            if let Ok(id) = UserId::parse(&user_id)
                && self.table.get(id.as_str())?.is_some()
            {
                return Ok(Some(id));
            }
        }
        Ok(None)
    }

    /// The stored account.
    pub fn get(&self, user_id: &UserId) -> Result<Option<AccountRecord>> {
        Ok(self.table.get(user_id.as_str())?)
    }

    /// Every account that is not deactivated (the user directory's start).
    pub fn active_users(&self) -> Result<Vec<OwnedUserId>> {
        Ok(self
            .table
            .all()?
            .into_iter()
            .filter(|(_, record)| !record.deactivated)
            .filter_map(|(user, _)| OwnedUserId::try_from(user).ok())
            .collect())
    }

    /// Whether the user exists and is not deactivated.
    pub fn is_active(&self, user_id: &UserId) -> Result<bool> {
        Ok(self.get(user_id)?.is_some_and(|a| !a.deactivated))
    }

    /// Whether `user_id` is free for a new account (checks grammar too).
    pub fn check_available(&self, username: &str) -> Result<OwnedUserId> {
        let user_id = self.user_id_for_new_account(username)?;
        if self.table.get(user_id.as_str())?.is_some() {
            return Err(Error::user_in_use());
        }
        Ok(user_id)
    }

    /// Creates an account, committing it with whatever the caller already queued in `batch`
    /// (first device, registration-token use), so they appear together or not at all.
    pub async fn create(&self, user_id: &UserId, password: Option<&str>, admin: bool, mut batch: Batch) -> Result<()> {
        let password_hash = match password {
            Some(p) => Some(self.passwords.hash(p).await?),
            None => None,
        };
        let _guard = self.create_lock.lock().await;
        if self.table.get(user_id.as_str())?.is_some() {
            return Err(Error::user_in_use());
        }
        let record = AccountRecord {
            password_hash,
            admin,
            deactivated: false,
            created_ms: util::now_ms(),
        };
        self.table.put(&mut batch, user_id.as_str(), &record)?;
        batch.commit().await?;
        Ok(())
    }

    /// Replaces the password, committing it with the caller's `batch` (revoked sessions).
    pub async fn set_password(&self, user_id: &UserId, password: &str, mut batch: Batch) -> Result<()> {
        let hash = self.hash_password(password).await?;
        self.queue_password_hash(&mut batch, user_id, hash)?;
        batch.commit().await?;
        Ok(())
    }

    /// `password` hashed as stored (argon2id, on the blocking pool).
    pub async fn hash_password(&self, password: &str) -> Result<String> {
        self.passwords.hash(password).await
    }

    /// Queues `hash` (from [`Accounts::hash_password`]) as the account's password.
    pub fn queue_password_hash(&self, batch: &mut Batch, user_id: &UserId, hash: String) -> Result<()> {
        let mut record = self.get(user_id)?.ok_or_else(|| Error::not_found("No such user"))?;
        record.password_hash = Some(hash);
        self.table.put(batch, user_id.as_str(), &record)?;
        Ok(())
    }

    /// Marks the account deactivated and drops its password, committing it with the caller's
    /// `batch` (removal of devices, profile and account data).
    pub async fn deactivate(&self, user_id: &UserId, mut batch: Batch) -> Result<()> {
        let mut record = self.get(user_id)?.ok_or_else(|| Error::not_found("No such user"))?;
        record.deactivated = true;
        record.password_hash = None;
        self.table.put(&mut batch, user_id.as_str(), &record)?;
        batch.commit().await?;
        Ok(())
    }

    /// Checks a password against the stored hash. Deactivated accounts never match. An
    /// unknown account (or one without a password) costs a verification all the same, so the
    /// time taken does not tell whether the account exists.
    pub async fn verify_password(&self, user_id: &UserId, password: &str) -> Result<bool> {
        let record = self.get(user_id)?;
        match record.and_then(|r| r.password_hash.filter(|_| !r.deactivated)) {
            Some(hash) => self.passwords.verify(password, hash).await,
            None => self.passwords.verify_dummy(password).await,
        }
    }

    /// A password login by `username` (localpart or user id, any case): which account it
    /// proves, if any. Every outcome costs one password verification.
    pub async fn check_login(&self, username: &str, password: &str) -> Result<LoginCheck> {
        let Some(user_id) = self.resolve_local_user(username)? else {
            self.passwords.verify_dummy(password).await?;
            return Ok(LoginCheck::Invalid);
        };
        if self.get(&user_id)?.is_some_and(|a| a.deactivated) {
            self.passwords.verify_dummy(password).await?;
            return Ok(LoginCheck::Deactivated);
        }
        Ok(match self.verify_password(&user_id, password).await? {
            true => LoginCheck::Valid(user_id),
            false => LoginCheck::Invalid,
        })
    }

    /// Approximate number of accounts (for start-up logs; no scan).
    pub fn estimate_count(&self) -> Result<u64> {
        Ok(self.table.estimate_count()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn login_for_an_unknown_user_runs_the_password_hasher() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), &crate::storage::StorageOptions::for_tests()).unwrap();
        let config = Config {
            password_memory_kib: 64,
            password_iterations: 1,
            ..Config::defaults()
        };
        let accounts = Accounts::new(Arc::clone(&db), Arc::new(config)).unwrap();
        let alice = accounts.user_id_for_new_account("alice").unwrap();
        accounts.create(&alice, Some("right"), false, db.batch()).await.unwrap();
        let before = accounts.passwords.verifications();
        assert_eq!(
            accounts.check_login("alice", "wrong").await.unwrap(),
            LoginCheck::Invalid
        );
        assert_eq!(accounts.passwords.verifications(), before + 1);
        // No such account: the same work, the same answer.
        assert_eq!(
            accounts.check_login("nobody", "wrong").await.unwrap(),
            LoginCheck::Invalid
        );
        assert_eq!(accounts.passwords.verifications(), before + 2);
        assert_eq!(
            accounts.check_login("@Alice:localhost", "right").await.unwrap(),
            LoginCheck::Valid(alice)
        );
    }
}
