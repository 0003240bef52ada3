//! Load tool for big rooms and big accounts (issue 23, "Big rooms at constant cost"), for any
//! homeserver (Hearth or Synapse) at `--url`. One scenario per run; each prints a human table
//! on stderr and one JSON line (`metrics`, as mxbench does) on stdout. No timing is asserted.
//!
//! - `grow`: one user creates a public room (guests may join), then the room grows by joins to
//!   each of `--sizes` (1000,4000,16000) members. Members are registered as guests when the
//!   server allows it (Synapse as `synapse.sh` configures it), else through the dummy UIA stage
//!   (Hearth: give it cheap password hashing for the setup); registration and joins each run
//!   `--concurrency` (10) at a time. Per size:
//!   - `fill`: the rate of the joins of the step (members/s; a constant rate means building the
//!     room is linear), registration timed apart;
//!   - `join`: `--probe` (200) further joins measured **one at a time** (p50/p99), so the room
//!     has `size + probe` members afterwards (the next step fills from there);
//!   - `sync`: after `--messages` (20) messages from four members, the initial `/sync` of one of
//!     them with `{room:{timeline:{limit:10},state:{lazy_load_members:true}}}` (lazy) and without
//!     a filter (full): p50 over `--runs` (5) of each, the lazy ones first, and the response
//!     bytes;
//!   - with `--pid` (or `BENCH_SERVER_PID`): the server's RSS and peak RSS after the step.
//!
//!   `--second-room N` then creates a second public room and joins N of the existing members
//!   into it (the disk target is measured after a 1k- and a 32k-member room; the data
//!   directory itself is measured by the driver, `vs_synapse.sh bigroom`).
//! - `syncs`: one account in `--rooms` (1280) rooms, each created with a name and a topic and
//!   given `--messages` (8) messages (an initial sync of about 8 MB); then one unfiltered initial `/sync` alone, then
//!   `--clients` (10) at once. Reports each response's size and time and, with `--pid`, the
//!   server's peak RSS (`VmHWM`) before, after the single sync and after the burst (the peak is
//!   reset through `/proc/PID/clear_refs` before each phase when that file is writable, so each
//!   figure is the peak of its phase).
//!
//! `cargo bench --bench big_room -- grow|syncs --url http://127.0.0.1:8008 [flags]` (or the URL
//! in `HS_URL`). Only loopback URLs are accepted.

use std::{
    sync::{
        Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use support::{agent, call, enc, percentile, register, round2, status_mb};

mod support;

struct Args {
    scenario: String,
    url: String,
    sizes: Vec<usize>,
    probe: usize,
    messages: Option<usize>,
    runs: usize,
    concurrency: usize,
    second_room: usize,
    rooms: usize,
    clients: usize,
    pid: Option<u32>,
}

fn parse_args() -> Args {
    let mut args = Args {
        scenario: String::new(),
        url: std::env::var("HS_URL").unwrap_or_default(),
        sizes: vec![1000, 4000, 16000],
        probe: 200,
        messages: None,
        runs: 5,
        concurrency: 10,
        second_room: 0,
        rooms: 1280,
        clients: 10,
        pid: std::env::var("BENCH_SERVER_PID").ok().and_then(|p| p.parse().ok()),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--url" => args.url = value(),
            "--sizes" => {
                args.sizes = value()
                    .split(',')
                    .map(|s| s.trim().parse().expect("--sizes N,N,..."))
                    .collect()
            }
            "--probe" => args.probe = value().parse().expect("--probe N"),
            "--messages" => args.messages = Some(value().parse().expect("--messages N")),
            "--runs" => args.runs = value().parse::<usize>().expect("--runs N").max(1),
            "--concurrency" => args.concurrency = value().parse::<usize>().expect("--concurrency N").max(1),
            "--second-room" => args.second_room = value().parse().expect("--second-room N"),
            "--rooms" => args.rooms = value().parse().expect("--rooms N"),
            "--clients" => args.clients = value().parse::<usize>().expect("--clients N").max(1),
            "--pid" => args.pid = Some(value().parse().expect("--pid PID")),
            "grow" | "syncs" => args.scenario = flag,
            _ => {} // `cargo bench` adds `--bench`
        }
    }
    support::require_loopback(&args.url);
    args
}

fn main() {
    let args = parse_args();
    match args.scenario.as_str() {
        "grow" => grow(&args),
        "syncs" => syncs(&args),
        _ => panic!("usage: big_room grow|syncs --url URL [flags]"),
    }
}

/// Percent-encodes a query value (everything but unreserved characters).
fn query_value(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// An initial `/sync` (no `since`, `timeout=0`) with an optional inline filter: (status, the
/// response bytes, the time it took, the parsed body when `parse`).
fn initial_sync(
    agent: &ureq::Agent,
    url: &str,
    token: &str,
    filter: Option<&Value>,
    parse: bool,
) -> (u16, usize, Duration, Value) {
    let mut target = format!("{url}/_matrix/client/v3/sync?timeout=0");
    if let Some(filter) = filter {
        target.push_str(&format!("&filter={}", query_value(&filter.to_string())));
    }
    let request = http::Request::builder()
        .method("GET")
        .uri(target)
        .header("Authorization", format!("Bearer {token}"))
        .body(())
        .expect("request");
    let started = Instant::now();
    let mut response = agent.run(request).expect("sync request");
    let status = response.status().as_u16();
    let text = response
        .body_mut()
        .with_config()
        .limit(u64::MAX)
        .read_to_string()
        .unwrap_or_default();
    let took = started.elapsed();
    let body = if parse {
        serde_json::from_str(&text).unwrap_or(Value::Null)
    } else {
        Value::Null
    };
    (status, text.len(), took, body)
}

/// Registers members: as a guest when the server allows it (`guests` remembers whether it
/// does), else through the dummy stage. (user id, access token).
fn register_member(agent: &ureq::Agent, url: &str, name: &str, guests: &AtomicBool) -> (String, String) {
    if guests.load(Ordering::Relaxed) {
        let (status, body) = call(
            agent,
            "POST",
            &format!("{url}/_matrix/client/v3/register?kind=guest"),
            None,
            &json!({}),
        );
        if status == 200 {
            return (
                body["user_id"].as_str().expect("user_id").to_owned(),
                body["access_token"].as_str().expect("access_token").to_owned(),
            );
        }
        guests.store(false, Ordering::Relaxed);
    }
    let token = register(agent, url, name);
    let (status, me) = call(
        agent,
        "GET",
        &format!("{url}/_matrix/client/v3/account/whoami"),
        Some(&token),
        &json!({}),
    );
    assert_eq!(status, 200, "whoami: {me}");
    (me["user_id"].as_str().expect("user_id").to_owned(), token)
}

/// Runs `job(i)` for every `i` in `range`, `concurrency` at a time; the results in order.
fn run_concurrently<T: Send>(
    range: std::ops::Range<usize>,
    concurrency: usize,
    job: impl Fn(&ureq::Agent, usize) -> T + Sync,
) -> Vec<T> {
    let next = AtomicUsize::new(range.start);
    let out: Mutex<Vec<(usize, T)>> = Mutex::new(Vec::with_capacity(range.len()));
    thread::scope(|scope| {
        for _ in 0..concurrency.min(range.len().max(1)) {
            scope.spawn(|| {
                let agent = agent();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= range.end {
                        break;
                    }
                    let value = job(&agent, i);
                    out.lock().unwrap().push((i, value));
                }
            });
        }
    });
    let mut out = out.into_inner().unwrap();
    out.sort_by_key(|(i, _)| *i);
    out.into_iter().map(|(_, v)| v).collect()
}

fn join(agent: &ureq::Agent, url: &str, room: &str, token: &str) {
    let (status, body) = call(
        agent,
        "POST",
        &format!("{url}/_matrix/client/v3/rooms/{}/join", enc(room)),
        Some(token),
        &json!({}),
    );
    assert_eq!(status, 200, "join: {body}");
}

fn send(agent: &ureq::Agent, url: &str, room: &str, token: &str, txn: &str, body: &str) {
    let (status, answer) = call(
        agent,
        "PUT",
        &format!("{url}/_matrix/client/v3/rooms/{}/send/m.room.message/{txn}", enc(room)),
        Some(token),
        &json!({"msgtype": "m.text", "body": body}),
    );
    assert_eq!(status, 200, "send: {answer}");
}

fn memory(pid: Option<u32>) -> (f64, f64) {
    pid.map_or((0.0, 0.0), |pid| (status_mb(pid, "VmRSS:"), status_mb(pid, "VmHWM:")))
}

/// Resets the peak RSS of `pid` (Linux: `5` into `clear_refs`); whether it could.
fn reset_peak(pid: Option<u32>) -> bool {
    pid.is_some_and(|pid| std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok())
}

fn create_public_room(agent: &ureq::Agent, url: &str, token: &str, name: &str) -> String {
    let (status, room) = call(
        agent,
        "POST",
        &format!("{url}/_matrix/client/v3/createRoom"),
        Some(token),
        &json!({
            "preset": "public_chat",
            "name": name,
            "initial_state": [{"type": "m.room.guest_access", "state_key": "", "content": {"guest_access": "can_join"}}],
        }),
    );
    assert_eq!(status, 200, "createRoom: {room}");
    room["room_id"].as_str().expect("room_id").to_owned()
}

// ---------------------------------------------------------------------------------------------
// grow

fn grow(args: &Args) {
    let url = args.url.as_str();
    let prefix = format!("br{}", std::process::id());
    let messages = args.messages.unwrap_or(20);
    let a = agent();
    let guests = AtomicBool::new(false);
    // The creator and three members who send and sync: real accounts.
    let creator = register(&a, url, &format!("{prefix}c"));
    let room = create_public_room(&a, url, &creator, "big room");
    let speakers: Vec<String> = (0..3)
        .map(|i| {
            let token = register(&a, url, &format!("{prefix}s{i}"));
            join(&a, url, &room, &token);
            token
        })
        .collect();
    guests.store(true, Ordering::Relaxed);
    let mut members: Vec<String> = Vec::new(); // tokens of the bulk members
    let mut count = 1 + speakers.len();
    let lazy = json!({"room": {"timeline": {"limit": 10}, "state": {"lazy_load_members": true}}});
    let mut steps = Vec::new();
    let mut sent = 0usize;
    eprintln!(
        "{:>7} {:>9} {:>11} {:>11} {:>9} {:>9} {:>10} {:>12} {:>10} {:>12} {:>8} {:>8}",
        "members",
        "reg/s",
        "fill join/s",
        "fill s",
        "join p50",
        "join p99",
        "lazy p50",
        "lazy bytes",
        "full p50",
        "full bytes",
        "RSS MB",
        "peak MB"
    );
    for &size in &args.sizes {
        // Fill: register, then join, `concurrency` at a time.
        let need = size.saturating_sub(count);
        let started = Instant::now();
        let base = members.len();
        let new: Vec<String> = run_concurrently(base..base + need, args.concurrency, |agent, i| {
            register_member(agent, url, &format!("{prefix}m{i}"), &guests).1
        });
        let register_s = started.elapsed().as_secs_f64();
        let started = Instant::now();
        run_concurrently(0..new.len(), args.concurrency, |agent, i| {
            join(agent, url, &room, &new[i])
        });
        let fill_s = started.elapsed().as_secs_f64();
        members.extend(new);
        count += need;
        // Probe: further joins, one at a time.
        let base = members.len();
        let probe_tokens: Vec<String> = run_concurrently(base..base + args.probe, args.concurrency, |agent, i| {
            register_member(agent, url, &format!("{prefix}m{i}"), &guests).1
        });
        let mut took: Vec<Duration> = probe_tokens
            .iter()
            .map(|token| {
                let t = Instant::now();
                join(&a, url, &room, token);
                t.elapsed()
            })
            .collect();
        took.sort();
        members.extend(probe_tokens);
        count += args.probe;
        // Messages from the speakers, then the initial syncs of one of them.
        for k in 0..messages {
            let token = &speakers[k % speakers.len()];
            send(
                &a,
                url,
                &room,
                token,
                &format!("{prefix}-{size}-{k}"),
                &format!("message {k} at {size} members"),
            );
            sent += 1;
        }
        let reader = &speakers[0];
        let mut lazy_took = Vec::new();
        let mut full_took = Vec::new();
        let (mut lazy_bytes, mut full_bytes) = (0, 0);
        let mut lazy_members = 0;
        // The lazy syncs back to back, then the full ones: a 10 MB full sync between two lazy
        // ones would leave each lazy sync to read again what the full one pushed out of the
        // caches, which measures the mix rather than the lazy sync.
        for run in 0..args.runs {
            let (status, bytes, took, body) = initial_sync(&a, url, reader, Some(&lazy), run == 0);
            assert_eq!(status, 200, "lazy sync");
            if run == 0 {
                lazy_members = body["rooms"]["join"][&room]["state"]["events"]
                    .as_array()
                    .map_or(0, |events| {
                        events.iter().filter(|e| e["type"] == "m.room.member").count()
                    });
            }
            lazy_bytes = bytes;
            lazy_took.push(took);
        }
        for _ in 0..args.runs {
            let (status, bytes, took, _) = initial_sync(&a, url, reader, None, false);
            assert_eq!(status, 200, "full sync");
            full_bytes = bytes;
            full_took.push(took);
        }
        lazy_took.sort();
        full_took.sort();
        let (rss, peak) = memory(args.pid);
        let step = json!({
            "members": count,
            "register_per_s": (need as f64 / register_s.max(1e-9)).round(),
            "fill_joins_per_s": round2(need as f64 / fill_s.max(1e-9)),
            "fill_s": round2(fill_s),
            "join_p50_ms": percentile(&took, 0.5),
            "join_p99_ms": percentile(&took, 0.99),
            "isync_lazy_p50_ms": percentile(&lazy_took, 0.5),
            "isync_lazy_bytes": lazy_bytes,
            "isync_lazy_member_events": lazy_members,
            "isync_full_p50_ms": percentile(&full_took, 0.5),
            "isync_full_bytes": full_bytes,
            "messages_in_room": sent,
            "rss_mb": round2(rss),
            "peak_rss_mb": round2(peak),
        });
        eprintln!(
            "{:>7} {:>9} {:>11} {:>11} {:>9} {:>9} {:>10} {:>12} {:>10} {:>12} {:>8} {:>8}",
            count,
            step["register_per_s"],
            step["fill_joins_per_s"],
            step["fill_s"],
            step["join_p50_ms"],
            step["join_p99_ms"],
            step["isync_lazy_p50_ms"],
            lazy_bytes,
            step["isync_full_p50_ms"],
            full_bytes,
            step["rss_mb"],
            step["peak_rss_mb"]
        );
        steps.push((size, step));
    }
    // A second room of `second_room` members drawn from the first room's.
    let mut second = Value::Null;
    if args.second_room > 0 {
        let n = args.second_room.min(members.len());
        let room2 = create_public_room(&a, url, &creator, "second room");
        let started = Instant::now();
        run_concurrently(0..n, args.concurrency, |agent, i| join(agent, url, &room2, &members[i]));
        let s = started.elapsed().as_secs_f64();
        second = json!({"members": n + 1, "fill_joins_per_s": round2(n as f64 / s.max(1e-9)), "fill_s": round2(s)});
        eprintln!("second room: {second}");
    }
    // Flat metrics per size for the driver's table, plus the steps.
    let mut metrics = serde_json::Map::new();
    for (size, step) in &steps {
        for key in [
            "fill_joins_per_s",
            "join_p50_ms",
            "join_p99_ms",
            "isync_lazy_p50_ms",
            "isync_lazy_bytes",
            "isync_full_p50_ms",
            "isync_full_bytes",
        ] {
            metrics.insert(format!("{key}@{size}"), step[key].clone());
        }
    }
    let line = json!({
        "scenario": "big-room-grow",
        "params": {"sizes": args.sizes, "probe": args.probe, "messages_per_step": messages, "runs": args.runs,
                   "concurrency": args.concurrency, "join_probe": "one at a time", "guests": guests.load(Ordering::Relaxed)},
        "metrics": metrics,
        "steps": steps.into_iter().map(|(_, s)| s).collect::<Vec<_>>(),
        "second_room": second,
    });
    println!("{line}");
}

// ---------------------------------------------------------------------------------------------
// syncs

fn syncs(args: &Args) {
    let url = args.url.as_str();
    let prefix = format!("bs{}", std::process::id());
    let messages = args.messages.unwrap_or(8);
    let a = agent();
    let token = register(&a, url, &format!("{prefix}u"));
    let topic = "A room of the many-syncs benchmark: a topic of about two hundred characters, so that \
                 each room's state weighs what a real room's does, with a name, a topic and a few \
                 messages in its timeline.";
    let started = Instant::now();
    run_concurrently(0..args.rooms, args.concurrency.min(4), |agent, r| {
        let (status, room) = call(
            agent,
            "POST",
            &format!("{url}/_matrix/client/v3/createRoom"),
            Some(&token),
            &json!({"preset": "private_chat", "name": format!("room {r} of {prefix}"), "topic": topic}),
        );
        assert_eq!(status, 200, "createRoom: {room}");
        let room = room["room_id"].as_str().expect("room_id").to_owned();
        for k in 0..messages {
            send(
                agent,
                url,
                &room,
                &token,
                &format!("{prefix}-{r}-{k}"),
                &format!("message {k} in room {r}: hello, world"),
            );
        }
    });
    let setup_s = started.elapsed().as_secs_f64();
    thread::sleep(Duration::from_secs(1));
    let (rss_idle, hwm_setup) = memory(args.pid);
    let reset = reset_peak(args.pid);
    let (_, hwm_before) = memory(args.pid);
    // One sync alone (checked to be complete).
    let (status, one_bytes, one_took, body) = initial_sync(&a, url, &token, None, true);
    assert_eq!(status, 200, "initial sync");
    let joined = body["rooms"]["join"].as_object().map_or(0, |rooms| rooms.len());
    assert_eq!(joined, args.rooms, "every room is in the initial sync");
    drop(body);
    let (_, hwm_one) = memory(args.pid);
    thread::sleep(Duration::from_secs(1));
    reset_peak(args.pid);
    let (rss_before_burst, hwm_before_burst) = memory(args.pid);
    // The burst.
    let started = Instant::now();
    let results: Vec<(u16, usize, Duration)> = run_concurrently(0..args.clients, args.clients, |agent, _| {
        let (status, bytes, took, _) = initial_sync(agent, url, &token, None, false);
        (status, bytes, took)
    });
    let burst_s = started.elapsed().as_secs_f64();
    let (rss_after, hwm_burst) = memory(args.pid);
    assert!(
        results.iter().all(|(status, _, _)| *status == 200),
        "every sync answered 200"
    );
    let mut times: Vec<Duration> = results.iter().map(|(_, _, t)| *t).collect();
    times.sort();
    eprintln!(
        "{} rooms x {messages} messages (setup {setup_s:.0} s); one initial sync: {one_bytes} bytes in {:.0} ms",
        args.rooms,
        one_took.as_secs_f64() * 1000.0
    );
    eprintln!(
        "RSS idle {rss_idle:.1} MB (peak during setup {hwm_setup:.1} MB); peak-reset {}",
        if reset { "yes" } else { "no (peaks are cumulative)" }
    );
    eprintln!(
        "peak RSS: before {hwm_before:.1} MB, one sync {hwm_one:.1} MB, {} at once {hwm_burst:.1} MB (from {hwm_before_burst:.1}, RSS after {rss_after:.1})",
        args.clients
    );
    for (i, (status, bytes, took)) in results.iter().enumerate() {
        eprintln!(
            "  sync {i}: {status} {bytes} bytes {:.0} ms",
            took.as_secs_f64() * 1000.0
        );
    }
    let line = json!({
        "scenario": "many-initial-syncs",
        "params": {"rooms": args.rooms, "messages_per_room": messages, "clients": args.clients},
        "metrics": {
            "isync_bytes": one_bytes,
            "isync_one_ms": round2(one_took.as_secs_f64() * 1000.0),
            "burst_sync_p50_ms": percentile(&times, 0.5),
            "burst_sync_max_ms": percentile(&times, 1.0),
            "burst_s": round2(burst_s),
            "rss_idle_mb": round2(rss_idle),
            "peak_rss_one_sync_mb": round2(hwm_one),
            "peak_rss_burst_mb": round2(hwm_burst),
            "peak_rss_one_sync_above_idle_mb": round2(hwm_one - hwm_before),
            "peak_rss_burst_above_idle_mb": round2(hwm_burst - rss_before_burst),
        },
        "info": {"setup_s": round2(setup_s), "peak_reset": reset, "hwm_before_mb": round2(hwm_before),
                 "hwm_before_burst_mb": round2(hwm_before_burst), "rss_after_burst_mb": round2(rss_after),
                 "responses": results.iter().map(|(s, b, t)| json!({"status": s, "bytes": b, "ms": round2(t.as_secs_f64() * 1000.0)})).collect::<Vec<_>>()},
    });
    println!("{line}");
}
