//! Password hashing with argon2id, run on the blocking pool.
//!
//! Each hash takes `passwords.memory_kib` of memory (19 MiB by default) and tens of milliseconds
//! of CPU. At most one hash per core runs at a time: more would only queue on the CPU, and a
//! burst of logins could otherwise hold hundreds of megabytes at once.
//!
//! A login for an account that does not exist (or has no password) is checked against a dummy
//! hash of the same cost ([`Passwords::verify_dummy`]), so its answer takes as long as a wrong
//! password's and does not reveal which accounts exist.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use argon2::{
    Algorithm, Argon2, Params, PasswordHash, PasswordHasher, PasswordVerifier, Version, password_hash::SaltString,
};
use tokio::sync::Semaphore;

use crate::{Error, Result, config::Config};

/// The password hasher.
pub struct Passwords {
    params: Params,
    slots: Arc<Semaphore>,
    /// A hash of the configured cost that no password matches.
    dummy: String,
    /// Verifications run (real and dummy), for tests.
    verifications: AtomicU64,
}

impl Passwords {
    /// Builds the hasher with the configured cost.
    pub fn new(config: &Config) -> Result<Self> {
        let params = Params::new(
            config.password_memory_kib,
            config.password_iterations,
            config.password_parallelism,
            None,
        )
        .map_err(|e| Error::internal(format!("argon2 parameters: {e}")))?;
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Ok(Self {
            dummy: dummy_hash(&params)?,
            params,
            slots: Arc::new(Semaphore::new(cores)),
            verifications: AtomicU64::new(0),
        })
    }

    /// A PHC-format argon2id hash of `password` with a fresh random salt.
    pub async fn hash(&self, password: &str) -> Result<String> {
        if password.is_empty() {
            return Err(Error::new(
                http::StatusCode::BAD_REQUEST,
                ruma::api::error::ErrorKind::WeakPassword,
                "Password must not be empty",
            ));
        }
        let params = self.params.clone();
        let password = password.to_owned();
        self.run(move || {
            let mut salt = [0u8; 16];
            ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut salt)
                .map_err(|_| Error::internal("no randomness"))?;
            let salt = SaltString::encode_b64(&salt).map_err(|e| Error::internal(format!("salt: {e}")))?;
            Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
                .hash_password(password.as_bytes(), &salt)
                .map(|h| h.to_string())
                .map_err(|e| Error::internal(format!("argon2: {e}")))
        })
        .await
    }

    /// Whether `password` matches the PHC `hash` (whose own parameters are used).
    pub async fn verify(&self, password: &str, hash: String) -> Result<bool> {
        self.verifications.fetch_add(1, Ordering::Relaxed);
        let password = password.to_owned();
        self.run(move || {
            Ok(PasswordHash::new(&hash)
                .is_ok_and(|parsed| Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok()))
        })
        .await
    }

    /// Spends what [`Passwords::verify`] spends on a wrong password, for a login whose account
    /// does not exist or has no password. Always `false`.
    pub async fn verify_dummy(&self, password: &str) -> Result<bool> {
        self.verify(password, self.dummy.clone()).await?;
        Ok(false)
    }

    /// How many verifications (real and dummy) ran.
    pub fn verifications(&self) -> u64 {
        self.verifications.load(Ordering::Relaxed)
    }

    async fn run<T: Send + 'static>(&self, work: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
        let _slot = self
            .slots
            .acquire()
            .await
            .map_err(|_| Error::internal("password hasher closed"))?;
        tokio::task::spawn_blocking(work)
            .await
            .map_err(|e| Error::internal(format!("password hashing failed: {e}")))?
    }
}

/// An argon2id hash string with `params`, a random salt and a random output: verifying any
/// password against it costs a real verification and never matches. Made without hashing, so it
/// costs nothing at start.
fn dummy_hash(params: &Params) -> Result<String> {
    let random = |bytes: &mut [u8]| {
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), bytes)
            .map_err(|_| Error::internal("no randomness"))
    };
    let (mut salt, mut output) = ([0u8; 16], [0u8; 32]);
    random(&mut salt)?;
    random(&mut output)?;
    let b64 = |bytes: &[u8]| {
        SaltString::encode_b64(bytes)
            .map(|s| s.as_str().to_owned())
            .map_err(|e| Error::internal(format!("dummy hash: {e}")))
    };
    Ok(format!(
        "$argon2id$v=19$m={},t={},p={}${}${}",
        params.m_cost(),
        params.t_cost(),
        params.p_cost(),
        b64(&salt)?,
        b64(&output)?
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_dummy_hash_is_a_real_hash_that_nothing_matches() {
        let config = Config {
            password_memory_kib: 64,
            password_iterations: 1,
            ..Config::defaults()
        };
        let passwords = Passwords::new(&config).unwrap();
        let parsed = PasswordHash::new(&passwords.dummy).expect("a PHC string argon2 reads");
        assert_eq!(parsed.algorithm.as_str(), "argon2id");
        assert!(!passwords.verify_dummy("").await.unwrap());
        assert!(!passwords.verify_dummy("hunter2").await.unwrap());
        assert_eq!(passwords.verifications(), 2);
    }
}
