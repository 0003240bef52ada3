//! Test support: [`TestServer`] runs the real binary on a temporary data directory, and
//! [`Client`] is a tiny Matrix client over `ureq` with a `check`-style helper. [`powercut`]
//! simulates power loss under a running server.

#![allow(dead_code)]

pub mod appservice;
pub mod appservice_queries;
pub mod fake_server;
pub mod federation;
pub mod media;
pub mod powercut;
pub mod synapse;

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex, mpsc},
    time::Duration,
};

use serde_json::{Value, json};

/// Path of the binary under test.
pub fn hearth_bin() -> &'static str {
    env!("CARGO_BIN_EXE_hearth")
}

/// A running `hearth serve` on a temporary directory.
pub struct TestServer {
    child: Option<Child>,
    /// Base URL, e.g. `http://127.0.0.1:38211`.
    pub base: String,
    /// The data directory (kept alive by `_dir` unless the test owns it).
    pub data_dir: PathBuf,
    _dir: Option<tempfile::TempDir>,
    env: Vec<(String, String)>,
    /// The server's ERROR and WARN log lines, across restarts.
    errors: Arc<Mutex<Vec<String>>>,
    /// `--server-name` (default `hearth.test`).
    pub server_name: String,
}

/// Environment for fast tests: cheap argon2, no rate limits, quiet logs.
pub fn fast_env() -> Vec<(String, String)> {
    [
        ("HEARTH_PASSWORDS__MEMORY_KIB", "64"),
        ("HEARTH_PASSWORDS__ITERATIONS", "1"),
        ("HEARTH_RATE_LIMITS__ENABLED", "false"),
        ("HEARTH_LOGGING__LEVEL", "info"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

impl TestServer {
    /// A server with the fast test settings.
    pub fn start() -> TestServer {
        Self::start_with(&[])
    }

    /// A server with extra `HEARTH_*` settings on top of the fast ones.
    pub fn start_with(extra: &[(&str, &str)]) -> TestServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let data_dir = dir.path().join("data");
        let mut env = fast_env();
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let mut server = TestServer {
            child: None,
            base: String::new(),
            data_dir,
            _dir: Some(dir),
            env,
            errors: Arc::default(),
            server_name: "hearth.test".into(),
        };
        server.launch();
        server
    }

    /// A server with its data directory and settings prepared but not started, so admin
    /// commands can run on the directory first; call [`TestServer::launch`] afterwards.
    pub fn unstarted(extra: &[(&str, &str)]) -> TestServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let data_dir = dir.path().join("data");
        let mut env = fast_env();
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        TestServer {
            child: None,
            base: String::new(),
            data_dir,
            _dir: Some(dir),
            env,
            errors: Arc::default(),
            server_name: "hearth.test".into(),
        }
    }

    /// Sets an environment variable for the next [`TestServer::launch`].
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.remove_env(key);
        self.env.push((key.to_owned(), value.to_owned()));
    }

    /// Unsets an environment variable for the next [`TestServer::launch`].
    pub fn remove_env(&mut self, key: &str) {
        self.env.retain(|(k, _)| k != key);
    }

    /// The ERROR and WARN lines the server logged so far (every run on this directory).
    pub fn logged_errors(&self) -> Vec<String> {
        self.errors.lock().unwrap().clone()
    }

    /// Whether the process has been started and not stopped.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Starts (or restarts) the process on the same data directory, on a fresh port.
    pub fn launch(&mut self) {
        assert!(self.child.is_none(), "already running");
        let mut cmd = Command::new(hearth_bin());
        cmd.args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--server-name",
            &self.server_name,
            "--data-dir",
        ])
        .arg(&self.data_dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn hearth");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        let errors = Arc::clone(&self.errors);
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("ERROR") || line.contains("WARN") {
                    errors.lock().unwrap().push(line.clone());
                }
                if !sent && let Some(rest) = line.split("listening on http://").nth(1) {
                    let _ = tx.send(rest.split_whitespace().next().unwrap_or("").to_owned());
                    sent = true;
                }
                if std::env::var_os("HEARTH_TEST_LOG").is_some() {
                    eprintln!("[hearth] {line}");
                }
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                panic!("hearth did not report a listening address within 30 s");
            }
        };
        self.base = format!("http://{addr}");
        self.child = Some(child);
    }

    /// SIGKILL: no shutdown, no flush.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits up to `timeout` for the process to end by itself; true if it did.
    pub fn wait_for_exit(&mut self, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        while let Some(child) = &mut self.child {
            if child.try_wait().ok().flatten().is_some() {
                self.child = None;
                return true;
            }
            if std::time::Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    }

    /// SIGTERM and wait for a graceful exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            unsafe_sigterm(child.id());
            for _ in 0..200 {
                if child.try_wait().ok().flatten().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Opens the (stopped) server's data directory in-process, to inspect what it stored.
    pub fn open_services(&self) -> std::sync::Arc<hearth::services::Services> {
        assert!(
            self.child.is_none(),
            "stop the server first: it holds the database lock"
        );
        let env = vec![
            ("HEARTH_DATABASE__PATH".to_owned(), self.data_dir.display().to_string()),
            ("HEARTH_SERVER_NAME".to_owned(), self.server_name.clone()),
        ];
        let config = hearth::config::load(None, env, &hearth::config::Overrides::default()).unwrap();
        hearth::services::Services::open(config).unwrap()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// A client for this server.
    pub fn client(&self) -> Client {
        Client::new(&self.base)
    }

    /// Runs `hearth ARGS…` against this server's data directory with the test environment.
    pub fn admin(&self, args: &[&str], stdin: Option<&str>) -> std::process::Output {
        let mut env = self.env.clone();
        env.push(("HEARTH_SERVER_NAME".into(), self.server_name.clone()));
        run_hearth(args, &self.data_dir, &env, stdin)
    }

    /// Registers `name` with password `pw` and returns a logged-in client.
    pub fn user(&self, name: &str, pw: &str) -> Client {
        let mut c = self.client();
        c.register(name, pw);
        c
    }
}

fn unsafe_sigterm(pid: u32) {
    let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).status();
}

/// Runs the binary with `--data-dir` appended.
pub fn run_hearth(
    args: &[&str],
    data_dir: &Path,
    env: &[(String, String)],
    stdin: Option<&str>,
) -> std::process::Output {
    use std::io::Write;
    let mut cmd = Command::new(hearth_bin());
    cmd.args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    for (k, v) in env {
        cmd.env(k, v);
    }
    if !env.iter().any(|(k, _)| k == "HEARTH_SERVER_NAME") {
        cmd.env("HEARTH_SERVER_NAME", "hearth.test");
    }
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn hearth");
    if let Some(input) = stdin {
        child.stdin.as_mut().unwrap().write_all(input.as_bytes()).unwrap();
    }
    drop(child.stdin.take());
    child.wait_with_output().expect("hearth output")
}

/// Runs the binary with exactly `args` (no `--data-dir` added) in a clean environment plus
/// `env`.
/// Killed after 30 s, so a command that should exit but serves instead fails the test rather
/// than hanging it.
pub fn run_plain(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = Command::new(hearth_bin());
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn hearth");
    let pid = child.id();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if done_rx.recv_timeout(Duration::from_secs(30)).is_err() {
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
        }
    });
    let stdout = child.stdout.take().expect("stdout");
    let stderr = child.stderr.take().expect("stderr");
    let read = |mut r: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            buf
        })
    };
    let out_thread = read(Box::new(stdout));
    let err_thread = read(Box::new(stderr));
    let status = child.wait().expect("wait for hearth");
    let _ = done_tx.send(());
    let _ = watchdog.join();
    std::process::Output {
        status,
        stdout: out_thread.join().unwrap_or_default(),
        stderr: err_thread.join().unwrap_or_default(),
    }
}

/// Standard output and standard error of a finished command, for assertion messages.
pub fn out_text(output: &std::process::Output) -> (String, String) {
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A response: status, headers we care about, JSON body (or `Value::Null`).
#[derive(Debug, Clone)]
pub struct Resp {
    /// HTTP status.
    pub status: u16,
    /// Body as JSON (`Null` when empty or not JSON).
    pub body: Value,
    /// Raw body text.
    pub text: String,
    /// Response headers (lower-case names).
    pub headers: Vec<(String, String)>,
}

impl Resp {
    /// The `errcode`, if any.
    pub fn errcode(&self) -> &str {
        self.body["errcode"].as_str().unwrap_or("")
    }
    /// A header value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    /// Asserts status and errcode in one go.
    #[track_caller]
    pub fn expect_err(&self, status: u16, errcode: &str) -> &Self {
        assert_eq!(
            (self.status, self.errcode()),
            (status, errcode),
            "unexpected response: {}",
            self.text
        );
        assert!(
            self.body["error"].is_string(),
            "error responses carry an `error` string: {}",
            self.text
        );
        self
    }
    /// Asserts a 200 and returns the body.
    #[track_caller]
    pub fn ok(&self) -> &Value {
        assert_eq!(self.status, 200, "expected 200, got: {}", self.text);
        &self.body
    }
}

/// A minimal Matrix client.
#[derive(Clone)]
pub struct Client {
    /// Base URL.
    pub base: String,
    /// Access token in use.
    pub token: Option<String>,
    /// Logged-in user.
    pub user_id: Option<String>,
    /// Logged-in device.
    pub device_id: Option<String>,
    agent: ureq::Agent,
}

impl Client {
    /// A client with no session.
    pub fn new(base: &str) -> Client {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        Client {
            base: base.to_owned(),
            token: None,
            user_id: None,
            device_id: None,
            agent,
        }
    }

    /// Any request with a raw body; `path` starts with `/`.
    pub fn raw(&self, method: &str, path: &str, body: Option<&[u8]>, content_type: Option<&str>) -> Resp {
        let ct: Vec<(&str, &str)> = content_type.map(|ct| ("Content-Type", ct)).into_iter().collect();
        self.raw_with(method, path, body, &ct)
    }

    /// Any request with a raw body and extra headers. An `Authorization` header among them
    /// replaces the client's token.
    pub fn raw_with(&self, method: &str, path: &str, body: Option<&[u8]>, headers: &[(&str, &str)]) -> Resp {
        self.try_raw_with(method, path, body, headers)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    /// A JSON request that may fail to get an answer at all (the server died): `Err` then.
    pub fn try_req(&self, method: &str, path: &str, body: Option<Value>) -> Result<Resp, String> {
        let bytes = body.map(|b| serde_json::to_vec(&b).unwrap());
        let ct: Vec<(&str, &str)> = bytes.iter().map(|_| ("Content-Type", "application/json")).collect();
        self.try_raw_with(method, path, bytes.as_deref(), &ct)
    }

    fn try_raw_with(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
        headers: &[(&str, &str)],
    ) -> Result<Resp, String> {
        let url = format!("{}{}", self.base, path);
        let mut builder = ureq::http::Request::builder().method(method).uri(&url);
        let own_auth = headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("authorization"));
        if let Some(token) = &self.token
            && !own_auth
        {
            builder = builder.header("Authorization", format!("Bearer {token}"));
        }
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        let request = builder
            .body(body.map(<[u8]>::to_vec).unwrap_or_default())
            .expect("request");
        let response = self.agent.run(request).map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
            .collect();
        let text = response.into_body().read_to_string().unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Ok(Resp {
            status,
            body,
            text,
            headers,
        })
    }

    /// A JSON request.
    pub fn req(&self, method: &str, path: &str, body: Option<Value>) -> Resp {
        let bytes = body.map(|b| serde_json::to_vec(&b).unwrap());
        self.raw(
            method,
            path,
            bytes.as_deref(),
            bytes.as_ref().map(|_| "application/json"),
        )
    }

    /// GET.
    pub fn get(&self, path: &str) -> Resp {
        self.req("GET", path, None)
    }
    /// POST JSON.
    pub fn post(&self, path: &str, body: Value) -> Resp {
        self.req("POST", path, Some(body))
    }
    /// PUT JSON.
    pub fn put(&self, path: &str, body: Value) -> Resp {
        self.req("PUT", path, Some(body))
    }
    /// DELETE with a JSON body.
    pub fn delete(&self, path: &str, body: Value) -> Resp {
        self.req("DELETE", path, Some(body))
    }

    /// Registers through UIA (`m.login.dummy`) and keeps the session.
    #[track_caller]
    pub fn register(&mut self, username: &str, password: &str) -> Value {
        let first = self.post(
            "/_matrix/client/v3/register",
            json!({"username": username, "password": password}),
        );
        assert_eq!(first.status, 401, "UIA first: {}", first.text);
        let session = first.body["session"].as_str().expect("session").to_owned();
        let done = self.post(
            "/_matrix/client/v3/register",
            json!({"username": username, "password": password, "auth": {"type": "m.login.dummy", "session": session}}),
        );
        let body = done.ok().clone();
        self.adopt(&body);
        body
    }

    /// Logs in with a password and keeps the session.
    #[track_caller]
    pub fn login(&mut self, user: &str, password: &str) -> Value {
        let r = self.post(
            "/_matrix/client/v3/login",
            json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": user}, "password": password}),
        );
        let body = r.ok().clone();
        self.adopt(&body);
        body
    }

    /// The same session against another base URL (a restarted server's new port).
    pub fn with_base(&self, base: &str) -> Client {
        let mut c = self.clone();
        c.base = base.to_owned();
        c
    }

    /// A copy of this client using another access token (or none).
    pub fn with_token(&self, token: Option<&str>) -> Client {
        let mut c = self.clone();
        c.token = token.map(str::to_owned);
        c
    }

    /// Sends `body` without `auth` to a UIA-guarded endpoint, asserts the 401 that opens the
    /// handshake, and returns its body (`flows`, `session`, `params`).
    #[track_caller]
    pub fn uia_start(&self, method: &str, path: &str, body: Value) -> Value {
        let r = self.req(method, path, Some(body));
        assert_eq!(r.status, 401, "UIA first step of {path}: {}", r.text);
        assert!(r.body["session"].is_string(), "UIA answer has a session: {}", r.text);
        r.body.clone()
    }

    /// `/register` through the dummy flow with an arbitrary body; returns the final answer
    /// (not adopted).
    #[track_caller]
    pub fn register_with(&self, body: Value) -> Resp {
        let path = "/_matrix/client/v3/register";
        let first = self.uia_start("POST", path, body.clone());
        let mut body = body;
        body["auth"] = json!({"type": "m.login.dummy", "session": first["session"]});
        self.post(path, body)
    }

    /// Logs in with a password and extra login fields; returns the raw answer (not adopted).
    pub fn login_with(&self, user: &str, password: &str, extra: Value) -> Resp {
        let mut body = json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": user}, "password": password});
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                b.insert(k.clone(), v.clone());
            }
        }
        self.post("/_matrix/client/v3/login", body)
    }

    /// `GET /account/whoami` with this client's token.
    pub fn whoami(&self) -> Resp {
        self.get("/_matrix/client/v3/account/whoami")
    }

    /// Takes the tokens of a register/login answer.
    pub fn adopt(&mut self, body: &Value) {
        self.token = body["access_token"].as_str().map(str::to_owned);
        self.user_id = body["user_id"].as_str().map(str::to_owned);
        self.device_id = body["device_id"].as_str().map(str::to_owned);
    }

    /// The logged-in user id.
    pub fn uid(&self) -> String {
        self.user_id.clone().expect("logged in")
    }

    /// Password UIA auth object for this user.
    pub fn password_auth(&self, password: &str, session: Option<&str>) -> Value {
        let mut auth = json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": self.uid()}, "password": password});
        if let Some(s) = session {
            auth["session"] = json!(s);
        }
        auth
    }
}

/// Percent-encodes a path segment.
pub fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}
