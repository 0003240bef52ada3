//! Federation: finding other homeservers (server discovery) and talking to them over HTTPS.

pub mod resolver;
pub mod transport;
