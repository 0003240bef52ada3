//! Typed tables: one module per family of data, each owning the layout of its column families
//! (see [`super::schema`]) and the record types stored in them. Services hold these, never raw
//! column-family names.

pub mod account_data;
pub mod accounts;
pub mod aliases;
pub mod appservice_queue;
pub mod device_keys;
pub mod device_lists_fed;
pub mod devices;
pub mod event_txns;
pub mod federation_queue;
pub mod filters;
pub mod key_backup;
pub mod media;
pub mod membership;
pub mod oauth_clients;
pub mod openid;
pub mod pdus;
pub mod push;
pub mod registration_tokens;
pub mod relations;
pub mod reports;
pub mod search;
pub mod server_keys;
pub mod shortids;
pub mod state;
pub mod streams;
pub mod timeline;
pub mod to_device;
pub mod transactions;
