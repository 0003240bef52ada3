//! A fake federation server for tests of Hearth's outbound requests: HTTPS (HTTP/1.1,
//! keep-alive) on its own 127.0.0.x address with a certificate of a [`TestCa`], named by that
//! IP literal and port (so no DNS is needed). It runs on a runtime of its own, records every
//! request (method, path, the `X-Matrix` origin and destination, the JSON body), counts the
//! requests it holds at once, and answers `{"pdus":{}}` (or the configured [`Mode`], or a
//! body set for a path prefix). It can be stopped (connections refused) and started again on
//! the same address.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use serde_json::Value;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
    sync::Notify,
    task::JoinSet,
};
use tokio_rustls::{
    TlsAcceptor,
    rustls::{
        ServerConfig,
        pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    },
};

use super::federation::{TestCa, free_port};

/// How the server answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// 200 `{"pdus":{}}`.
    Answer,
    /// 503 `M_UNKNOWN`.
    Unavailable,
    /// Holds each request until [`FakeServer::release`], then answers 200.
    Hang,
}

/// One request received.
#[derive(Clone, Debug)]
pub struct Received {
    pub method: String,
    pub path: String,
    /// The `X-Matrix` `origin` and `destination` of the `Authorization` header.
    pub origin: Option<String>,
    pub destination: Option<String>,
    /// The whole `Authorization` header.
    pub authorization: Option<String>,
    /// The JSON body (Null when none).
    pub body: Value,
    /// The body as received.
    pub raw_body: Vec<u8>,
    /// The status answered.
    pub status: u16,
}

/// A raw answer for a path prefix: (prefix, status, content type, body).
type TypedAnswer = (String, u16, String, Vec<u8>);

struct Shared {
    received: Mutex<Vec<Received>>,
    mode: Mutex<Mode>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    release: Notify,
    /// A status and body every request is answered with instead of 200 `{"pdus":{}}`.
    fixed: Mutex<Option<(u16, String)>>,
    /// Bodies (200) for the requests whose path starts with a prefix: (prefix, body), the
    /// first match wins over `fixed`.
    routes: Mutex<Vec<(String, String)>>,
    /// Raw answers for the requests whose path starts with a prefix: (prefix, status,
    /// content type, body), before any other rule.
    typed: Mutex<Vec<TypedAnswer>>,
}

/// The server; stops when dropped (drop it outside any runtime).
pub struct FakeServer {
    /// The server name: `ip:port`.
    pub name: String,
    addr: SocketAddr,
    acceptor: TlsAcceptor,
    shared: Arc<Shared>,
    accept: Mutex<Option<tokio::task::JoinHandle<()>>>,
    runtime: tokio::runtime::Runtime,
}

impl FakeServer {
    /// Starts a server on a free port of `ip` with a certificate of `ca` for `ip`.
    pub fn start(ca: &TestCa, ip: &str) -> FakeServer {
        let port = free_port(ip);
        let name = format!("{ip}:{port}");
        let (cert_file, key_file, _) = ca.issue(ip, &name);
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_file)
            .unwrap()
            .map(|c| c.unwrap())
            .collect();
        let key = PrivateKeyDer::from_pem_file(&key_file).unwrap();
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let server = FakeServer {
            name,
            addr: format!("{ip}:{port}").parse().unwrap(),
            acceptor: TlsAcceptor::from(Arc::new(config)),
            shared: Arc::new(Shared {
                received: Mutex::new(Vec::new()),
                mode: Mutex::new(Mode::Answer),
                in_flight: AtomicUsize::new(0),
                max_in_flight: AtomicUsize::new(0),
                release: Notify::new(),
                fixed: Mutex::new(None),
                routes: Mutex::new(Vec::new()),
                typed: Mutex::new(Vec::new()),
            }),
            accept: Mutex::new(None),
            runtime,
        };
        server.resume();
        server
    }

    /// Closes the listener and every connection: connections are refused until [`Self::resume`].
    pub fn stop(&self) {
        if let Some(task) = self.accept.lock().unwrap().take() {
            task.abort();
            // Wait for the abort, so the port is closed on return.
            let _ = self.runtime.block_on(task);
        }
    }

    /// Listens again on the same address.
    pub fn resume(&self) {
        self.stop();
        let listener = self.runtime.block_on(async {
            for _ in 0..50 {
                match TcpListener::bind(self.addr).await {
                    Ok(l) => return l,
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
            panic!("cannot listen on {} again", self.addr)
        });
        let (acceptor, shared) = (self.acceptor.clone(), Arc::clone(&self.shared));
        let task = self.runtime.spawn(async move {
            // Dropping the set (when this task is aborted) closes every connection.
            let mut connections = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((tcp, _)) = accepted else { return };
                        let (acceptor, shared) = (acceptor.clone(), Arc::clone(&shared));
                        connections.spawn(async move {
                            let Ok(tls) = acceptor.accept(tcp).await else { return };
                            serve(tls, shared).await;
                        });
                    }
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
        });
        *self.accept.lock().unwrap() = Some(task);
    }

    /// Changes how requests are answered (requests already held stay held).
    pub fn set_mode(&self, mode: Mode) {
        *self.shared.mode.lock().unwrap() = mode;
    }

    /// Answers every request with `body` (200) from now on: a peer that lies.
    pub fn answer_with(&self, body: &str) {
        self.answer_status_with(200, body);
    }

    /// Answers every request with `status` and `body` from now on.
    pub fn answer_status_with(&self, status: u16, body: &str) {
        *self.shared.fixed.lock().unwrap() = Some((status, body.to_owned()));
    }

    /// Answers the requests whose path starts with `prefix` with `body` (200) from now on,
    /// before any other rule; a later call for the same prefix replaces the body.
    pub fn answer_path(&self, prefix: &str, body: &str) {
        let mut routes = self.shared.routes.lock().unwrap();
        routes.retain(|(p, _)| p != prefix);
        routes.push((prefix.to_owned(), body.to_owned()));
    }

    /// Answers the requests whose path starts with `prefix` with `status`, `content_type` and
    /// the raw `body` from now on, before any other rule (held by [`Mode::Hang`] all the same);
    /// a later call for the same prefix replaces it.
    pub fn answer_path_raw(&self, prefix: &str, status: u16, content_type: &str, body: &[u8]) {
        let mut typed = self.shared.typed.lock().unwrap();
        typed.retain(|(p, ..)| p != prefix);
        typed.push((prefix.to_owned(), status, content_type.to_owned(), body.to_vec()));
    }

    /// Answers the requests held by [`Mode::Hang`] and switches to [`Mode::Answer`].
    pub fn release(&self) {
        self.set_mode(Mode::Answer);
        self.shared.release.notify_waiters();
    }

    /// Every request received so far.
    pub fn received(&self) -> Vec<Received> {
        self.shared.received.lock().unwrap().clone()
    }

    /// The requests held right now.
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight.load(Ordering::SeqCst)
    }

    /// The most requests held at once so far.
    pub fn max_in_flight(&self) -> usize {
        self.shared.max_in_flight.load(Ordering::SeqCst)
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Serves the requests of one connection, in turn.
async fn serve<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(mut tls: S, shared: Arc<Shared>) {
    let mut buf = Vec::new();
    loop {
        // One request head, then its body.
        let (mut received, body_len, head_len) = loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut request = httparse::Request::new(&mut headers);
            if let Ok(httparse::Status::Complete(len)) = request.parse(&buf) {
                let header = |name: &str| {
                    request
                        .headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case(name))
                        .map(|h| String::from_utf8_lossy(h.value).into_owned())
                };
                let authorization = header("authorization");
                let auth = authorization.clone().unwrap_or_default();
                let body_len = header("content-length").and_then(|v| v.parse().ok()).unwrap_or(0usize);
                let received = Received {
                    method: request.method.unwrap_or_default().to_owned(),
                    path: request.path.unwrap_or_default().to_owned(),
                    origin: x_matrix_param(&auth, "origin"),
                    destination: x_matrix_param(&auth, "destination"),
                    authorization,
                    body: Value::Null,
                    raw_body: Vec::new(),
                    status: 0,
                };
                break (received, body_len, len);
            }
            let mut chunk = [0u8; 16384];
            match tls.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        while buf.len() < head_len + body_len {
            let mut chunk = [0u8; 65536];
            match tls.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        received.raw_body = buf[head_len..head_len + body_len].to_vec();
        received.body = serde_json::from_slice(&received.raw_body).unwrap_or(Value::Null);
        buf.drain(..head_len + body_len);

        let now = shared.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        shared.max_in_flight.fetch_max(now, Ordering::SeqCst);
        let mode = *shared.mode.lock().unwrap();
        if mode == Mode::Hang {
            let released = shared.release.notified();
            // The mode may have changed between reading it and waiting.
            if *shared.mode.lock().unwrap() == Mode::Hang {
                released.await;
            }
        }
        let typed = shared
            .typed
            .lock()
            .unwrap()
            .iter()
            .find(|(prefix, ..)| received.path.starts_with(prefix.as_str()))
            .map(|(_, status, content_type, body)| (*status, content_type.clone(), body.clone()));
        if let Some((status, content_type, body)) = typed {
            received.status = status;
            shared.received.lock().unwrap().push(received);
            shared.in_flight.fetch_sub(1, Ordering::SeqCst);
            let mut answer = format!(
                "HTTP/1.1 {status} X\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .into_bytes();
            answer.extend_from_slice(&body);
            if tls.write_all(&answer).await.is_err() || tls.flush().await.is_err() {
                return;
            }
            continue;
        }
        let routed = shared
            .routes
            .lock()
            .unwrap()
            .iter()
            .find(|(prefix, _)| received.path.starts_with(prefix.as_str()))
            .map(|(_, body)| (200, body.clone()));
        let fixed = routed.or_else(|| shared.fixed.lock().unwrap().clone());
        let (status, body) = match (mode, &fixed) {
            (Mode::Unavailable, _) => (503, r#"{"errcode":"M_UNKNOWN","error":"down"}"#),
            (_, Some((status, body))) => (*status, body.as_str()),
            _ => (200, r#"{"pdus":{}}"#),
        };
        received.status = status;
        shared.received.lock().unwrap().push(received);
        shared.in_flight.fetch_sub(1, Ordering::SeqCst);
        let answer = format!(
            "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        if tls.write_all(answer.as_bytes()).await.is_err() || tls.flush().await.is_err() {
            return;
        }
    }
}

/// `name="value"` from an `X-Matrix` authorization header.
fn x_matrix_param(header: &str, name: &str) -> Option<String> {
    let params = header.strip_prefix("X-Matrix ")?;
    params.split(',').find_map(|part| {
        let (key, value) = part.trim().split_once('=')?;
        (key == name).then(|| value.trim_matches('"').to_owned())
    })
}
