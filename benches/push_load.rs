//! Load tool for sending with push notifications, for any homeserver (Hearth or Synapse) at
//! `--url`: starts a push gateway on loopback (a thread that answers every
//! `POST /_matrix/push/v1/notify` with `{"rejected": []}` and records which event it was for),
//! registers `--members` users who all join one room, gives `--pushers` of them (never a
//! sender) an HTTP pusher at that gateway, then `--senders` members send `--messages` messages
//! each, back to back, all at once. Prints send events/s and latency percentiles, the time
//! until the gateway had every push, and lost/duplicate checks, as one JSON line. No timing is
//! asserted.
//!
//! `cargo bench --bench push_load -- --url http://127.0.0.1:8008 [--members 20] [--pushers 3]
//! [--senders 5] [--messages 40]` (or the URL in `HS_URL`). Only loopback URLs are accepted;
//! the server must allow pushes to 127.0.0.1 (Hearth: `push.gateway_ip_allow`, Synapse:
//! `ip_range_whitelist`).

use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Read, Write},
    net::TcpListener,
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use support::{agent, call, register};

mod support;

struct Args {
    url: String,
    members: usize,
    pushers: usize,
    senders: usize,
    messages: usize,
}

fn parse_args() -> Args {
    let mut args = Args {
        url: std::env::var("HS_URL").unwrap_or_default(),
        members: 20,
        pushers: 3,
        senders: 5,
        messages: 40,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--url" => args.url = value(),
            "--members" => args.members = value().parse().expect("--members N"),
            "--pushers" => args.pushers = value().parse().expect("--pushers N"),
            "--senders" => args.senders = value().parse().expect("--senders N"),
            "--messages" => args.messages = value().parse().expect("--messages N"),
            _ => {} // `cargo bench` adds `--bench`
        }
    }
    let host = args.url.trim_start_matches("http://");
    assert!(
        host.starts_with("127.") || host.starts_with("localhost") || host.starts_with("[::1]"),
        "--url must be a loopback address"
    );
    assert!(
        args.senders + args.pushers <= args.members,
        "senders and pushers are different members"
    );
    args
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index].as_secs_f64() * 1000.0
}

/// (event id, pushkey) of every push received.
type Received = Arc<Mutex<Vec<(String, String)>>>;

/// A push gateway on a loopback port; its port and what it received.
fn gateway() -> (u16, Received) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("gateway port");
    let port = listener.local_addr().expect("gateway address").port();
    let received: Received = Arc::default();
    let seen = Arc::clone(&received);
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let seen = Arc::clone(&seen);
            // One thread per connection: gateways answer in parallel.
            thread::spawn(move || {
                let mut stream = stream;
                let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
                let mut reader = BufReader::new(stream.try_clone().expect("clone"));
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let mut length = 0;
                    let mut close = false;
                    loop {
                        let mut header = String::new();
                        if reader.read_line(&mut header).unwrap_or(0) == 0 || header.trim().is_empty() {
                            break;
                        }
                        let lower = header.to_ascii_lowercase();
                        if let Some(v) = lower.strip_prefix("content-length:") {
                            length = v.trim().parse().unwrap_or(0);
                        }
                        close |= lower.starts_with("connection:") && lower.contains("close");
                    }
                    let mut body = vec![0u8; length];
                    if reader.read_exact(&mut body).is_err() {
                        return;
                    }
                    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    let n = &body["notification"];
                    if let (Some(event), Some(key)) = (n["event_id"].as_str(), n["devices"][0]["pushkey"].as_str()) {
                        seen.lock().unwrap().push((event.to_owned(), key.to_owned()));
                    }
                    let answer = r#"{"rejected":[]}"#;
                    let _ = write!(
                        stream,
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{answer}",
                        answer.len()
                    );
                    if close {
                        return;
                    }
                }
            });
        }
    });
    (port, received)
}

fn main() {
    let args = Arc::new(parse_args());
    let (port, received) = gateway();
    let prefix = format!("pl{}", std::process::id());
    let setup = Instant::now();
    let tokens: Vec<String> = thread::scope(|scope| {
        let handles: Vec<_> = (0..args.members)
            .map(|i| {
                let args = Arc::clone(&args);
                let prefix = prefix.clone();
                scope.spawn(move || register(&agent(), &args.url, &format!("{prefix}u{i}")))
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("register")).collect()
    });
    let a = agent();
    let (status, room) = call(
        &a,
        "POST",
        &format!("{}/_matrix/client/v3/createRoom", args.url),
        Some(&tokens[0]),
        &json!({"preset": "public_chat", "name": "push load"}),
    );
    assert_eq!(status, 200, "createRoom: {room}");
    let room = room["room_id"].as_str().expect("room_id").to_owned();
    let room_path = room.replace('!', "%21").replace(':', "%3A");
    for token in &tokens[1..] {
        let (status, body) = call(
            &a,
            "POST",
            &format!("{}/_matrix/client/v3/join/{room_path}", args.url),
            Some(token),
            &json!({}),
        );
        assert_eq!(status, 200, "join: {body}");
    }
    // The last members get the pushers; the first ones send.
    let gateway_url = format!("http://127.0.0.1:{port}/_matrix/push/v1/notify");
    for (k, token) in tokens.iter().rev().take(args.pushers).enumerate() {
        let (status, body) = call(
            &a,
            "POST",
            &format!("{}/_matrix/client/v3/pushers/set", args.url),
            Some(token),
            &json!({
                "kind": "http", "app_id": "bench.push", "app_display_name": "Bench",
                "device_display_name": "Bench", "pushkey": format!("key{k}"), "lang": "en",
                "data": {"url": gateway_url, "format": "event_id_only"},
            }),
        );
        assert_eq!(status, 200, "pushers/set: {body}");
    }
    let setup_s = setup.elapsed().as_secs_f64();

    let started = Instant::now();
    let results: Vec<(Vec<Duration>, Vec<String>)> = thread::scope(|scope| {
        let handles: Vec<_> = tokens
            .iter()
            .take(args.senders)
            .enumerate()
            .map(|(i, token)| {
                let args = Arc::clone(&args);
                let prefix = prefix.clone();
                let room_path = room_path.clone();
                scope.spawn(move || {
                    let agent = agent();
                    let mut took = Vec::new();
                    let mut ids = Vec::new();
                    for k in 0..args.messages {
                        let url = format!(
                            "{}/_matrix/client/v3/rooms/{room_path}/send/m.room.message/{prefix}-{i}-{k}",
                            args.url
                        );
                        let t = Instant::now();
                        let (status, body) = call(
                            &agent,
                            "PUT",
                            &url,
                            Some(token),
                            &json!({"msgtype": "m.text", "body": format!("message {k} from {i}")}),
                        );
                        assert_eq!(status, 200, "send: {body}");
                        took.push(t.elapsed());
                        ids.push(body["event_id"].as_str().unwrap_or_default().to_owned());
                    }
                    (took, ids)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("sender")).collect()
    });
    let sent_s = started.elapsed().as_secs_f64();
    let mut latencies: Vec<Duration> = results.iter().flat_map(|(t, _)| t.clone()).collect();
    latencies.sort();
    let events: Vec<String> = results.into_iter().flat_map(|(_, ids)| ids).collect();
    let expected = events.len() * args.pushers;
    // Wait (at most 120 s) for every push.
    let deadline = Instant::now() + Duration::from_secs(120);
    while received.lock().unwrap().len() < expected && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    let all_pushed_s = started.elapsed().as_secs_f64();
    thread::sleep(Duration::from_millis(500));
    let got = received.lock().unwrap().clone();
    let mut counts: HashMap<(String, String), usize> = HashMap::new();
    for push in got {
        *counts.entry(push).or_default() += 1;
    }
    let keys: Vec<String> = (0..args.pushers).map(|k| format!("key{k}")).collect();
    let lost = events
        .iter()
        .flat_map(|e| keys.iter().map(move |k| (e.clone(), k.clone())))
        .filter(|p| !counts.contains_key(p))
        .count();
    let duplicates: usize = counts.values().map(|n| n - 1).sum();
    let line = json!({
        "scenario": "send-with-pushers",
        "params": {"members": args.members, "pushers": args.pushers, "senders": args.senders, "messages": args.messages},
        "metrics": {
            "events_per_s": (latencies.len() as f64 / sent_s * 10.0).round() / 10.0,
            "send_p50_ms": (percentile(&latencies, 0.5) * 100.0).round() / 100.0,
            "send_p99_ms": (percentile(&latencies, 0.99) * 100.0).round() / 100.0,
            "pushes_per_s": (expected.saturating_sub(lost) as f64 / all_pushed_s * 10.0).round() / 10.0,
            "all_pushed_ms": (all_pushed_s * 1000.0).round(),
        },
        "checks": {"lost": lost, "duplicates": duplicates},
        "info": {"events": latencies.len(), "pushes_expected": expected, "setup_s": (setup_s * 10.0).round() / 10.0},
    });
    println!("{line}");
}
