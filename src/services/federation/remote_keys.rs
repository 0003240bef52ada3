//! Other servers' signing keys. A key is read from storage, or fetched when missing or no longer
//! valid at the time asked about: from the trusted notaries first (`[federation]
//! trusted_key_servers`), then from the server itself. An answer is kept only when it is about
//! the server asked for, signed by that server with a key it lists, and, when relayed, signed by
//! the notary too. Validity is capped at 7 days ahead whatever a server claims. Failed fetches
//! back off (30 s doubling to 10 min) per server, and one fetch per server runs at a time.
//!
//! Hearth is a notary too: `/_matrix/key/v2/query` answers are the servers' own answers as
//! stored, countersigned by us.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use base64::{Engine, engine::general_purpose::STANDARD_NO_PAD};
use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, OwnedServerName, OwnedServerSigningKeyId, ServerName,
    api::federation::discovery::{get_remote_server_keys_batch, get_server_keys},
    serde::Base64,
    signatures::{PublicKeyMap, PublicKeySet},
};
use serde_json::value::RawValue;

use super::Federation;
use crate::{
    Error, Result,
    storage::tables::server_keys::{ServerKeysTable, VerifyKeyRecord},
    util::{
        self,
        bounded::{BoundedMap, Evict, KeyedLocks},
    },
};

/// The longest a fetched key is trusted ahead (the spec's cap for room versions 5 and later).
pub const MAX_VALIDITY_MS: u64 = 7 * 24 * 60 * 60 * 1000;
/// Servers whose keys the notary endpoint fetches in one request; the rest are answered from
/// what is stored.
pub const NOTARY_FETCHES_PER_REQUEST: usize = 10;
const FIRST_BACKOFF: Duration = Duration::from_secs(30);
const MAX_BACKOFF: Duration = Duration::from_secs(600);
/// Servers remembered (fetch locks, back-offs).
const TRACKED_SERVERS: usize = 10_000;

/// A server whose last fetch failed: not asked again before `until`.
#[derive(Clone, Copy)]
struct Failure {
    until: Instant,
    delay: Duration,
}

impl Evict for Failure {
    fn stale(&self, now: Instant) -> bool {
        self.until <= now
    }
}

/// Other servers' keys.
pub struct RemoteKeys {
    server_name: OwnedServerName,
    table: ServerKeysTable,
    trusted: Vec<OwnedServerName>,
    fetching: KeyedLocks<OwnedServerName>,
    failures: BoundedMap<OwnedServerName, Failure>,
}

/// A one-key map for ruma's signature checks.
pub fn key_map(server: &ServerName, key_id: &str, key: &[u8]) -> PublicKeyMap {
    let set: PublicKeySet = [(key_id.to_owned(), Base64::new(key.to_vec()))].into();
    [(server.to_string(), set)].into()
}

/// Checks `object`'s signatures by `entity` (and only those) against `keys`.
fn verify_signed_by(object: &CanonicalJsonObject, entity: &str, keys: PublicKeySet) -> Result<()> {
    let mut object = object.clone();
    let own = match object.get("signatures") {
        Some(CanonicalJsonValue::Object(all)) => all.get(entity).cloned(),
        _ => None,
    }
    .ok_or_else(|| Error::forbidden(format!("The key answer is not signed by {entity}")))?;
    object.insert(
        "signatures".into(),
        CanonicalJsonValue::Object([(entity.to_owned(), own)].into()),
    );
    ruma::signatures::verify_json(&[(entity.to_owned(), keys)].into(), &object)
        .map_err(|e| Error::forbidden(format!("The key answer's signature by {entity} is not valid: {e}")))
}

fn field_u64(object: &CanonicalJsonObject, name: &str) -> Option<u64> {
    match object.get(name) {
        Some(CanonicalJsonValue::Integer(n)) => u64::try_from(i64::from(*n)).ok(),
        _ => None,
    }
}

/// `{key id: {"key": base64, …}}` of a key answer.
fn listed_keys(object: &CanonicalJsonObject, field: &str) -> Vec<(String, Vec<u8>, Option<u64>)> {
    let Some(CanonicalJsonValue::Object(keys)) = object.get(field) else {
        return Vec::new();
    };
    keys.iter()
        .filter_map(|(id, entry)| {
            let CanonicalJsonValue::Object(entry) = entry else {
                return None;
            };
            let Some(CanonicalJsonValue::String(key)) = entry.get("key") else {
                return None;
            };
            let key = STANDARD_NO_PAD.decode(key.trim_end_matches('=')).ok()?;
            (key.len() == 32 && id.starts_with("ed25519:")).then(|| (id.clone(), key, field_u64(entry, "expired_ts")))
        })
        .collect()
}

fn usable(record: &VerifyKeyRecord, at_ms: u64) -> bool {
    record.valid_until_ms >= at_ms || record.expired_ms.is_some_and(|expired| expired > at_ms)
}

fn unavailable(server: &ServerName, why: impl std::fmt::Display) -> Error {
    Error::new(
        http::StatusCode::BAD_GATEWAY,
        ruma::api::error::ErrorKind::Unknown,
        format!("Cannot get the keys of {server}: {why}"),
    )
}

impl RemoteKeys {
    /// Keys over their table; `trusted` are the notaries asked first.
    pub fn new(server_name: OwnedServerName, table: ServerKeysTable, trusted: Vec<OwnedServerName>) -> Self {
        Self {
            server_name,
            table,
            trusted,
            fetching: KeyedLocks::new(TRACKED_SERVERS),
            failures: BoundedMap::new(TRACKED_SERVERS),
        }
    }

    /// The public key `key_id` of `server` if it may check a signature made at `at_ms`: a key
    /// valid until then, or a retired key that expired after then. `None` when the server does
    /// not have (or no longer vouches for) such a key.
    pub async fn key_valid_at(
        &self,
        fed: &Federation,
        server: &ServerName,
        key_id: &str,
        at_ms: u64,
    ) -> Result<Option<Vec<u8>>> {
        if server == self.server_name {
            return Ok(fed
                .own_keys
                .public_keys()?
                .into_iter()
                .find(|(id, _)| id == key_id)
                .map(|(_, key)| key));
        }
        if let Some(record) = self.table.get(server.as_str(), key_id)?
            && usable(&record, at_ms)
        {
            return Ok(Some(record.key));
        }
        if let Err(e) = self.fetch(fed, server).await {
            tracing::info!(%server, error = %e, "key fetch failed");
            return Err(e);
        }
        Ok(self
            .table
            .get(server.as_str(), key_id)?
            .filter(|record| usable(record, at_ms))
            .map(|record| record.key))
    }

    /// The keys of `server` valid now, from storage or fetched directly from it.
    async fn current_keys(&self, fed: &Federation, server: &ServerName) -> Result<PublicKeySet> {
        let now = util::now_ms();
        let stored = |table: &ServerKeysTable| -> Result<PublicKeySet> {
            Ok(table
                .keys_of(server.as_str())?
                .into_iter()
                .filter(|(_, record)| record.valid_until_ms >= now)
                .map(|(id, record)| (id, Base64::new(record.key)))
                .collect())
        };
        let keys = stored(&self.table)?;
        if !keys.is_empty() {
            return Ok(keys);
        }
        self.fetch_direct(fed, server).await?;
        stored(&self.table)
    }

    /// Fetches the keys of `server` (notaries first), unless a fetch failed recently; one fetch
    /// per server at a time, and a caller that waited for another's fetch uses its result.
    async fn fetch(&self, fed: &Federation, server: &ServerName) -> Result<()> {
        fed.check_peer(server)?;
        let server = server.to_owned();
        let _turn = self.fetching.lock(server.clone()).await;
        let now = Instant::now();
        if let Some(failure) = self.failures.with(&server, |f| f.copied())
            && failure.until > now
        {
            return Err(unavailable(&server, "it failed recently; not asking again yet"));
        }
        let mut last_error = None;
        for notary in self.trusted.iter().filter(|n| **n != server && **n != self.server_name) {
            match self.fetch_via_notary(fed, notary, &server).await {
                Ok(()) => {
                    self.succeeded(&server);
                    return Ok(());
                }
                Err(e) => {
                    tracing::info!(%server, %notary, error = %e, "notary key query failed");
                    last_error = Some(e);
                }
            }
        }
        match self.fetch_direct(fed, &server).await {
            Ok(()) => {
                self.succeeded(&server);
                Ok(())
            }
            Err(e) => {
                let delay = self
                    .failures
                    .with(&server, |f| f.map(|f| (f.delay * 2).min(MAX_BACKOFF)))
                    .unwrap_or(FIRST_BACKOFF);
                self.failures.insert(
                    server.clone(),
                    Failure {
                        until: now + delay,
                        delay,
                    },
                );
                Err(last_error.map_or(e, |notary_error| {
                    unavailable(&server, format!("directly and from the notaries ({notary_error})"))
                }))
            }
        }
    }

    fn succeeded(&self, server: &OwnedServerName) {
        self.failures.remove(server);
    }

    async fn fetch_direct(&self, fed: &Federation, server: &ServerName) -> Result<()> {
        let answer = fed.send_unsigned(server, get_server_keys::v2::Request::new()).await?;
        self.accept(server, answer.server_key.json(), None).await
    }

    async fn fetch_via_notary(&self, fed: &Federation, notary: &ServerName, server: &ServerName) -> Result<()> {
        let notary_keys = self.current_keys(fed, notary).await?;
        // No key id: every key the notary holds for the server (the criteria are per key id).
        let wanted: BTreeMap<OwnedServerSigningKeyId, get_remote_server_keys_batch::v2::QueryCriteria> =
            BTreeMap::new();
        let request = get_remote_server_keys_batch::v2::Request::new([(server.to_owned(), wanted)].into());
        let answer = fed.send_unsigned(notary, request).await?;
        let mut accepted = false;
        for raw in answer.server_keys.iter().take(16) {
            if self
                .accept(server, raw.json(), Some((notary, &notary_keys)))
                .await
                .is_ok()
            {
                accepted = true;
            }
        }
        if accepted {
            Ok(())
        } else {
            Err(unavailable(server, format!("{notary} relayed no valid answer")))
        }
    }

    /// Checks a key answer and stores its keys and the answer (with only the server's own
    /// signatures).
    async fn accept(
        &self,
        server: &ServerName,
        json: &RawValue,
        notary: Option<(&ServerName, &PublicKeySet)>,
    ) -> Result<()> {
        let mut object: CanonicalJsonObject = serde_json::from_str(json.get())
            .map_err(|e| unavailable(server, format!("the key answer is not canonical JSON: {e}")))?;
        match object.get("server_name") {
            Some(CanonicalJsonValue::String(name)) if name == server.as_str() => {}
            _ => return Err(unavailable(server, "the key answer is about another server")),
        }
        let current = listed_keys(&object, "verify_keys");
        if current.is_empty() {
            return Err(unavailable(server, "the key answer lists no ed25519 key"));
        }
        let own_set: PublicKeySet = current
            .iter()
            .map(|(id, key, _)| (id.clone(), Base64::new(key.clone())))
            .collect();
        verify_signed_by(&object, server.as_str(), own_set)?;
        if let Some((notary, keys)) = notary {
            verify_signed_by(&object, notary.as_str(), keys.clone())?;
        }
        let valid_until = field_u64(&object, "valid_until_ts")
            .unwrap_or(0)
            .min(util::now_ms() + MAX_VALIDITY_MS);
        let mut records = Vec::new();
        for (id, key, _) in current {
            let stored = self.table.get(server.as_str(), &id)?;
            let keep_later = stored.filter(|s| s.key == key).map_or(0, |s| s.valid_until_ms);
            records.push((
                id,
                VerifyKeyRecord {
                    key,
                    valid_until_ms: valid_until.max(keep_later),
                    expired_ms: None,
                },
            ));
        }
        for (id, key, expired) in listed_keys(&object, "old_verify_keys") {
            let Some(expired) = expired else { continue };
            if records.iter().any(|(current_id, _)| *current_id == id) {
                continue;
            }
            records.push((
                id,
                VerifyKeyRecord {
                    key,
                    valid_until_ms: 0,
                    expired_ms: Some(expired),
                },
            ));
        }
        // Keep the server's own signatures only: ours are added when we relay it.
        if let Some(CanonicalJsonValue::Object(signatures)) = object.get_mut("signatures") {
            signatures.retain(|entity, _| entity == server.as_str());
        }
        let stored_answer = self.table.answer(server.as_str())?;
        let newer = stored_answer
            .as_deref()
            .and_then(|bytes| serde_json::from_slice::<CanonicalJsonObject>(bytes).ok())
            .and_then(|old| field_u64(&old, "valid_until_ts"))
            .is_none_or(|old_until| old_until <= field_u64(&object, "valid_until_ts").unwrap_or(0));
        let answer_bytes = serde_json::to_vec(&object).map_err(|e| Error::internal(e.to_string()))?;
        self.table
            .store(server.as_str(), &records, newer.then_some(answer_bytes.as_slice()))
            .await?;
        Ok(())
    }

    /// The notary's answers about `server`: its own stored answer, fetched first when it is not
    /// valid until `min_valid_until` (and `may_fetch`), countersigned by us. Our own answer for
    /// ourselves.
    pub async fn notary_answers(
        &self,
        fed: &Federation,
        server: &ServerName,
        min_valid_until: u64,
        may_fetch: bool,
    ) -> Result<Vec<Box<RawValue>>> {
        if server == self.server_name {
            return Ok(vec![(*fed.own_keys.answer()?).clone()]);
        }
        if fed.check_peer(server).is_err() {
            return Ok(Vec::new());
        }
        let fresh = |table: &ServerKeysTable| -> Result<Option<CanonicalJsonObject>> {
            Ok(table
                .answer(server.as_str())?
                .and_then(|bytes| serde_json::from_slice::<CanonicalJsonObject>(&bytes).ok()))
        };
        let mut answer = fresh(&self.table)?;
        let stale = answer
            .as_ref()
            .and_then(|a| field_u64(a, "valid_until_ts"))
            .is_none_or(|until| until < min_valid_until);
        if stale && may_fetch {
            if let Err(e) = self.fetch(fed, server).await {
                tracing::info!(%server, error = %e, "notary fetch failed; answering what is stored");
            }
            answer = fresh(&self.table)?;
        }
        let Some(mut answer) = answer else {
            return Ok(Vec::new());
        };
        ruma::signatures::sign_json(self.server_name.as_str(), &fed.own_keys.current().keypair, &mut answer)
            .map_err(|e| Error::internal(format!("cannot countersign a key answer: {e}")))?;
        let json = serde_json::to_string(&answer).map_err(|e| Error::internal(e.to_string()))?;
        Ok(vec![
            RawValue::from_string(json).map_err(|e| Error::internal(e.to_string()))?,
        ])
    }
}
