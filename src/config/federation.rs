//! The `[federation]` section (the switch, the TLS listener, whom we talk to and how), as read
//! (`RawFederation`) and as validated (`FederationConfig`); errors name the key. Every key also
//! has its `HEARTH_FEDERATION__*` form, e.g. `HEARTH_FEDERATION__TLS_CERT_FILE`.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use serde::Deserialize;

use super::{ConfigError, key_error};
use crate::services::media::fetch::read_pem_certificates;

/// The `[federation]` section, validated.
#[derive(Clone, Debug)]
pub struct FederationConfig {
    /// Federation on or off. Off: nothing leaves the machine and the federation endpoints answer
    /// 404 `M_UNRECOGNIZED`.
    pub enabled: bool,
    /// The TLS listener for other servers, when Hearth terminates TLS itself.
    pub listen: Option<TlsListener>,
    /// Certificates (DER) trusted for outbound connections besides the system's roots.
    pub extra_roots: Vec<Vec<u8>>,
    /// Whether outbound requests may go to loopback, private and other non-public addresses.
    pub allow_private_destinations: bool,
    /// When not empty, the only servers we federate with (patterns, `*` and `?` wildcards).
    pub allowed_servers: Vec<String>,
    /// Servers we never federate with (patterns), whatever `allowed_servers` says.
    pub denied_servers: Vec<String>,
    /// The DNS server the resolver asks instead of the system's (`ip:port`).
    pub dns_server: Option<SocketAddr>,
    /// Servers asked for other servers' keys (`/_matrix/key/v2/query`) before the servers
    /// themselves. Empty: keys are fetched from each server directly.
    pub trusted_key_servers: Vec<String>,
    /// Pending invites to rooms this server does not have that one local user may hold from
    /// users of one other server; further ones are refused with 403.
    pub max_remote_invites_per_server: usize,
}

impl Default for FederationConfig {
    fn default() -> Self {
        FederationConfig {
            enabled: false,
            listen: None,
            extra_roots: Vec::new(),
            allow_private_destinations: false,
            allowed_servers: Vec::new(),
            denied_servers: Vec::new(),
            dns_server: None,
            trusted_key_servers: Vec::new(),
            max_remote_invites_per_server: DEFAULT_MAX_REMOTE_INVITES_PER_SERVER,
        }
    }
}

/// Where the TLS listener binds and what it presents.
#[derive(Clone, Debug)]
pub struct TlsListener {
    /// Address and port (8448 is the federation default).
    pub addr: SocketAddr,
    /// PEM certificate chain, leaf first (read again on SIGHUP).
    pub cert_file: PathBuf,
    /// PEM private key (read again on SIGHUP).
    pub key_file: PathBuf,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawFederation {
    enabled: bool,
    listen: Option<String>,
    tls_cert_file: Option<PathBuf>,
    tls_key_file: Option<PathBuf>,
    extra_ca_file: Option<PathBuf>,
    allow_private_destinations: bool,
    allowed_servers: Vec<String>,
    denied_servers: Vec<String>,
    dns_server: Option<String>,
    trusted_key_servers: Vec<String>,
    max_remote_invites_per_server: Option<usize>,
}

/// `federation.max_remote_invites_per_server` when not set.
const DEFAULT_MAX_REMOTE_INVITES_PER_SERVER: usize = 100;

fn check_pattern(key: &str, pattern: &str) -> Result<(), ConfigError> {
    let valid = !pattern.is_empty()
        && pattern
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']' | '*' | '?'));
    if valid {
        Ok(())
    } else {
        Err(key_error(
            key,
            format!("\"{pattern}\" is not a server name or a pattern of one"),
        ))
    }
}

fn readable(key: &str, path: &Path) -> Result<(), ConfigError> {
    std::fs::metadata(path)
        .map(|_| ())
        .map_err(|e| key_error(key, format!("cannot read {}: {e}", path.display())))
}

impl RawFederation {
    pub(super) fn validate(self) -> Result<FederationConfig, ConfigError> {
        for pattern in &self.allowed_servers {
            check_pattern("federation.allowed_servers", pattern)?;
        }
        for pattern in &self.denied_servers {
            check_pattern("federation.denied_servers", pattern)?;
        }
        for name in &self.trusted_key_servers {
            if ruma::ServerName::parse(name).is_err() {
                return Err(key_error(
                    "federation.trusted_key_servers",
                    format!("\"{name}\" is not a server name"),
                ));
            }
        }
        let listen = match self.listen {
            None => None,
            Some(text) => {
                let addr = text
                    .parse::<SocketAddr>()
                    .map_err(|_| key_error("federation.listen", format!("\"{text}\" is not an address:port")))?;
                let cert_file = self.tls_cert_file.ok_or_else(|| {
                    key_error(
                        "federation.tls_cert_file",
                        "the TLS listener (federation.listen) needs it",
                    )
                })?;
                let key_file = self.tls_key_file.ok_or_else(|| {
                    key_error(
                        "federation.tls_key_file",
                        "the TLS listener (federation.listen) needs it",
                    )
                })?;
                readable("federation.tls_cert_file", &cert_file)?;
                readable("federation.tls_key_file", &key_file)?;
                Some(TlsListener {
                    addr,
                    cert_file,
                    key_file,
                })
            }
        };
        let extra_roots = match &self.extra_ca_file {
            None => Vec::new(),
            Some(path) => read_pem_certificates(path).map_err(|e| key_error("federation.extra_ca_file", e))?,
        };
        let dns_server = match self.dns_server {
            None => None,
            Some(text) => Some(
                text.parse::<SocketAddr>()
                    .map_err(|_| key_error("federation.dns_server", format!("\"{text}\" is not an address:port")))?,
            ),
        };
        let max_remote_invites_per_server = self
            .max_remote_invites_per_server
            .unwrap_or(DEFAULT_MAX_REMOTE_INVITES_PER_SERVER);
        if max_remote_invites_per_server == 0 {
            return Err(key_error(
                "federation.max_remote_invites_per_server",
                "must be at least 1",
            ));
        }
        Ok(FederationConfig {
            enabled: self.enabled,
            listen,
            extra_roots,
            allow_private_destinations: self.allow_private_destinations,
            allowed_servers: self.allowed_servers,
            denied_servers: self.denied_servers,
            dns_server,
            trusted_key_servers: self.trusted_key_servers,
            max_remote_invites_per_server,
        })
    }
}
