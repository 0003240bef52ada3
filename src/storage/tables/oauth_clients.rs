//! OAuth 2.0 clients registered through dynamic client registration (`clientid_oauthclient`)
//! and the client each OAuth device was issued to (`userdevice_oauthclient`).

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::storage::{
    Batch, Db, StorageResult, codec,
    schema::{CLIENTID_OAUTHCLIENT, USERDEVICE_OAUTHCLIENT},
};

/// A registered client as stored.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct OAuthClientRecord {
    /// The client metadata as registered (RFC 7591), JSON text, returned as it was accepted.
    pub metadata_json: String,
    /// The redirect URIs it may use, exactly as registered.
    pub redirect_uris: Vec<String>,
    /// Grant types it registered for.
    pub grant_types: Vec<String>,
    /// `client_name`, for the consent page.
    pub client_name: Option<String>,
    /// `client_uri`.
    pub client_uri: String,
    /// Registration time, ms since the epoch.
    pub created_ms: u64,
}

/// Typed access to the registered clients.
#[derive(Clone)]
pub struct OAuthClientsTable {
    db: Arc<Db>,
}

impl OAuthClientsTable {
    /// Wraps the database.
    pub fn new(db: Arc<Db>) -> Self {
        Self { db }
    }

    /// One client.
    pub fn get(&self, client_id: &str) -> StorageResult<Option<OAuthClientRecord>> {
        self.db
            .get(CLIENTID_OAUTHCLIENT, client_id.as_bytes())?
            .map(|b| codec::decode(CLIENTID_OAUTHCLIENT, &b))
            .transpose()
    }

    /// The client `user_id`'s device `device_id` was issued to, if it came from OAuth.
    pub fn device_client(&self, user_id: &str, device_id: &str) -> StorageResult<Option<String>> {
        let key = codec::key(&[user_id.as_bytes(), device_id.as_bytes()]);
        Ok(self
            .db
            .get(USERDEVICE_OAUTHCLIENT, &key)?
            .map(|b| String::from_utf8_lossy(&b).into_owned()))
    }

    /// Queues the binding of a device to the client it was issued to.
    pub fn put_device_client(&self, batch: &mut Batch, user_id: &str, device_id: &str, client_id: &str) {
        let key = codec::key(&[user_id.as_bytes(), device_id.as_bytes()]);
        batch.put(USERDEVICE_OAUTHCLIENT, &key, client_id.as_bytes());
    }

    /// Queues a write.
    pub fn put(&self, batch: &mut Batch, client_id: &str, record: &OAuthClientRecord) -> StorageResult<()> {
        batch.put(
            CLIENTID_OAUTHCLIENT,
            client_id.as_bytes(),
            &codec::encode(CLIENTID_OAUTHCLIENT, record)?,
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oauth_client_record_round_trips() {
        let record = OAuthClientRecord {
            metadata_json: r#"{"client_uri":"https://a.example/"}"#.into(),
            redirect_uris: vec!["https://a.example/cb".into()],
            grant_types: vec!["authorization_code".into()],
            client_name: Some("A".into()),
            client_uri: "https://a.example/".into(),
            created_ms: 7,
        };
        let bytes = codec::encode(CLIENTID_OAUTHCLIENT, &record).unwrap();
        assert_eq!(
            codec::decode::<OAuthClientRecord>(CLIENTID_OAUTHCLIENT, &bytes).unwrap(),
            record
        );
    }
}
