//! Foundation benchmark (`cargo bench --bench foundation`): start-up time on an empty and on a
//! 10,000-user database, idle resident memory, and register/login throughput, measured on the
//! real release binary over loopback HTTP. Prints a markdown table; no timing is asserted.
//!
//! Knobs (environment): `BENCH_USERS` (default 10000), `BENCH_ACCOUNTS` accounts registered and
//! logged in with the default argon2 cost (default 40), `BENCH_CONCURRENCY` (default 4).

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::{Value, json};

struct Server {
    child: Child,
    base: String,
    spawn_to_ready: Duration,
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

fn start(dir: &Path, cheap_passwords: bool) -> Server {
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
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    if cheap_passwords {
        cmd.env("HEARTH_PASSWORDS__MEMORY_KIB", "64")
            .env("HEARTH_PASSWORDS__ITERATIONS", "1");
    }
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

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(120)))
        .build()
        .into()
}

fn post(agent: &ureq::Agent, url: &str, body: &Value) -> (u16, Value) {
    let response = agent.post(url).send_json(body).expect("request");
    let status = response.status().as_u16();
    (status, response.into_body().read_json().unwrap_or(Value::Null))
}

fn register(agent: &ureq::Agent, base: &str, name: &str) {
    let url = format!("{base}/_matrix/client/v3/register");
    let (status, first) = post(agent, &url, &json!({"username": name, "password": "bench-password"}));
    assert_eq!(status, 401, "{first}");
    let (status, body) = post(
        agent,
        &url,
        &json!({"username": name, "password": "bench-password", "auth": {"type": "m.login.dummy", "session": first["session"]}}),
    );
    assert_eq!(status, 200, "{body}");
}

fn login(agent: &ureq::Agent, base: &str, name: &str) {
    let (status, body) = post(
        agent,
        &format!("{base}/_matrix/client/v3/login"),
        &json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": name}, "password": "bench-password"}),
    );
    assert_eq!(status, 200, "{body}");
}

/// Runs `f(i)` for i in 0..n on `threads` threads; returns operations per second.
fn parallel(n: usize, threads: usize, f: impl Fn(usize) + Send + Sync + 'static) -> f64 {
    let next = Arc::new(AtomicUsize::new(0));
    let f = Arc::new(f);
    let started = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (next, f) = (Arc::clone(&next), Arc::clone(&f));
            std::thread::spawn(move || {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        break;
                    }
                    f(i);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    n as f64 / started.elapsed().as_secs_f64()
}

fn rss_mb(pid: u32) -> f64 {
    status_mb(pid, "VmRSS:")
}

/// A memory figure from /proc/PID/status (VmRSS, VmHWM), in MB.
fn status_mb(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn startup(dir: &Path, runs: usize) -> (f64, f64) {
    let mut times = Vec::new();
    let mut rss = Vec::new();
    for _ in 0..runs {
        let server = start(dir, false);
        times.push(server.spawn_to_ready.as_secs_f64() * 1000.0);
        std::thread::sleep(Duration::from_secs(3));
        rss.push(rss_mb(server.child.id()));
    }
    (median(times), median(rss))
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("foundation: bench");
        return;
    }
    let env_num = |k: &str, d: usize| std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d);
    let users = env_num("BENCH_USERS", 10_000);
    let accounts = env_num("BENCH_ACCOUNTS", 40);
    let threads = env_num("BENCH_CONCURRENCY", 4);
    let tmp = tempfile::tempdir().unwrap();
    let empty = tmp.path().join("empty");
    let big = tmp.path().join("big");

    let (empty_ms, empty_rss) = startup(&empty, 5);

    // Fill a database with `users` accounts (cheap hashes: this is set-up, not measurement).
    {
        let server = start(&big, true);
        let base = server.base.clone();
        let fill_rate = parallel(users, threads, move |i| {
            register(&agent(), &base, &format!("filler{i}"))
        });
        eprintln!("filled {users} users at {fill_rate:.0}/s");
    }
    let (big_ms, big_rss) = startup(&big, 5);

    // Throughput with the default argon2 cost, as a real deployment runs.
    let server = start(&big, false);
    let base = server.base.clone();
    let reg_rate = parallel(accounts, threads, {
        let base = base.clone();
        move |i| register(&agent(), &base, &format!("bench{i}"))
    });
    let login_rate = parallel(accounts, threads, move |i| login(&agent(), &base, &format!("bench{i}")));
    let rss_after = rss_mb(server.child.id());
    let peak = status_mb(server.child.id(), "VmHWM:");

    println!("| metric | value |");
    println!("|---|---|");
    println!("| start-up to first answer, empty database (median of 5) | {empty_ms:.0} ms |");
    println!("| start-up to first answer, {users}-user database (median of 5) | {big_ms:.0} ms |");
    println!("| idle RSS 3 s after start, empty database | {empty_rss:.1} MB |");
    println!("| idle RSS 3 s after start, {users}-user database | {big_rss:.1} MB |");
    println!("| register (UIA dummy, argon2 default cost), {threads} concurrent | {reg_rate:.1} accounts/s |");
    println!("| password login (argon2 default cost), {threads} concurrent | {login_rate:.1} logins/s |");
    println!("| RSS after the throughput runs (peak during them) | {rss_after:.1} MB ({peak:.1} MB) |");
}
