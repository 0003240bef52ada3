//! Cross-signing (spec "Cross-signing"): a user's master, self-signing and user-signing keys
//! (`keys/device_signing/upload`) and signatures of devices and users uploaded later
//! (`keys/signatures/upload`). Every signature is checked against the key that claims to
//! have made it; a bad one is reported and not stored.

use std::collections::BTreeMap;

use ruma::{CanonicalJsonObject, CanonicalJsonValue, OwnedUserId, UserId};
use serde_json::{Value, json, value::RawValue};

use super::{Keys, canonical_object, merge_signatures, signed_part, verify_signature};
use crate::{Error, Result, services::rooms::Rooms};

/// user → key id → `{errcode, error}`: what `keys/signatures/upload` refused.
pub type SignatureFailures = BTreeMap<OwnedUserId, BTreeMap<String, Value>>;

/// The single `ed25519:<public key>` entry of a cross-signing key: (key id, public key).
fn public_key(object: &CanonicalJsonObject) -> Option<(String, String)> {
    let Some(CanonicalJsonValue::Object(keys)) = object.get("keys") else {
        return None;
    };
    if keys.len() != 1 {
        return None;
    }
    let (id, value) = keys.iter().next()?;
    match value {
        CanonicalJsonValue::String(key) if id.strip_prefix("ed25519:") == Some(key.as_str()) => {
            Some((id.clone(), key.clone()))
        }
        _ => None,
    }
}

/// Checks one uploaded cross-signing key's shape: it names `user_id`, has `usage` and one
/// ed25519 key. Returns the object and its (key id, public key).
fn check_key(raw: &RawValue, user_id: &UserId, usage: &str) -> Result<(CanonicalJsonObject, (String, String))> {
    let object = canonical_object(raw, &format!("{usage} key"))?;
    if object.get("user_id") != Some(&CanonicalJsonValue::String(user_id.to_string())) {
        return Err(Error::invalid_param(format!(
            "The {usage} key must name the requesting user"
        )));
    }
    let has_usage = matches!(object.get("usage"), Some(CanonicalJsonValue::Array(u))
        if u.contains(&CanonicalJsonValue::String(usage.to_owned())));
    if !has_usage {
        return Err(Error::invalid_param(format!("The {usage} key must list usage {usage}")));
    }
    let key = public_key(&object).ok_or_else(|| {
        Error::invalid_param(format!(
            "The {usage} key must hold exactly one ed25519:<public key> entry"
        ))
    })?;
    Ok((object, key))
}

fn failure(message: impl Into<String>) -> Value {
    json!({"errcode": "M_INVALID_SIGNATURE", "error": message.into()})
}

impl Keys {
    /// A stored cross-signing key of `usage`, with signatures uploaded later merged in.
    pub fn cross_signing_key_with_signatures(&self, user_id: &UserId, usage: &str) -> Result<Option<Value>> {
        let Some(bytes) = self.table.cross_signing_key(user_id.as_str(), usage)? else {
            return Ok(None);
        };
        let mut key: Value = serde_json::from_slice(&bytes).map_err(|e| Error::internal(e.to_string()))?;
        let public = key["keys"]
            .as_object()
            .and_then(|k| k.values().next())
            .and_then(Value::as_str)
            .map(str::to_owned);
        if let Some(public) = public {
            merge_signatures(&mut key, self.table.signatures(user_id.as_str(), &public)?);
        }
        Ok(Some(key))
    }

    fn stored_key(&self, user_id: &UserId, usage: &str) -> Result<Option<(CanonicalJsonObject, (String, String))>> {
        let Some(bytes) = self.table.cross_signing_key(user_id.as_str(), usage)? else {
            return Ok(None);
        };
        let object: CanonicalJsonObject = serde_json::from_slice(&bytes).map_err(|e| Error::internal(e.to_string()))?;
        let key = public_key(&object).ok_or_else(|| Error::internal("stored cross-signing key has no key"))?;
        Ok(Some((object, key)))
    }

    /// Whether uploading `master` would replace an existing, different master key (which
    /// needs the user's password).
    pub fn replaces_master_key(&self, user_id: &UserId, master: Option<&RawValue>) -> Result<bool> {
        let Some(stored) = self.stored_key(user_id, "master")? else {
            return Ok(false);
        };
        Ok(match master {
            Some(raw) => match canonical_object(raw, "master key") {
                Ok(new) => signed_part(&new) != signed_part(&stored.0),
                Err(_) => true,
            },
            None => false,
        })
    }

    /// `keys/device_signing/upload`: checks every key (self-signing and user-signing keys must
    /// be signed by the master key, new or stored) before storing any, then records a
    /// device-list change.
    pub async fn upload_signing_keys(
        &self,
        rooms: &Rooms,
        user_id: &UserId,
        master: Option<&RawValue>,
        self_signing: Option<&RawValue>,
        user_signing: Option<&RawValue>,
    ) -> Result<()> {
        let master = master.map(|raw| check_key(raw, user_id, "master")).transpose()?;
        let _guard = self.user_locks.lock(user_id.to_owned()).await;
        let signer = match &master {
            Some((_, key)) => Some(key.clone()),
            None => self.stored_key(user_id, "master")?.map(|(_, key)| key),
        };
        let mut to_store = Vec::new();
        for (usage, raw) in [("self_signing", self_signing), ("user_signing", user_signing)] {
            let Some(raw) = raw else { continue };
            let (object, _) = check_key(raw, user_id, usage)?;
            let Some((master_id, master_key)) = &signer else {
                return Err(Error::invalid_param(format!(
                    "Upload a master key before the {usage} key"
                )));
            };
            verify_signature(&object, user_id.as_str(), master_id, master_key).map_err(|why| {
                Error::invalid_param(format!("The {usage} key is not signed by the master key: {why}"))
            })?;
            to_store.push((usage, object));
        }
        if let Some((object, _)) = master {
            to_store.push(("master", object));
        }
        if to_store.is_empty() {
            return Ok(());
        }
        let change = super::ListChange {
            devices: Vec::new(),
            signing_keys: to_store.iter().any(|(usage, _)| *usage != "user_signing"),
        };
        self.commit_device_list_change(rooms, user_id, change, |batch| {
            for (usage, object) in &to_store {
                let json = serde_json::to_vec(object).map_err(|e| Error::internal(e.to_string()))?;
                self.table.put_cross_signing_key(batch, user_id.as_str(), usage, &json);
            }
            Ok(())
        })
        .await?;
        Ok(())
    }

    /// `keys/signatures/upload`: each signed object is matched to what it signs (one of the
    /// requester's devices, the requester's master key, or another user's master key), the
    /// requester's signature on it is checked with the key that must have made it
    /// (self-signing key, a device key, user-signing key), and only good signatures are stored.
    pub async fn upload_signatures(
        &self,
        rooms: &Rooms,
        requester: &UserId,
        signed: Vec<(OwnedUserId, String, Box<RawValue>)>,
    ) -> Result<SignatureFailures> {
        let mut failures = SignatureFailures::new();
        let mut good: BTreeMap<OwnedUserId, Vec<(String, String, String)>> = BTreeMap::new();
        let self_signing = self.stored_key(requester, "self_signing")?.map(|(_, k)| k);
        let user_signing = self.stored_key(requester, "user_signing")?.map(|(_, k)| k);
        for (target_user, target_id, raw) in signed {
            let verdict = self.check_signed_object(
                requester,
                (&target_user, &target_id, &raw),
                self_signing.as_ref(),
                user_signing.as_ref(),
            );
            match verdict {
                Ok((key_id, signature)) => good
                    .entry(target_user)
                    .or_default()
                    .push((target_id, key_id, signature)),
                Err(why) => {
                    failures.entry(target_user).or_default().insert(target_id, failure(why));
                }
            }
        }
        for (target_user, signatures) in good {
            // Other servers hear of signatures on our user's own devices and master key.
            let mut change = super::ListChange::default();
            if target_user == requester {
                for (target, _, _) in &signatures {
                    if self.table.device_keys(target_user.as_str(), target)?.is_some() {
                        change.devices.push((target.clone(), false));
                    } else {
                        change.signing_keys = true;
                    }
                }
                change.devices.sort();
                change.devices.dedup();
            }
            self.commit_device_list_change(rooms, &target_user, change, |batch| {
                for (target, key_id, signature) in &signatures {
                    self.table.put_signature(
                        batch,
                        (target_user.as_str(), target),
                        (requester.as_str(), key_id),
                        signature,
                    );
                }
                Ok(())
            })
            .await?;
        }
        Ok(failures)
    }

    /// Checks one signed object; returns the (signer key id, signature) to store.
    fn check_signed_object(
        &self,
        requester: &UserId,
        (target_user, target_id, raw): (&UserId, &str, &RawValue),
        self_signing: Option<&(String, String)>,
        user_signing: Option<&(String, String)>,
    ) -> std::result::Result<(String, String), String> {
        let object = canonical_object(raw, "signed key").map_err(|_| "not a JSON object".to_owned())?;
        let stored_master = self.stored_key(target_user, "master").map_err(|e| e.to_string())?;
        let is_master = stored_master
            .as_ref()
            .is_some_and(|(_, (_, public))| public == target_id);
        let (stored, signer) = if target_user == requester && !is_master {
            // One of the requester's devices, signed with their self-signing key.
            let bytes = self
                .table
                .device_keys(target_user.as_str(), target_id)
                .map_err(|e| e.to_string())?
                .ok_or("unknown device")?;
            let stored: CanonicalJsonObject = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
            (stored, self_signing.cloned().ok_or("no self-signing key uploaded")?)
        } else if target_user == requester {
            // The requester's master key, signed with one of their devices.
            let (stored, _) = stored_master.ok_or("no master key")?;
            // Of the requester's signatures, the one made by a device that has keys (the
            // master key's own self-signature is among them too).
            let key_ids: Vec<String> = match object.get("signatures") {
                Some(CanonicalJsonValue::Object(s)) => match s.get(requester.as_str()) {
                    Some(CanonicalJsonValue::Object(s)) => s.keys().cloned().collect(),
                    _ => Vec::new(),
                },
                _ => Vec::new(),
            };
            let mut signer = None;
            for key_id in key_ids {
                let Some(device_id) = key_id.strip_prefix("ed25519:") else {
                    continue;
                };
                let Some(device) = self
                    .table
                    .device_keys(requester.as_str(), device_id)
                    .map_err(|e| e.to_string())?
                else {
                    continue;
                };
                let device: Value = serde_json::from_slice(&device).map_err(|e| e.to_string())?;
                if let Some(public) = device["keys"][&key_id].as_str() {
                    signer = Some((key_id.clone(), public.to_owned()));
                    break;
                }
            }
            let (key_id, public) = signer.ok_or("no signature by one of the user's devices")?;
            (stored, (key_id, public))
        } else if is_master {
            // Another user's master key, signed with the requester's user-signing key.
            let (stored, _) = stored_master.ok_or("no master key")?;
            (stored, user_signing.cloned().ok_or("no user-signing key uploaded")?)
        } else {
            return Err("only master keys of other users can be signed".to_owned());
        };
        if signed_part(&stored) != signed_part(&object) {
            return Err("the signed object differs from the stored key".to_owned());
        }
        let (key_id, public) = signer;
        verify_signature(&object, requester.as_str(), &key_id, &public)?;
        let signature = match object.get("signatures") {
            Some(CanonicalJsonValue::Object(s)) => match s.get(requester.as_str()) {
                Some(CanonicalJsonValue::Object(s)) => match s.get(&key_id) {
                    Some(CanonicalJsonValue::String(sig)) => sig.clone(),
                    _ => return Err("no signature".to_owned()),
                },
                _ => return Err("no signature".to_owned()),
            },
            _ => return Err("no signature".to_owned()),
        };
        Ok((key_id, signature))
    }
}
