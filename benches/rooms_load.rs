//! Load tool for sending across many rooms, for any homeserver (Hearth or Synapse) at `--url`:
//! registers `--senders` users (m.login.dummy), has them create `--rooms` rooms (room `r`
//! belongs to sender `r % senders`), then every sender sends `--messages` messages back to back,
//! round-robin over its rooms, all senders at once. Prints events/s and send latency
//! percentiles as one JSON line. No timing is asserted.
//!
//! `cargo bench --bench rooms_load -- --url http://127.0.0.1:8008 [--rooms 100] [--senders 50]
//! [--messages 20]` (or the URL in `HS_URL`, as mxbench takes it). Only loopback URLs are
//! accepted.

use std::{
    sync::Arc,
    thread,
    time::{Duration, Instant},
};

use serde_json::json;
use support::{agent, call, register};

mod support;

struct Args {
    url: String,
    rooms: usize,
    senders: usize,
    messages: usize,
}

fn parse_args() -> Args {
    let mut args = Args {
        url: std::env::var("HS_URL").unwrap_or_default(),
        rooms: 100,
        senders: 50,
        messages: 20,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--url" => args.url = value(),
            "--rooms" => args.rooms = value().parse().expect("--rooms N"),
            "--senders" => args.senders = value().parse().expect("--senders N"),
            "--messages" => args.messages = value().parse().expect("--messages N"),
            _ => {} // `cargo bench` adds `--bench`
        }
    }
    support::require_loopback(&args.url);
    args
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index].as_secs_f64() * 1000.0
}

fn main() {
    let args = Arc::new(parse_args());
    let prefix = format!("rl{}", std::process::id());
    let setup = Instant::now();
    // Setup: users and rooms, a few at a time.
    let users: Vec<(String, Vec<String>)> = thread::scope(|scope| {
        let handles: Vec<_> = (0..args.senders)
            .map(|i| {
                let args = Arc::clone(&args);
                let prefix = prefix.clone();
                scope.spawn(move || {
                    let agent = agent();
                    let token = register(&agent, &args.url, &format!("{prefix}u{i}"));
                    let mut rooms = Vec::new();
                    for r in (i..args.rooms).step_by(args.senders) {
                        let (status, room) = call(
                            &agent,
                            "POST",
                            &format!("{}/_matrix/client/v3/createRoom", args.url),
                            Some(&token),
                            &json!({"preset": "private_chat", "name": format!("load {r}")}),
                        );
                        assert_eq!(status, 200, "createRoom: {room}");
                        rooms.push(room["room_id"].as_str().expect("room_id").to_owned());
                    }
                    (token, rooms)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("setup thread")).collect()
    });
    let setup_s = setup.elapsed().as_secs_f64();

    let started = Instant::now();
    let mut latencies: Vec<Duration> = thread::scope(|scope| {
        let handles: Vec<_> = users
            .iter()
            .enumerate()
            .map(|(i, (token, rooms))| {
                let args = Arc::clone(&args);
                let prefix = prefix.clone();
                scope.spawn(move || {
                    let agent = agent();
                    let mut took = Vec::new();
                    if rooms.is_empty() {
                        return took;
                    }
                    for k in 0..args.messages {
                        let room = &rooms[k % rooms.len()];
                        let url = format!(
                            "{}/_matrix/client/v3/rooms/{}/send/m.room.message/{prefix}-{i}-{k}",
                            args.url,
                            room.replace('!', "%21").replace(':', "%3A")
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
                    }
                    took
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("sender thread"))
            .collect()
    });
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort();
    let rooms_used: usize = users.iter().map(|(_, r)| r.len()).sum();
    let line = json!({
        "scenario": "send-rooms",
        "params": {"rooms": rooms_used, "senders": args.senders, "messages": args.messages},
        "metrics": {
            "events_per_s": (latencies.len() as f64 / elapsed * 10.0).round() / 10.0,
            "send_p50_ms": (percentile(&latencies, 0.5) * 100.0).round() / 100.0,
            "send_p99_ms": (percentile(&latencies, 0.99) * 100.0).round() / 100.0,
        },
        "info": {"events": latencies.len(), "setup_s": (setup_s * 10.0).round() / 10.0},
    });
    println!("{line}");
}
