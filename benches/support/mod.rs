//! What the benchmarks share: starting the release `hearth` binary on a loopback port (and
//! stopping it), an HTTP agent, registration through the dummy UIA stage, and /proc memory
//! figures. Each bench includes it with `mod support;`.

#![allow(dead_code)] // each bench uses its own subset

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::{Value, json};

/// A running server, stopped (SIGTERM, then SIGKILL) when dropped.
pub struct Server {
    pub child: Child,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// From spawning the process to the first answer of `/versions`.
    pub spawn_to_ready: Duration,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        for _ in 0..100 {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `hearth serve` on an ephemeral loopback port with data in `dir`, rate limits off and
/// the extra environment `env`, and waits until it answers.
pub fn start(dir: &Path, env: &[(&str, &str)]) -> Server {
    let started = Instant::now();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hearth"));
    cmd.args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--server-name",
        "bench.local",
        "--data-dir",
    ])
    .arg(dir)
    .env("HEARTH_RATE_LIMITS__ENABLED", "false")
    .env("HEARTH_LOGGING__LEVEL", "info")
    .envs(env.iter().copied())
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn hearth");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = loop {
        let line = lines.next().expect("hearth exited before listening").unwrap();
        if let Some(rest) = line.split("listening on http://").nth(1) {
            break rest.split_whitespace().next().unwrap().to_owned();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    let base = format!("http://{addr}");
    let agent = agent();
    while agent.get(format!("{base}/_matrix/client/versions")).call().is_err() {
        std::thread::sleep(Duration::from_millis(1));
    }
    Server {
        spawn_to_ready: started.elapsed(),
        child,
        base,
    }
}

/// An agent that returns error statuses instead of failing on them.
pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(600)))
        .build()
        .into()
}

/// One JSON request; (status, body or null).
pub fn call(agent: &ureq::Agent, method: &str, url: &str, token: Option<&str>, body: &Value) -> (u16, Value) {
    let request = http::Request::builder()
        .method(method)
        .uri(url)
        .header("Content-Type", "application/json");
    let request = match token {
        Some(t) => request.header("Authorization", format!("Bearer {t}")),
        None => request,
    };
    let request = request.body(body.to_string()).expect("request");
    let mut response = agent.run(request).expect("request failed");
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Registers `name` through user-interactive auth with the dummy stage; the access token.
pub fn register(agent: &ureq::Agent, base: &str, name: &str) -> String {
    let url = format!("{base}/_matrix/client/v3/register");
    let mut body = json!({"username": name, "password": "bench-password"});
    let (status, first) = call(agent, "POST", &url, None, &body);
    let done = if status == 401 {
        body["auth"] = json!({"type": "m.login.dummy", "session": first["session"]});
        let (status, done) = call(agent, "POST", &url, None, &body);
        assert_eq!(status, 200, "register {name}: {done}");
        done
    } else {
        assert_eq!(status, 200, "register {name}: {first}");
        first
    };
    done["access_token"].as_str().expect("access_token").to_owned()
}

/// A memory figure from /proc/PID/status (`VmRSS:`, `VmHWM:`), in MB.
pub fn status_mb(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

/// The median of some figures.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Refuses a server URL that is not on loopback (the benches send traffic nowhere else).
pub fn require_loopback(url: &str) {
    let host = url.trim_start_matches("http://");
    assert!(
        host.starts_with("127.") || host.starts_with("localhost") || host.starts_with("[::1]"),
        "--url must be a loopback address"
    );
}

/// The `p` quantile of sorted durations, in milliseconds rounded to two decimals.
pub fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    round2(sorted[index].as_secs_f64() * 1000.0)
}

/// Rounded to two decimals.
pub fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// A room, event or user id for a URL path.
pub fn enc(id: &str) -> String {
    id.replace('!', "%21").replace(':', "%3A").replace('@', "%40")
}
