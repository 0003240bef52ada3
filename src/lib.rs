//! Hearth, a Matrix homeserver with embedded storage.
//!
//! Three layers, each in its own module tree: [`api`] (HTTP, actix-web) calls [`services`]
//! (the rules of Matrix), which use [`storage`] (RocksDB). See ARCHITECTURE.md.

#![warn(unreachable_pub)]
#![deny(unused_must_use)]

pub mod admin;
pub mod api;
pub mod cli;
pub mod config;
pub mod error;
pub mod head_limit;
pub mod server;
pub mod services;
pub mod storage;
pub mod util;

pub use error::{Error, Result};
