//! Load tool for the team-messaging features, for any homeserver (Hearth or Synapse) at `--url`.
//! One scenario per run, each printing one JSON line (`metrics`) as mxbench does. No timing is
//! asserted.
//!
//! - `push`: `--members` users (20) in one room; `--pushers` (3) of them register an HTTP pusher
//!   whose gateway is a small HTTP server inside this tool on loopback; the other members send
//!   `--messages` (30) messages each, all at once, once before the pushers exist, once with them
//!   and once after they are deleted. Reports send throughput with and without pushers (the cost
//!   of push on the send path), the notifications the gateway received (one per message per
//!   pusher is expected) and the delay from a send's answer to its notification at the gateway.
//! - `search`: one user fills `--rooms` (10) rooms with `--messages` (100,000) messages from a
//!   fixed vocabulary (Zipf-like word frequencies, same text on every server), then runs
//!   `/search` for rare, medium and common words and word pairs, ranked and by recency →
//!   p50/p99 latency.
//! - `directory`: registers `--users` (10,000) users, then one of them runs
//!   `/user_directory/search` for name prefixes → p50/p99. Both servers must search all users
//!   (Synapse `user_directory.search_all_users`, Hearth `user_directory.search_all_users`):
//!   `vs_synapse.sh team` configures that.
//!
//! - `sliding`: simplified sliding sync (MSC4186, the unstable path Element X uses). One user in
//!   `--rooms` (200) rooms; the first response of a fresh connection for a 20-room list window
//!   sorted by recency (Element X's room list: a few state events and the latest event per
//!   room) → p50 and bytes. Then `--receivers` (20) users long-poll their own connection while
//!   one member sends `--messages` (30) messages 200 ms apart into a room they share → delivery
//!   latency from the send's answer to the event in each receiver's response, and lost and
//!   duplicated deliveries (each event must reach each receiver exactly once).
//!
//! `cargo bench --bench team_load -- push|search|directory|sliding --url http://127.0.0.1:8008 [flags]`
//! (or the URL in `HS_URL`). Only loopback URLs are accepted; the push gateway listens on
//! 127.0.0.1.

use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use support::{agent, call, enc, percentile, register, round2};

mod support;

struct Args {
    scenario: String,
    url: String,
    members: usize,
    pushers: usize,
    messages: usize,
    rooms: usize,
    users: usize,
    queries: usize,
    receivers: usize,
}

fn parse_args() -> Args {
    let mut args = Args {
        scenario: String::new(),
        url: std::env::var("HS_URL").unwrap_or_default(),
        members: 20,
        pushers: 3,
        messages: 0,
        rooms: 10,
        users: 10_000,
        queries: 200,
        receivers: 20,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--url" => args.url = value(),
            "--members" => args.members = value().parse().expect("--members N"),
            "--pushers" => args.pushers = value().parse().expect("--pushers N"),
            "--messages" => args.messages = value().parse().expect("--messages N"),
            "--rooms" => args.rooms = value().parse().expect("--rooms N"),
            "--users" => args.users = value().parse().expect("--users N"),
            "--queries" => args.queries = value().parse().expect("--queries N"),
            "--receivers" => args.receivers = value().parse().expect("--receivers N"),
            "push" | "search" | "directory" | "sliding" => args.scenario = flag,
            _ => {} // `cargo bench` adds `--bench`
        }
    }
    support::require_loopback(&args.url);
    args
}

fn main() {
    let args = parse_args();
    match args.scenario.as_str() {
        "push" => push(&args),
        "search" => search(&args),
        "directory" => directory(&args),
        "sliding" => sliding(&args),
        _ => panic!("usage: team_load push|search|directory|sliding --url URL"),
    }
}

// ---------------------------------------------------------------------------------------------
// push

/// What the gateway saw: arrival time per notified event id, and the number of notifications.
#[derive(Default)]
struct GatewayLog {
    arrivals: Mutex<HashMap<String, Vec<Instant>>>,
    notifications: AtomicUsize,
}

/// A push gateway on 127.0.0.1: answers every `POST /_matrix/push/v1/notify` with
/// `{"rejected": []}` and records it. Runs until the process ends.
fn start_gateway(log: Arc<GatewayLog>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("gateway bind");
    let port = listener.local_addr().unwrap().port();
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let log = Arc::clone(&log);
            thread::spawn(move || serve_gateway_connection(stream, &log));
        }
    });
    port
}

fn serve_gateway_connection(stream: TcpStream, log: &GatewayLog) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(60)));
    let mut writer = stream.try_clone().expect("clone stream");
    let mut reader = BufReader::new(stream);
    loop {
        let mut length = 0usize;
        let mut close = false;
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            let lower = header.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                length = v.trim().parse().unwrap_or(0);
            }
            if lower.starts_with("connection:") && lower.contains("close") {
                close = true;
            }
        }
        let mut body = vec![0u8; length.min(1 << 20)];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let now = Instant::now();
        if let Ok(notification) = serde_json::from_slice::<Value>(&body)
            && let Some(event_id) = notification["notification"]["event_id"].as_str()
        {
            let devices = notification["notification"]["devices"].as_array().map_or(1, Vec::len);
            log.notifications.fetch_add(devices, Ordering::SeqCst);
            let mut arrivals = log.arrivals.lock().unwrap();
            arrivals
                .entry(event_id.to_owned())
                .or_default()
                .extend((0..devices).map(|_| now));
        }
        let answer = "{\"rejected\":[]}";
        let reply = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{}\r\n{answer}",
            answer.len(),
            if close { "Connection: close\r\n" } else { "" }
        );
        if writer.write_all(reply.as_bytes()).is_err() || close {
            return;
        }
    }
}

/// Every sender sends `messages` messages into `room`, all senders at once; (events/s, sends
/// with the time each was answered).
fn send_round(
    url: &str,
    room: &str,
    senders: &[String],
    messages: usize,
    tag: &str,
) -> (f64, Vec<(String, Instant, Duration)>) {
    let started = Instant::now();
    let sent: Vec<(String, Instant, Duration)> = thread::scope(|scope| {
        let handles: Vec<_> = senders
            .iter()
            .enumerate()
            .map(|(i, token)| {
                scope.spawn(move || {
                    let agent = agent();
                    let mut sent = Vec::new();
                    for k in 0..messages {
                        let t = Instant::now();
                        let (status, body) = call(
                            &agent,
                            "PUT",
                            &format!(
                                "{url}/_matrix/client/v3/rooms/{}/send/m.room.message/{tag}-{i}-{k}",
                                enc(room)
                            ),
                            Some(token),
                            &json!({"msgtype": "m.text", "body": format!("{tag} message {k} from {i}")}),
                        );
                        assert_eq!(status, 200, "send: {body}");
                        let event_id = body["event_id"].as_str().expect("event_id").to_owned();
                        sent.push((event_id, Instant::now(), t.elapsed()));
                    }
                    sent
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().expect("sender")).collect()
    });
    let rate = sent.len() as f64 / started.elapsed().as_secs_f64();
    (rate, sent)
}

fn push(args: &Args) {
    let url = args.url.as_str();
    let messages = if args.messages == 0 { 30 } else { args.messages };
    let prefix = format!("tp{}", std::process::id());
    let log = Arc::new(GatewayLog::default());
    let gateway_port = start_gateway(Arc::clone(&log));
    let a = agent();
    let tokens: Vec<String> = thread::scope(|scope| {
        let handles: Vec<_> = (0..args.members)
            .map(|i| {
                let prefix = prefix.clone();
                scope.spawn(move || register(&agent(), url, &format!("{prefix}u{i}")))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let (status, room) = call(
        &a,
        "POST",
        &format!("{url}/_matrix/client/v3/createRoom"),
        Some(&tokens[0]),
        &json!({"preset": "public_chat", "name": "push bench"}),
    );
    assert_eq!(status, 200, "createRoom: {room}");
    let room = room["room_id"].as_str().unwrap().to_owned();
    for token in &tokens[1..] {
        let (status, body) = call(
            &a,
            "POST",
            &format!("{url}/_matrix/client/v3/join/{}", enc(&room)),
            Some(token),
            &json!({}),
        );
        assert_eq!(status, 200, "join: {body}");
    }
    // The receivers are the first `pushers` members; the others send.
    let receivers = &tokens[..args.pushers];
    let senders = &tokens[args.pushers..];
    let set_pushers = |kind: Value| {
        for (i, token) in receivers.iter().enumerate() {
            let (status, body) = call(
                &a,
                "POST",
                &format!("{url}/_matrix/client/v3/pushers/set"),
                Some(token),
                &json!({
                    "kind": kind, "app_id": "org.example.bench", "pushkey": format!("{prefix}-key-{i}"),
                    "app_display_name": "bench", "device_display_name": "bench", "lang": "en",
                    "data": {"url": format!("http://127.0.0.1:{gateway_port}/_matrix/push/v1/notify"),
                             "format": "event_id_only"}
                }),
            );
            assert_eq!(status, 200, "pushers/set: {body}");
        }
    };
    let (warmup_rate, _) = send_round(url, &room, senders, 3, &format!("{prefix}w"));
    let (before_rate, _) = send_round(url, &room, senders, messages, &format!("{prefix}a"));
    set_pushers(json!("http"));
    let (push_rate, pushed) = send_round(url, &room, senders, messages, &format!("{prefix}b"));
    let expected = pushed.len() * receivers.len();
    let waited = Instant::now();
    while log.notifications.load(Ordering::SeqCst) < expected && waited.elapsed() < Duration::from_secs(120) {
        thread::sleep(Duration::from_millis(20));
    }
    let received = log.notifications.load(Ordering::SeqCst);
    let mut delays: Vec<Duration> = {
        let arrivals = log.arrivals.lock().unwrap();
        pushed
            .iter()
            .flat_map(|(event_id, answered, _)| {
                arrivals
                    .get(event_id)
                    .into_iter()
                    .flatten()
                    .map(move |at| at.saturating_duration_since(*answered))
            })
            .collect()
    };
    delays.sort();
    set_pushers(Value::Null);
    thread::sleep(Duration::from_secs(1));
    let (after_rate, _) = send_round(url, &room, senders, messages, &format!("{prefix}c"));
    let without = (before_rate + after_rate) / 2.0;
    let line = json!({
        "scenario": "push",
        "params": {"members": args.members, "pushers": args.pushers, "senders": senders.len(), "messages": messages},
        "metrics": {
            "events_per_s_without_pushers": round2(without),
            "events_per_s_with_pushers": round2(push_rate),
            "push_cost_pct": round2((1.0 - push_rate / without) * 100.0),
            "push_delivery_p50_ms": percentile(&delays, 0.5),
            "push_delivery_p99_ms": percentile(&delays, 0.99),
            "pushes_expected": expected,
            "pushes_received": received,
        },
        "info": {"warmup_events_per_s": round2(warmup_rate), "before": round2(before_rate), "after": round2(after_rate)},
    });
    println!("{line}");
}

// ---------------------------------------------------------------------------------------------
// search

/// A fixed vocabulary of made-up words and a deterministic Zipf-like stream of them.
struct Words {
    vocabulary: Vec<String>,
    cumulative: Vec<f64>,
    state: u64,
}

impl Words {
    fn new() -> Self {
        const SYLLABLES: [&str; 20] = [
            "ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ze", "pa", "do", "fi", "gu", "ha", "je", "bo", "ce", "wu",
            "xi", "yo",
        ];
        let vocabulary: Vec<String> = (0..2000usize)
            .map(|i| {
                let mut word = String::new();
                let mut n = i;
                for _ in 0..3 {
                    word.push_str(SYLLABLES[n % SYLLABLES.len()]);
                    n /= SYLLABLES.len();
                }
                word.push_str(SYLLABLES[(i * 7 + 3) % SYLLABLES.len()]);
                word
            })
            .collect();
        let mut total = 0.0;
        let cumulative = (1..=vocabulary.len())
            .map(|rank| {
                total += 1.0 / rank as f64;
                total
            })
            .collect();
        Words {
            vocabulary,
            cumulative,
            state: 0x9E37_79B9_7F4A_7C15,
        }
    }

    fn next_f64(&mut self) -> f64 {
        self.state = self
            .state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.state >> 11) as f64 / (1u64 << 53) as f64
    }

    fn word(&mut self) -> &str {
        let target = self.next_f64() * self.cumulative.last().unwrap();
        let index = self.cumulative.partition_point(|c| *c < target);
        &self.vocabulary[index.min(self.vocabulary.len() - 1)]
    }

    fn sentence(&mut self) -> String {
        let count = 3 + (self.next_f64() * 25.0) as usize;
        (0..count).map(|_| self.word().to_owned()).collect::<Vec<_>>().join(" ")
    }
}

fn search(args: &Args) {
    let url = args.url.as_str();
    let total = if args.messages == 0 { 100_000 } else { args.messages };
    let prefix = format!("ts{}", std::process::id());
    let a = agent();
    let token = register(&a, url, &format!("{prefix}searcher"));
    let rooms: Vec<String> = (0..args.rooms)
        .map(|r| {
            let (status, room) = call(
                &a,
                "POST",
                &format!("{url}/_matrix/client/v3/createRoom"),
                Some(&token),
                &json!({"preset": "private_chat", "name": format!("search {r}")}),
            );
            assert_eq!(status, 200, "createRoom: {room}");
            room["room_id"].as_str().unwrap().to_owned()
        })
        .collect();
    let mut words = Words::new();
    let bodies: Vec<String> = (0..total).map(|_| words.sentence()).collect();
    let filled = Instant::now();
    const THREADS: usize = 20;
    thread::scope(|scope| {
        for t in 0..THREADS {
            let (bodies, rooms, token, prefix) = (&bodies, &rooms, &token, &prefix);
            scope.spawn(move || {
                let agent = agent();
                for k in (t..bodies.len()).step_by(THREADS) {
                    let room = &rooms[k % rooms.len()];
                    let (status, body) = call(
                        &agent,
                        "PUT",
                        &format!(
                            "{url}/_matrix/client/v3/rooms/{}/send/m.room.message/{prefix}-{k}",
                            enc(room)
                        ),
                        Some(token),
                        &json!({"msgtype": "m.text", "body": bodies[k]}),
                    );
                    assert_eq!(status, 200, "send: {body}");
                }
            });
        }
    });
    let fill_s = filled.elapsed().as_secs_f64();
    let vocabulary = &words.vocabulary;
    let kinds: [(&str, String); 5] = [
        ("rare", vocabulary[1500].clone()),
        ("medium", vocabulary[120].clone()),
        ("common", vocabulary[3].clone()),
        ("pair", format!("{} {}", vocabulary[40], vocabulary[200])),
        ("recent_common", vocabulary[3].clone()),
    ];
    let mut metrics = serde_json::Map::new();
    let mut all = Vec::new();
    let mut results = serde_json::Map::new();
    for (kind, term) in &kinds {
        let order = if *kind == "recent_common" { "recent" } else { "rank" };
        let mut took = Vec::new();
        let mut count = Value::Null;
        for _ in 0..(args.queries / kinds.len()).max(1) {
            let t = Instant::now();
            let (status, body) = call(
                &a,
                "POST",
                &format!("{url}/_matrix/client/v3/search"),
                Some(&token),
                &json!({"search_categories": {"room_events": {
                    "search_term": term, "order_by": order, "filter": {"limit": 10}}}}),
            );
            took.push(t.elapsed());
            assert_eq!(status, 200, "search: {body}");
            count = body["search_categories"]["room_events"]["count"].clone();
        }
        took.sort();
        metrics.insert(format!("search_{kind}_p50_ms"), json!(percentile(&took, 0.5)));
        results.insert(format!("{kind}_count"), count);
        all.extend(took);
    }
    all.sort();
    metrics.insert("search_p50_ms".into(), json!(percentile(&all, 0.5)));
    metrics.insert("search_p99_ms".into(), json!(percentile(&all, 0.99)));
    let line = json!({
        "scenario": "search",
        "params": {"messages": total, "rooms": args.rooms, "queries": all.len()},
        "metrics": metrics,
        "info": {"fill_s": round2(fill_s), "fill_events_per_s": round2(total as f64 / fill_s), "counts": results},
    });
    println!("{line}");
}

// ---------------------------------------------------------------------------------------------
// directory

const GIVEN: [&str; 24] = [
    "alex", "maria", "john", "sofia", "liam", "emma", "noah", "olivia", "lucas", "mia", "jonas", "lea", "finn", "anna",
    "elias", "lina", "paul", "clara", "ben", "ida", "max", "nora", "leon", "eva",
];
const FAMILY: [&str; 20] = [
    "smith", "muller", "garcia", "rossi", "novak", "kowalski", "jensen", "dubois", "silva", "nagy", "berg", "popescu",
    "horvat", "ivanov", "larsen", "moreau", "costa", "fischer", "weber", "meyer",
];

fn directory(args: &Args) {
    let url = args.url.as_str();
    let prefix = format!("td{}", std::process::id() % 1000);
    let registered = Instant::now();
    const THREADS: usize = 8;
    let tokens: Vec<String> = thread::scope(|scope| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let prefix = prefix.clone();
                scope.spawn(move || {
                    let agent = agent();
                    (t..args.users)
                        .step_by(THREADS)
                        .map(|i| {
                            let name = format!(
                                "{}.{}.{prefix}{i}",
                                GIVEN[i % GIVEN.len()],
                                FAMILY[(i / GIVEN.len()) % FAMILY.len()]
                            );
                            register(&agent, url, &name)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    let register_s = registered.elapsed().as_secs_f64();
    let a = agent();
    let searcher = &tokens[0];
    let terms = ["jo", "smi", "maria", "alex.ber", "kowal", "nora mo", "zz-nobody", "e"];
    let mut took = Vec::new();
    let mut hits = serde_json::Map::new();
    for round in 0..args.queries.max(terms.len()) / terms.len() {
        for term in terms {
            let t = Instant::now();
            let (status, body) = call(
                &a,
                "POST",
                &format!("{url}/_matrix/client/v3/user_directory/search"),
                Some(searcher),
                &json!({"search_term": term, "limit": 10}),
            );
            took.push(t.elapsed());
            assert_eq!(status, 200, "user_directory/search: {body}");
            if round == 0 {
                hits.insert(term.into(), json!(body["results"].as_array().map_or(0, Vec::len)));
            }
        }
    }
    took.sort();
    let line = json!({
        "scenario": "directory",
        "params": {"users": args.users, "queries": took.len()},
        "metrics": {
            "directory_search_p50_ms": percentile(&took, 0.5),
            "directory_search_p99_ms": percentile(&took, 0.99),
        },
        "info": {"register_s": round2(register_s), "hits_per_term": hits},
    });
    println!("{line}");
}

// ---------------------------------------------------------------------------------------------
// sliding

const SLIDING_PATH: &str = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync";

/// Element X's room-list request: a window of the rooms by recency, a few state events and
/// the latest event of each.
fn room_list_body(conn_id: &str, window: u64) -> Value {
    json!({
        "conn_id": conn_id,
        "lists": {"all_rooms": {
            "ranges": [[0, window - 1]],
            "required_state": [["m.room.name", ""], ["m.room.avatar", ""], ["m.room.encryption", ""],
                               ["m.room.member", "$LAZY"], ["m.room.member", "$ME"], ["m.room.create", ""]],
            "timeline_limit": 1
        }},
        "extensions": {}
    })
}

fn sliding_call(
    agent: &ureq::Agent,
    url: &str,
    token: &str,
    pos: Option<&str>,
    timeout_ms: u64,
    body: &Value,
) -> (u16, Value, usize) {
    let mut target = format!("{url}{SLIDING_PATH}?timeout={timeout_ms}");
    if let Some(pos) = pos {
        target.push_str(&format!("&pos={pos}"));
    }
    let request = http::Request::builder()
        .method("POST")
        .uri(target)
        .header("Content-Type", "application/json")
        .header("Authorization", format!("Bearer {token}"))
        .body(body.to_string())
        .expect("request");
    let mut response = agent.run(request).expect("sliding sync request");
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().unwrap_or_default();
    let bytes = text.len();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null), bytes)
}

fn sliding(args: &Args) {
    let url = args.url.as_str();
    let messages = if args.messages == 0 { 30 } else { args.messages };
    let rooms = args.rooms;
    let prefix = format!("tss{}", std::process::id());
    let a = agent();

    // First response for a user in `rooms` rooms.
    let owner = register(&a, url, &format!("{prefix}owner"));
    let setup = Instant::now();
    thread::scope(|scope| {
        for t in 0..4usize {
            let (owner, prefix) = (&owner, &prefix);
            scope.spawn(move || {
                let agent = agent();
                for r in (t..rooms).step_by(4) {
                    let (status, room) = call(
                        &agent,
                        "POST",
                        &format!("{url}/_matrix/client/v3/createRoom"),
                        Some(owner),
                        &json!({"preset": "private_chat", "name": format!("room {r}")}),
                    );
                    assert_eq!(status, 200, "createRoom: {room}");
                    let room = room["room_id"].as_str().unwrap();
                    let (status, body) = call(
                        &agent,
                        "PUT",
                        &format!(
                            "{url}/_matrix/client/v3/rooms/{}/send/m.room.message/{prefix}-{r}",
                            enc(room)
                        ),
                        Some(owner),
                        &json!({"msgtype": "m.text", "body": format!("hello room {r}")}),
                    );
                    assert_eq!(status, 200, "send: {body}");
                }
            });
        }
    });
    let setup_s = setup.elapsed().as_secs_f64();
    let mut first = Vec::new();
    let mut first_bytes = 0;
    let mut listed = 0;
    for run in 0..7 {
        let t = Instant::now();
        let (status, body, bytes) = sliding_call(
            &a,
            url,
            &owner,
            None,
            0,
            &room_list_body(&format!("{prefix}-first-{run}"), 20),
        );
        let took = t.elapsed();
        assert_eq!(status, 200, "sliding sync: {body}");
        if run > 0 {
            first.push(took); // the first run warms caches
        }
        first_bytes = bytes;
        listed = body["rooms"].as_object().map_or(0, |m| m.len());
    }
    first.sort();

    // Delivery to long-polling connections.
    let receivers = args.receivers;
    let tokens: Vec<String> = thread::scope(|scope| {
        let handles: Vec<_> = (0..=receivers)
            .map(|i| {
                let prefix = prefix.clone();
                scope.spawn(move || register(&agent(), url, &format!("{prefix}r{i}")))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let sender = &tokens[receivers];
    let (status, room) = call(
        &a,
        "POST",
        &format!("{url}/_matrix/client/v3/createRoom"),
        Some(sender),
        &json!({"preset": "public_chat", "name": "fanout"}),
    );
    assert_eq!(status, 200, "createRoom: {room}");
    let room = room["room_id"].as_str().unwrap().to_owned();
    for token in &tokens[..receivers] {
        let (status, body) = call(
            &a,
            "POST",
            &format!("{url}/_matrix/client/v3/join/{}", enc(&room)),
            Some(token),
            &json!({}),
        );
        assert_eq!(status, 200, "join: {body}");
    }
    let done_sending: Mutex<Option<Instant>> = Mutex::new(None);
    let ready = AtomicUsize::new(0);
    let tag = format!("{prefix}-fan");
    // Each receiver notes when it first saw each event; matched with the sends afterwards (a
    // delivery before the send's answer counts as 0 ms after it, as mxbench counts it).
    let (seen_by_receivers, sent) = thread::scope(|scope| {
        let handles: Vec<_> = tokens[..receivers]
            .iter()
            .enumerate()
            .map(|(i, token)| {
                let (done_sending, ready, tag) = (&done_sending, &ready, &tag);
                scope.spawn(move || {
                    let agent = agent();
                    let body = room_list_body(&format!("{tag}-{i}"), 20);
                    let (status, first, _) = sliding_call(&agent, url, token, None, 0, &body);
                    assert_eq!(status, 200, "sliding sync: {first}");
                    let mut pos = first["pos"].as_str().expect("pos").to_owned();
                    ready.fetch_add(1, Ordering::SeqCst);
                    let mut seen: HashMap<String, (Instant, usize)> = HashMap::new();
                    let hard_stop = Instant::now() + Duration::from_secs(600);
                    loop {
                        let finished = done_sending
                            .lock()
                            .unwrap()
                            .is_some_and(|at| at.elapsed() > Duration::from_secs(30));
                        if finished || Instant::now() > hard_stop || seen.len() >= messages {
                            break;
                        }
                        let (status, answer, _) = sliding_call(&agent, url, token, Some(&pos), 30_000, &body);
                        let now = Instant::now();
                        assert_eq!(status, 200, "sliding sync: {answer}");
                        pos = answer["pos"].as_str().expect("pos").to_owned();
                        for event in answer["rooms"]
                            .as_object()
                            .into_iter()
                            .flat_map(|rooms| rooms.values())
                            .flat_map(|room| room["timeline"].as_array().into_iter().flatten())
                        {
                            let is_ours = event["content"]["body"]
                                .as_str()
                                .is_some_and(|b| b.starts_with(tag.as_str()));
                            if let (true, Some(id)) = (is_ours, event["event_id"].as_str()) {
                                seen.entry(id.to_owned()).or_insert((now, 0)).1 += 1;
                            }
                        }
                    }
                    seen
                })
            })
            .collect();
        let started = Instant::now();
        while ready.load(Ordering::SeqCst) < receivers && started.elapsed() < Duration::from_secs(60) {
            thread::sleep(Duration::from_millis(10));
        }
        thread::sleep(Duration::from_millis(500)); // let every receiver be in its long-poll
        let agent = agent();
        let mut sent = Vec::new();
        for k in 0..messages {
            let started = Instant::now();
            let (status, body) = call(
                &agent,
                "PUT",
                &format!(
                    "{url}/_matrix/client/v3/rooms/{}/send/m.room.message/{tag}-{k}",
                    enc(&room)
                ),
                Some(sender),
                &json!({"msgtype": "m.text", "body": format!("{tag} {k}")}),
            );
            let answered = Instant::now();
            assert_eq!(status, 200, "send: {body}");
            sent.push((body["event_id"].as_str().unwrap().to_owned(), started, answered));
            thread::sleep(Duration::from_millis(200));
        }
        *done_sending.lock().unwrap() = Some(Instant::now());
        let seen: Vec<_> = handles.into_iter().map(|h| h.join().expect("receiver")).collect();
        (seen, sent)
    });
    let (mut deliveries, mut from_start) = (Vec::new(), Vec::new());
    let (mut lost, mut duplicates, mut early) = (0usize, 0usize, 0usize);
    for seen in &seen_by_receivers {
        for (id, started, answered) in &sent {
            match seen.get(id) {
                None => lost += 1,
                Some((at, count)) => {
                    duplicates += count - 1;
                    early += usize::from(at < answered);
                    deliveries.push(at.saturating_duration_since(*answered));
                    from_start.push(at.saturating_duration_since(*started));
                }
            }
        }
    }
    from_start.sort();
    deliveries.sort();
    let line = json!({
        "scenario": "sliding",
        "params": {"rooms": rooms, "window": 20, "receivers": receivers, "messages": messages},
        "metrics": {
            "ss_first_p50_ms": percentile(&first, 0.5),
            "ss_first_bytes": first_bytes,
            "ss_deliver_p50_ms": percentile(&deliveries, 0.5),
            "ss_deliver_p99_ms": percentile(&deliveries, 0.99),
        },
        "checks": {"lost": lost, "duplicates": duplicates},
        "info": {"setup_s": round2(setup_s), "rooms_in_first_response": listed,
                 "deliver_from_send_start_p50_ms": percentile(&from_start, 0.5),
                 "delivered_before_send_response": early},
    });
    println!("{line}");
}
