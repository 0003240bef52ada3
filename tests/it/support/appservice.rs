//! A test application service: plain HTTP on 127.0.0.1 (a thread per connection), recording
//! every request it gets (method, path with query, `Authorization`, JSON body) and answering
//! by its [`Mode`]: 200 `{}`, 503, or holding the request. It can be stopped (connections
//! refused) and started again on the same port. [`Registration`] writes the YAML registration
//! file a [`super::TestServer`] reads from `HEARTH_APPSERVICES__REGISTRATION_FILES`.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::Value;

/// How the service answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// 200 `{}`.
    Answer,
    /// 503 `{"errcode":"M_UNKNOWN"}`.
    Fail,
    /// Holds each request for a minute without answering.
    Hang,
}

/// One request received.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    /// The path and query, as sent.
    pub path: String,
    pub authorization: Option<String>,
    pub body: Value,
    /// The status answered (0 when held).
    pub status: u16,
}

impl Request {
    /// The transaction id of a `PUT …/transactions/{txnId}`.
    pub fn txn_id(&self) -> Option<&str> {
        self.path
            .split('?')
            .next()?
            .strip_prefix("/_matrix/app/v1/transactions/")
    }

    /// The ids of the transaction's events.
    pub fn event_ids(&self) -> Vec<String> {
        self.list("events")
            .iter()
            .filter_map(|e| e["event_id"].as_str().map(str::to_owned))
            .collect()
    }

    /// A list field of the body (empty when absent).
    pub fn list(&self, field: &str) -> Vec<Value> {
        self.body[field].as_array().cloned().unwrap_or_default()
    }
}

struct Shared {
    mode: Mutex<Mode>,
    received: Mutex<Vec<Request>>,
    running: AtomicBool,
}

/// The running test service.
pub struct TestAppservice {
    pub port: u16,
    shared: Arc<Shared>,
}

impl TestAppservice {
    /// Starts a service on a free port of 127.0.0.1.
    pub fn start() -> TestAppservice {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().unwrap().port();
        let service = TestAppservice {
            port,
            shared: Arc::new(Shared {
                mode: Mutex::new(Mode::Answer),
                received: Mutex::default(),
                running: AtomicBool::new(false),
            }),
        };
        service.serve(listener);
        service
    }

    /// Its URL, for the registration.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Changes how it answers.
    pub fn set_mode(&self, mode: Mode) {
        *self.shared.mode.lock().unwrap() = mode;
    }

    /// Stops listening: connections are refused until [`Self::restart`].
    pub fn stop(&self) {
        if self.shared.running.swap(false, Ordering::SeqCst) {
            // Wakes the accept loop, which then drops the listener.
            let _ = TcpStream::connect(("127.0.0.1", self.port));
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline && TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Listens again on the same port.
    pub fn restart(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match TcpListener::bind(("127.0.0.1", self.port)) {
                Ok(l) => break l,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!("cannot listen again on {}: {e}", self.port),
            }
        };
        self.serve(listener);
    }

    fn serve(&self, listener: TcpListener) {
        self.shared.running.store(true, Ordering::SeqCst);
        let shared = Arc::clone(&self.shared);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if !shared.running.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                let shared = Arc::clone(&shared);
                std::thread::spawn(move || handle(stream, &shared));
            }
        });
    }

    /// Every request received so far.
    pub fn received(&self) -> Vec<Request> {
        self.shared.received.lock().unwrap().clone()
    }

    /// The transactions received (every attempt, retries included), in arrival order.
    pub fn transactions(&self) -> Vec<Request> {
        self.received()
            .into_iter()
            .filter(|r| r.method == "PUT" && r.txn_id().is_some())
            .collect()
    }

    /// The transactions answered 200, each id once (the first time), in arrival order.
    pub fn accepted(&self) -> Vec<Request> {
        let mut seen = std::collections::HashSet::new();
        self.transactions()
            .into_iter()
            .filter(|r| r.status == 200 && seen.insert(r.txn_id().unwrap_or_default().to_owned()))
            .collect()
    }

    /// The ids of the events accepted, in order, each transaction counted once.
    pub fn accepted_event_ids(&self) -> Vec<String> {
        self.accepted().iter().flat_map(Request::event_ids).collect()
    }

    /// Waits until `done` holds for what was received (at most `timeout`).
    pub fn wait_for(&self, timeout: Duration, done: impl Fn(&[Request]) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if done(&self.received()) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Waits until the events accepted include every one of `event_ids`.
    pub fn wait_for_events(&self, timeout: Duration, event_ids: &[&str]) -> bool {
        self.wait_for(timeout, |_| {
            let got = self.accepted_event_ids();
            event_ids.iter().all(|id| got.iter().any(|g| g == id))
        })
    }
}

impl Drop for TestAppservice {
    fn drop(&mut self) {
        self.stop();
    }
}

fn handle(stream: TcpStream, shared: &Shared) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut reader = BufReader::new(match stream.try_clone() {
        Ok(s) => s,
        Err(_) => return,
    });
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_owned();
    let path = parts.next().unwrap_or_default().to_owned();
    let mut length = 0usize;
    let mut authorization = None;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).unwrap_or(0) == 0 {
            return;
        }
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            let value = value.trim().to_owned();
            match name.to_ascii_lowercase().as_str() {
                "content-length" => length = value.parse().unwrap_or(0),
                "authorization" => authorization = Some(value),
                _ => {}
            }
        }
    }
    let mut body = vec![0u8; length];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    let mode = *shared.mode.lock().unwrap();
    let (status, answer) = match mode {
        Mode::Answer => (200, "{}"),
        Mode::Fail => (503, r#"{"errcode":"M_UNKNOWN","error":"down for maintenance"}"#),
        Mode::Hang => (0, ""),
    };
    shared.received.lock().unwrap().push(Request {
        method,
        path,
        authorization,
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        status,
    });
    if mode == Mode::Hang {
        std::thread::sleep(Duration::from_secs(60));
        return;
    }
    let reason = if status == 200 { "OK" } else { "Service Unavailable" };
    let mut stream = stream;
    let _ = write!(
        stream,
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
        answer.len()
    );
    let _ = stream.flush();
}

/// A registration file's fields.
pub struct Registration {
    pub id: String,
    /// `None`: no `url` (the service gets no transactions; ping answers `M_URL_NOT_SET`).
    pub url: Option<String>,
    pub as_token: String,
    pub hs_token: String,
    pub sender_localpart: String,
    /// Exclusive users regexes.
    pub users: Vec<String>,
    pub aliases: Vec<String>,
    pub rooms: Vec<String>,
    /// `receive_ephemeral` (MSC2409).
    pub ephemeral: bool,
    /// `org.matrix.msc3202` (one-time key counts in transactions).
    pub msc3202: bool,
    /// Whether the namespaces are exclusive (off by default, so tests can register namespace
    /// users with a password).
    pub exclusive: bool,
}

impl Registration {
    /// A registration for service `id` (tokens `as-{id}` / `hs-{id}`, sender `{id}bot`) with
    /// no namespaces.
    pub fn new(id: &str, url: Option<String>) -> Registration {
        Registration {
            id: id.to_owned(),
            url,
            as_token: format!("as-{id}"),
            hs_token: format!("hs-{id}"),
            sender_localpart: format!("{id}bot"),
            users: Vec::new(),
            aliases: Vec::new(),
            rooms: Vec::new(),
            ephemeral: false,
            exclusive: false,
            msc3202: false,
        }
    }

    /// The YAML text.
    pub fn yaml(&self) -> String {
        let list = |items: &[String]| {
            if items.is_empty() {
                " []\n".to_owned()
            } else {
                let mut out = "\n".to_owned();
                for regex in items {
                    out.push_str(&format!(
                        "    - exclusive: {}\n      regex: '{regex}'\n",
                        self.exclusive
                    ));
                }
                out
            }
        };
        let mut text = format!("id: {}\n", self.id);
        match &self.url {
            Some(url) => text.push_str(&format!("url: {url}\n")),
            None => text.push_str("url: null\n"),
        }
        if self.msc3202 {
            text.push_str("org.matrix.msc3202: true\n");
        }
        text.push_str(&format!(
            "as_token: {}\nhs_token: {}\nsender_localpart: {}\nrate_limited: false\nreceive_ephemeral: {}\nnamespaces:\n  users:{}  aliases:{}  rooms:{}",
            self.as_token,
            self.hs_token,
            self.sender_localpart,
            self.ephemeral,
            list(&self.users),
            list(&self.aliases),
            list(&self.rooms),
        ));
        text
    }

    /// Writes the file into `dir`, named after the id; its path.
    pub fn write(&self, dir: &Path) -> PathBuf {
        let path = dir.join(format!("{}.yaml", self.id));
        std::fs::write(&path, self.yaml()).expect("write registration");
        path
    }
}

/// The `HEARTH_APPSERVICES__REGISTRATION_FILES` value for `files`.
pub fn registration_files(files: &[PathBuf]) -> String {
    files
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(",")
}
