//! Foundation benchmark (`cargo bench --bench foundation`): start-up time on an empty and on a
//! 10,000-user database, idle resident memory, and register/login throughput, measured on the
//! real release binary over loopback HTTP. Prints a markdown table; no timing is asserted.
//!
//! Knobs (environment): `BENCH_USERS` (default 10000), `BENCH_ACCOUNTS` accounts registered and
//! logged in with the default argon2 cost (default 40), `BENCH_CONCURRENCY` (default 4).

use std::{
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use support::{Server, agent, median, register, status_mb};

mod support;

fn start(dir: &Path, cheap_passwords: bool) -> Server {
    let cheap: &[(&str, &str)] = if cheap_passwords {
        &[
            ("HEARTH_PASSWORDS__MEMORY_KIB", "64"),
            ("HEARTH_PASSWORDS__ITERATIONS", "1"),
        ]
    } else {
        &[]
    };
    support::start(dir, cheap)
}

fn post(agent: &ureq::Agent, url: &str, body: &Value) -> (u16, Value) {
    let response = agent.post(url).send_json(body).expect("request");
    let status = response.status().as_u16();
    (status, response.into_body().read_json().unwrap_or(Value::Null))
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
            register(&agent(), &base, &format!("filler{i}"));
        });
        eprintln!("filled {users} users at {fill_rate:.0}/s");
    }
    let (big_ms, big_rss) = startup(&big, 5);

    // Throughput with the default argon2 cost, as a real deployment runs.
    let server = start(&big, false);
    let base = server.base.clone();
    let reg_rate = parallel(accounts, threads, {
        let base = base.clone();
        move |i| {
            register(&agent(), &base, &format!("bench{i}"));
        }
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
