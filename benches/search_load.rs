//! Search latency for any homeserver (Hearth or Synapse) at `--url`: `--senders` users join
//! one room and send `--messages` messages in all (deterministic text: a 600-word vocabulary
//! with a Zipf-like distribution, 20–200 characters, as `benches/search_index/`), then the
//! first user runs each query `--runs` times through `POST /search` (10 results, ranked and
//! newest first). Prints one JSON line: fill rate and search p50/p99 per kind of query. No
//! timing is asserted.
//!
//! `cargo bench --bench search_load -- --url http://127.0.0.1:8008 [--messages 100000]
//! [--senders 20] [--runs 50]` (or the URL in `HS_URL`). Only loopback URLs are accepted.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use support::{agent, call, register};

mod support;

struct Args {
    url: String,
    messages: usize,
    senders: usize,
    runs: usize,
}

fn parse_args() -> Args {
    let mut args = Args {
        url: std::env::var("HS_URL").unwrap_or_default(),
        messages: 100_000,
        senders: 20,
        runs: 50,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--url" => args.url = value(),
            "--messages" => args.messages = value().parse().expect("--messages N"),
            "--senders" => args.senders = value().parse().expect("--senders N"),
            "--runs" => args.runs = value().parse().expect("--runs N"),
            _ => {} // `cargo bench` adds `--bench`
        }
    }
    let host = args.url.trim_start_matches("http://");
    assert!(
        host.starts_with("127.") || host.starts_with("localhost") || host.starts_with("[::1]"),
        "--url must be a loopback address"
    );
    args
}

/// xorshift64*: deterministic text without a dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

fn vocabulary() -> Vec<String> {
    let real = [
        "the",
        "a",
        "to",
        "and",
        "is",
        "of",
        "in",
        "it",
        "you",
        "that",
        "for",
        "on",
        "we",
        "this",
        "with",
        "be",
        "have",
        "are",
        "not",
        "but",
        "meeting",
        "tomorrow",
        "release",
        "server",
        "deploy",
        "coffee",
        "café",
        "lunch",
        "bug",
        "fix",
        "review",
        "merge",
        "build",
        "test",
        "matrix",
        "room",
        "message",
        "search",
        "rocksdb",
        "index",
        "naïve",
        "résumé",
        "über",
        "weekend",
        "ticket",
        "password",
        "holiday",
        "kubernetes",
    ];
    let syll = [
        "ka", "lo", "mi", "ter", "zu", "pra", "vel", "no", "shi", "ran", "dor", "ex", "qui", "bo", "len",
    ];
    let mut words: Vec<String> = real.iter().map(|s| s.to_string()).collect();
    let mut rng = Rng(7);
    while words.len() < 600 {
        let n = 2 + (rng.next() % 3) as usize;
        let w: String = (0..n)
            .map(|_| syll[(rng.next() % syll.len() as u64) as usize])
            .collect();
        if !words.contains(&w) {
            words.push(w);
        }
    }
    words
}

/// Message `i` of the run (the same text for every server).
fn message(words: &[String], cdf: &[f64], i: usize) -> String {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (i as u64 + 1));
    let target = 20 + (rng.next() % 181) as usize;
    let mut body = String::new();
    while body.len() < target {
        let u = (rng.next() >> 11) as f64 / (1u64 << 53) as f64;
        let w = &words[cdf.partition_point(|c| *c < u).min(words.len() - 1)];
        if !body.is_empty() {
            body.push(' ');
        }
        body.push_str(w);
    }
    body
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    (sorted[index].as_secs_f64() * 1000.0 * 100.0).round() / 100.0
}

fn main() {
    let args = Arc::new(parse_args());
    let prefix = format!("sl{}", std::process::id());
    let words = Arc::new(vocabulary());
    let cdf = {
        let mut acc = 0.0;
        let mut cdf: Vec<f64> = (1..=words.len())
            .map(|r| {
                acc += 1.0 / (r as f64).powf(1.07);
                acc
            })
            .collect();
        cdf.iter_mut().for_each(|c| *c /= acc);
        Arc::new(cdf)
    };
    let agent0 = agent();
    let tokens: Vec<String> = (0..args.senders)
        .map(|i| register(&agent0, &args.url, &format!("{prefix}u{i}")))
        .collect();
    let (status, room) = call(
        &agent0,
        "POST",
        &format!("{}/_matrix/client/v3/createRoom", args.url),
        Some(&tokens[0]),
        &json!({"preset": "public_chat", "name": "search bench"}),
    );
    assert_eq!(status, 200, "createRoom: {room}");
    let room = room["room_id"].as_str().expect("room_id").to_owned();
    let room_path = room.replace('!', "%21").replace(':', "%3A");
    for token in &tokens[1..] {
        let (status, body) = call(
            &agent0,
            "POST",
            &format!("{}/_matrix/client/v3/rooms/{room_path}/join", args.url),
            Some(token),
            &json!({}),
        );
        assert_eq!(status, 200, "join: {body}");
    }

    // Fill: every sender takes the next message number until all are sent.
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    thread::scope(|scope| {
        for (s, token) in tokens.iter().enumerate() {
            let (args, next, words, cdf, room_path, prefix) = (
                Arc::clone(&args),
                Arc::clone(&next),
                Arc::clone(&words),
                Arc::clone(&cdf),
                room_path.clone(),
                prefix.clone(),
            );
            scope.spawn(move || {
                let agent = agent();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= args.messages {
                        break;
                    }
                    let url = format!(
                        "{}/_matrix/client/v3/rooms/{room_path}/send/m.room.message/{prefix}-{s}-{i}",
                        args.url
                    );
                    let body = json!({"msgtype": "m.text", "body": message(&words, &cdf, i)});
                    let (status, answer) = call(&agent, "PUT", &url, Some(token), &body);
                    assert_eq!(status, 200, "send: {answer}");
                }
            });
        }
    });
    let fill_s = started.elapsed().as_secs_f64();

    // Queries: one common word, one rare word, two and three words, and a prefix.
    let queries = [
        ("single_common", "meeting"),
        ("single_rare", "kubernetes"),
        ("two_words", "deploy server"),
        ("three_words", "the release tomorrow"),
    ];
    let mut metrics = serde_json::Map::new();
    metrics.insert(
        "fill_events_per_s".into(),
        json!((args.messages as f64 / fill_s * 10.0).round() / 10.0),
    );
    let mut info = serde_json::Map::new();
    for order in ["rank", "recent"] {
        for (name, term) in queries {
            let mut took = Vec::new();
            let mut count = Value::Null;
            for _ in 0..args.runs {
                let body = json!({"search_categories": {"room_events": {
                    "search_term": term, "order_by": order, "filter": {"limit": 10},
                }}});
                let t = Instant::now();
                let (status, answer) = call(
                    &agent0,
                    "POST",
                    &format!("{}/_matrix/client/v3/search", args.url),
                    Some(&tokens[0]),
                    &body,
                );
                took.push(t.elapsed());
                assert_eq!(status, 200, "search: {answer}");
                count = answer["search_categories"]["room_events"]["count"].clone();
            }
            took.sort();
            metrics.insert(format!("search_{order}_{name}_p50_ms"), json!(percentile(&took, 0.5)));
            metrics.insert(format!("search_{order}_{name}_p99_ms"), json!(percentile(&took, 0.99)));
            info.insert(format!("count_{order}_{name}"), count);
        }
    }
    info.insert("fill_s".into(), json!((fill_s * 10.0).round() / 10.0));
    let line = json!({
        "scenario": "search",
        "params": {"messages": args.messages, "senders": args.senders, "runs": args.runs},
        "metrics": metrics,
        "info": info,
    });
    println!("{line}");
}
