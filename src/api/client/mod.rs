//! Client-Server API handlers, one file per area of the spec
//! (`../shared/matrix-spec/content/client-server-api/`). Each handler takes ruma's request type
//! and a [`Ctx`](super::extract::Ctx), calls services, and returns ruma's response type.

pub mod account;
pub mod account_data;
pub mod admin;
pub mod appservice_ping;
pub mod backup;
pub mod device;
pub mod directory;
pub mod filter;
pub mod keys;
pub mod media;
pub mod membership;
pub mod message;
pub mod oauth;
pub mod oauth_pages;
pub mod openid;
pub mod presence;
pub mod profile;
pub mod push;
pub mod push_rules;
pub mod receipt;
pub mod register;
pub mod relations;
pub mod reporting;
pub mod room;
pub mod room_upgrade;
pub mod search;
pub mod session;
pub mod sliding_sync;
pub mod space;
pub mod state;
pub mod sync;
pub mod thirdparty;
pub mod thread_subscriptions;
pub mod threepid;
pub mod to_device;
pub mod typing;
pub mod user_directory;
pub mod versions;
pub mod voip;
pub mod well_known;
