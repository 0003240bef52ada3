//! Password hashing with argon2id, run on the blocking pool.
//!
//! Each hash takes `passwords.memory_kib` of memory (19 MiB by default) and tens of milliseconds
//! of CPU. At most one hash per core runs at a time: more would only queue on the CPU, and a
//! burst of logins could otherwise hold hundreds of megabytes at once.

use std::sync::Arc;

use argon2::{
    Algorithm, Argon2, Params, PasswordHash, PasswordHasher, PasswordVerifier, Version, password_hash::SaltString,
};
use tokio::sync::Semaphore;

use crate::{Error, Result, config::Config};

/// The password hasher.
pub struct Passwords {
    params: Params,
    slots: Arc<Semaphore>,
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
            params,
            slots: Arc::new(Semaphore::new(cores)),
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
        let password = password.to_owned();
        self.run(move || {
            Ok(PasswordHash::new(&hash)
                .is_ok_and(|parsed| Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok()))
        })
        .await
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
