//! TLS for the federation listener (`[federation] listen`): rustls with the certificate chain and
//! key read from `tls_cert_file` / `tls_key_file`, read again on SIGHUP. A reload that fails
//! (missing file, a key that does not match) is logged and the previous certificate stays.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::Duration,
};

use tokio_rustls::{
    TlsAcceptor,
    rustls::{
        ServerConfig,
        crypto::ring::default_provider,
        pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
        server::{ClientHello, ResolvesServerCert},
        sign::CertifiedKey,
    },
};

/// A TLS handshake that takes longer than this is dropped.
pub(super) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The certificate presented to every client, swapped whole on reload.
#[derive(Debug)]
pub(super) struct ReloadableCert {
    cert_file: PathBuf,
    key_file: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
}

fn load(cert_file: &Path, key_file: &Path) -> Result<CertifiedKey, String> {
    let chain = CertificateDer::pem_file_iter(cert_file)
        .map_err(|e| format!("cannot read federation.tls_cert_file {}: {e}", cert_file.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("federation.tls_cert_file {} is not PEM: {e}", cert_file.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "federation.tls_cert_file {} holds no certificate",
            cert_file.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| {
        format!(
            "federation.tls_key_file {}: no usable private key: {e}",
            key_file.display()
        )
    })?;
    let provider = default_provider();
    let certified = CertifiedKey::from_der(chain, key, &provider)
        .map_err(|e| format!("federation.tls_key_file {}: {e}", key_file.display()))?;
    Ok(certified)
}

impl ReloadableCert {
    /// Reads both files; an error names the config key.
    pub(super) fn open(cert_file: &Path, key_file: &Path) -> Result<Arc<ReloadableCert>, String> {
        let certified = load(cert_file, key_file)?;
        Ok(Arc::new(ReloadableCert {
            cert_file: cert_file.to_owned(),
            key_file: key_file.to_owned(),
            current: RwLock::new(Arc::new(certified)),
        }))
    }

    /// Reads the files again; on failure the previous certificate stays in use.
    pub(super) fn reload(&self) -> Result<(), String> {
        let certified = load(&self.cert_file, &self.key_file)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(certified);
        Ok(())
    }

    /// The acceptor for the listener (HTTP/1.1 only, as the plain listener).
    pub(super) fn acceptor(self: &Arc<Self>) -> Result<TlsAcceptor, String> {
        let mut config = ServerConfig::builder_with_provider(Arc::new(default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(self) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(TlsAcceptor::from(Arc::new(config)))
    }

    /// Reloads on every SIGHUP for as long as the runtime runs.
    pub(super) fn reload_on_sighup(self: &Arc<Self>) {
        let cert = Arc::clone(self);
        tokio::spawn(async move {
            let Ok(mut hangups) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
                tracing::warn!("cannot watch SIGHUP: the TLS certificate will not be reloaded");
                return;
            };
            while hangups.recv().await.is_some() {
                match cert.reload() {
                    Ok(()) => tracing::info!(file = %cert.cert_file.display(), "TLS certificate reloaded"),
                    Err(e) => tracing::error!("TLS certificate not reloaded, the previous one stays: {e}"),
                }
            }
        });
    }
}

impl ResolvesServerCert for ReloadableCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.current.read().unwrap_or_else(|p| p.into_inner())))
    }
}
