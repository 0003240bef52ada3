//! Federation test support: a test certificate authority made with rcgen, Hearth servers named
//! by an IP literal and port on their own 127.0.0.x address with a TLS federation listener
//! whose certificate that CA issued, and a small blocking HTTPS client that records the
//! certificate it was shown.

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use ruma::CanonicalJsonObject;
use serde_json::{Value, json};
use tokio_rustls::rustls::{
    ClientConfig, ClientConnection, RootCertStore, StreamOwned,
    crypto::ring::default_provider,
    pki_types::{CertificateDer, ServerName, pem::PemObject},
};

use super::TestServer;

/// A certificate authority for one test, its files in a temporary directory.
pub struct TestCa {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
    dir: tempfile::TempDir,
    /// The CA certificate (PEM), for `federation.extra_ca_file`.
    pub ca_file: PathBuf,
}

impl TestCa {
    /// A new CA.
    pub fn new() -> TestCa {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Hearth test CA");
        let cert = params.self_signed(&key).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, cert.pem()).unwrap();
        TestCa {
            cert,
            key,
            dir,
            ca_file,
        }
    }

    /// The certificate and key files of `file_stem`.
    pub fn files(&self, file_stem: &str) -> (PathBuf, PathBuf) {
        (
            self.dir.path().join(format!("{file_stem}.crt")),
            self.dir.path().join(format!("{file_stem}.key")),
        )
    }

    /// A leaf certificate for `name` (an IP address or a DNS name), written as
    /// `<file_stem>.crt` / `<file_stem>.key`; returns both paths and the certificate's DER.
    pub fn issue(&self, name: &str, file_stem: &str) -> (PathBuf, PathBuf, Vec<u8>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap();
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        let (cert_file, key_file) = self.files(file_stem);
        std::fs::write(&cert_file, cert.pem()).unwrap();
        std::fs::write(&key_file, key.serialize_pem()).unwrap();
        (cert_file, key_file, cert.der().to_vec())
    }

    /// A TLS client configuration trusting only this CA.
    pub fn client_config(&self) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(&self.ca_file).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
        Arc::new(
            ClientConfig::builder_with_provider(Arc::new(default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth(),
        )
    }
}

/// A port free on `ip` right now.
pub fn free_port(ip: &str) -> u16 {
    TcpListener::bind((ip, 0)).unwrap().local_addr().unwrap().port()
}

/// A Hearth server named `ip:port`, federating over TLS on that address with a certificate of
/// `ca` (files `ca.files("ip:port")`), trusting `ca` for its outbound requests and allowed to reach loopback; `extra` are more
/// `HEARTH_*` settings. Not started: call `launch`.
pub fn federated_server(ca: &TestCa, ip: &str, extra: &[(&str, &str)]) -> TestServer {
    let port = free_port(ip);
    let listen = format!("{ip}:{port}");
    let (cert, key, _) = ca.issue(ip, &listen);
    let (cert, key, ca_file) = (
        cert.display().to_string(),
        key.display().to_string(),
        ca.ca_file.display().to_string(),
    );
    let mut env = vec![
        ("HEARTH_FEDERATION__ENABLED", "true"),
        ("HEARTH_FEDERATION__LISTEN", listen.as_str()),
        ("HEARTH_FEDERATION__TLS_CERT_FILE", cert.as_str()),
        ("HEARTH_FEDERATION__TLS_KEY_FILE", key.as_str()),
        ("HEARTH_FEDERATION__EXTRA_CA_FILE", ca_file.as_str()),
        ("HEARTH_FEDERATION__ALLOW_PRIVATE_DESTINATIONS", "true"),
    ];
    env.extend_from_slice(extra);
    let mut server = TestServer::unstarted(&env);
    server.server_name = listen;
    server
}

/// An HTTPS answer: status, JSON body (Null when not JSON), and the leaf certificate shown.
pub struct TlsAnswer {
    pub status: u16,
    pub body: Value,
    pub peer_cert: Vec<u8>,
}

#[allow(clippy::too_many_arguments)]
/// `method path` over HTTPS to `addr` (`ip:port`), verifying the certificate for `tls_name`
/// with `config`; `Host` is `host`.
pub fn tls_request(
    config: Arc<ClientConfig>,
    addr: &str,
    tls_name: &str,
    host: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Result<TlsAnswer, String> {
    let name = ServerName::try_from(tls_name.to_owned()).map_err(|e| e.to_string())?;
    let conn = ClientConnection::new(config, name).map_err(|e| e.to_string())?;
    let tcp = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut tls = StreamOwned::new(conn, tcp);
    let body = body.unwrap_or_default();
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    tls.write_all(request.as_bytes()).map_err(|e| e.to_string())?;
    tls.write_all(body).map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    // A peer that closes without close_notify still gave us its answer.
    let _ = tls.read_to_end(&mut raw);
    let peer_cert = tls
        .conn
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.to_vec())
        .ok_or("no certificate")?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, rest) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no answer: {text:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or("no status")?;
    let chunked = head.to_ascii_lowercase().contains("transfer-encoding: chunked");
    let body_text = if chunked { dechunk(rest) } else { rest.to_owned() };
    Ok(TlsAnswer {
        status,
        body: serde_json::from_str(&body_text).unwrap_or(Value::Null),
        peer_cert,
    })
}

fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || after.len() < size {
            break;
        }
        out.push_str(&after[..size]);
        rest = after[size..].trim_start_matches("\r\n");
    }
    out
}

/// Signs `method uri` (with `content`) as `origin` for `destination` with `key`, as the
/// `Authorization` header value.
pub fn x_matrix(
    key: &hearth::services::server_keys::ServerKeys,
    origin: &str,
    destination: &str,
    method: &str,
    uri: &str,
    content: Option<&Value>,
) -> String {
    let mut object: CanonicalJsonObject = serde_json::from_value(json!({
        "method": method, "uri": uri, "origin": origin, "destination": destination,
    }))
    .unwrap();
    if let Some(content) = content {
        object.insert("content".into(), serde_json::from_value(content.clone()).unwrap());
    }
    ruma::signatures::sign_json(origin, &key.keypair, &mut object).unwrap();
    let key_id = format!("ed25519:{}", key.version);
    let sig = serde_json::to_value(&object).unwrap()["signatures"][origin][&key_id]
        .as_str()
        .unwrap()
        .to_owned();
    format!("X-Matrix origin=\"{origin}\",destination=\"{destination}\",key=\"{key_id}\",sig=\"{sig}\"")
}

/// The signing key a server made in its data directory (for requests signed as that server).
pub fn signing_key_of(server: &TestServer) -> hearth::services::server_keys::ServerKeys {
    let text = std::fs::read_to_string(server.data_dir.join("signing.key")).unwrap();
    hearth::services::server_keys::ServerKeys::parse(&text).unwrap()
}

/// The room's current state as `client` sees it: `type|state_key` → event id.
pub fn room_state_ids(client: &super::Client, room_id: &str) -> std::collections::BTreeMap<String, String> {
    let state = client.get(&format!("/_matrix/client/v3/rooms/{room_id}/state"));
    state
        .ok()
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                format!("{}|{}", e["type"].as_str().unwrap(), e["state_key"].as_str().unwrap()),
                e["event_id"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// The bodies of the latest `limit` events of a room as `client` sees them, newest first.
pub fn message_bodies(client: &super::Client, room_id: &str, limit: usize) -> Vec<String> {
    let page = client.get(&format!(
        "/_matrix/client/v3/rooms/{room_id}/messages?dir=b&limit={limit}"
    ));
    page.ok()["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
        .collect()
}
