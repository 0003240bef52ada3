//! Rate limiting with token buckets, per endpoint class and per requester (user or address).

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use crate::{
    Error, Result,
    config::{Config, RateLimit},
};

/// Which limit applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LimitClass {
    /// `/login`.
    Login,
    /// `/register` and friends.
    Register,
    /// Every other rate-limited endpoint.
    Client,
}

struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// The limiter.
pub struct RateLimiter {
    enabled: bool,
    login: RateLimit,
    register: RateLimit,
    client: RateLimit,
    buckets: Mutex<HashMap<(LimitClass, String), Bucket>>,
}

impl RateLimiter {
    /// Builds the limiter from the configuration.
    pub fn new(config: &Config) -> Self {
        Self {
            enabled: config.rate_limits_enabled,
            login: config.rate_limit_login,
            register: config.rate_limit_register,
            client: config.rate_limit_client,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `key` in `class`, or fails with 429 and the time until one is free.
    pub fn check(&self, class: LimitClass, key: &str) -> Result<()> {
        if !self.enabled {
            return Ok(());
        }
        let limit = match class {
            LimitClass::Login => self.login,
            LimitClass::Register => self.register,
            LimitClass::Client => self.client,
        };
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() > 100_000 {
            buckets.retain(|_, b| now.duration_since(b.updated) < Duration::from_secs(3600));
        }
        let bucket = buckets.entry((class, key.to_owned())).or_insert(Bucket {
            tokens: limit.burst,
            updated: now,
        });
        let elapsed = now.duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * limit.per_second).min(limit.burst);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - bucket.tokens) / limit.per_second;
            Err(Error::limit_exceeded(
                Duration::from_secs_f64(wait).max(Duration::from_millis(1)),
            ))
        }
    }
}
