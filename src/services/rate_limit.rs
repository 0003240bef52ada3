//! Rate limiting with token buckets, per endpoint class and per requester (user or address).
//!
//! Buckets live in a [`BoundedMap`] per class: a bucket that has filled up again is worth no
//! more than an absent one and goes first when a map is full, then the least recently used.

use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use crate::{
    Error, Result,
    config::{Config, RateLimit},
    util::bounded::{BoundedMap, Evict},
};

/// Which limit applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LimitClass {
    /// `/login`, per address.
    Login,
    /// `/register` and friends, per address.
    Register,
    /// Every other endpoint the spec marks rate-limited, per user.
    Client,
    /// Sending room events: `/send`, state `PUT`, `/redact` (Synapse's `rc_message`), per user.
    Message,
    /// `/sendToDevice`, per user.
    ToDevice,
    /// `/keys/upload`, per user.
    KeyUpload,
    /// The public room list, per user.
    PublicRooms,
}

const CLASSES: usize = 7;

impl LimitClass {
    /// Whether the limit applies to an endpoint whose ruma metadata says `rate_limited`: the
    /// classes named after endpoints apply whatever the spec says (it marks none of those
    /// endpoints rate-limited, yet Synapse limits them).
    pub fn applies(self, rate_limited_by_spec: bool) -> bool {
        match self {
            LimitClass::Login | LimitClass::Register | LimitClass::Client => rate_limited_by_spec,
            LimitClass::Message | LimitClass::ToDevice | LimitClass::KeyUpload | LimitClass::PublicRooms => true,
        }
    }

    /// Whether an authenticated request is counted by user (else by address).
    pub fn per_user(self) -> bool {
        !matches!(self, LimitClass::Login | LimitClass::Register)
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Buckets kept per class; beyond that the least recently used go.
const BUCKETS_PER_CLASS: usize = 20_000;

struct Bucket {
    tokens: f64,
    updated: Instant,
    /// When the bucket is full again (and so the same as no bucket).
    full_at: Instant,
}

impl Evict for Bucket {
    fn stale(&self, now: Instant) -> bool {
        self.full_at <= now
    }
}

/// The limiter.
pub struct RateLimiter {
    enabled: bool,
    limits: [RateLimit; CLASSES],
    buckets: [BoundedMap<String, Bucket>; CLASSES],
}

impl RateLimiter {
    /// Builds the limiter from the configuration.
    pub fn new(config: &Config) -> Self {
        Self::with_capacity(config, BUCKETS_PER_CLASS)
    }

    fn with_capacity(config: &Config, buckets_per_class: usize) -> Self {
        let mut limits = [config.rate_limit_client; CLASSES];
        for (class, limit) in [
            (LimitClass::Login, config.rate_limit_login),
            (LimitClass::Register, config.rate_limit_register),
            (LimitClass::Client, config.rate_limit_client),
            (LimitClass::Message, config.rate_limit_message),
            (LimitClass::ToDevice, config.rate_limit_to_device),
            (LimitClass::KeyUpload, config.rate_limit_key_upload),
            (LimitClass::PublicRooms, config.rate_limit_public_rooms),
        ] {
            limits[class.index()] = limit;
        }
        Self {
            enabled: config.rate_limits_enabled,
            limits,
            buckets: std::array::from_fn(|_| BoundedMap::new(buckets_per_class)),
        }
    }

    /// Takes one token for `key` in `class`, or fails with 429 and the time until one is free.
    pub fn check(&self, class: LimitClass, key: &str) -> Result<()> {
        if !self.enabled {
            return Ok(());
        }
        let limit = self.limits[class.index()];
        let now = Instant::now();
        let fresh = || Bucket {
            tokens: limit.burst,
            updated: now,
            full_at: now,
        };
        self.buckets[class.index()].get_or_insert_with(
            key,
            || key.to_owned(),
            fresh,
            |bucket| {
                let elapsed = now.duration_since(bucket.updated).as_secs_f64();
                bucket.tokens = (bucket.tokens + elapsed * limit.per_second).min(limit.burst);
                bucket.updated = now;
                let taken = bucket.tokens >= 1.0;
                if taken {
                    bucket.tokens -= 1.0;
                }
                bucket.full_at = now + Duration::from_secs_f64((limit.burst - bucket.tokens) / limit.per_second);
                if taken {
                    Ok(())
                } else {
                    let wait = (1.0 - bucket.tokens) / limit.per_second;
                    Err(Error::limit_exceeded(
                        Duration::from_secs_f64(wait).max(Duration::from_millis(1)),
                    ))
                }
            },
        )
    }

    /// The buckets held, all classes together.
    pub fn tracked(&self) -> usize {
        self.buckets.iter().map(BoundedMap::len).sum()
    }
}

/// The key a client address is limited under: the address itself, or for IPv6 its /64 (a
/// single host commonly holds a whole /64, so counting addresses would let it rotate them).
pub fn address_key(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => {
            let network = u128::from(v6) & (u128::MAX << 64);
            format!("{}/64", std::net::Ipv6Addr::from(network))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_buckets_stay_bounded() {
        let limiter = RateLimiter::new(&Config::defaults());
        // Many clients, each seen once (an address-rotating flood): the buckets stay bounded.
        for n in 0..(CLASSES * BUCKETS_PER_CLASS) as u32 {
            let ip = std::net::Ipv4Addr::from(n);
            limiter.check(LimitClass::Login, &ip.to_string()).unwrap();
        }
        assert!(
            limiter.tracked() <= BUCKETS_PER_CLASS,
            "{} buckets for one class",
            limiter.tracked()
        );
    }

    #[test]
    fn a_busy_client_keeps_its_bucket_while_others_come_and_go() {
        let limiter = RateLimiter::with_capacity(&Config::defaults(), 64);
        let burst = Config::defaults().rate_limit_login.burst as usize;
        for _ in 0..burst {
            limiter.check(LimitClass::Login, "busy").unwrap();
        }
        for n in 0..1_000 {
            limiter.check(LimitClass::Login, &format!("other{n}")).unwrap();
            // Still limited: its bucket was not dropped for the newcomers.
            assert!(limiter.check(LimitClass::Login, "busy").is_err(), "after {n} others");
        }
    }

    #[test]
    fn ipv6_clients_count_by_their_64() {
        let a = address_key("2001:db8:1:2:aaaa::1".parse().unwrap());
        let b = address_key("2001:db8:1:2:bbbb::2".parse().unwrap());
        assert_eq!(a, b);
        assert_eq!(a, "2001:db8:1:2::/64");
        assert_ne!(a, address_key("2001:db8:1:3::1".parse().unwrap()));
        assert_eq!(address_key("192.0.2.7".parse().unwrap()), "192.0.2.7");
    }
}
