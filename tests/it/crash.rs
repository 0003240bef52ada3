//! Durability: whatever the server acknowledged survives SIGKILL and power loss. The SIGKILL
//! tests kill the process with `kill -9` (no shutdown, no flush) and restart it on the same data
//! directory; the kernel keeps what the process wrote, so they cannot catch a missing fsync.
//! The power-cut tests run the server over `support::powercut`, which throws away everything
//! not fsynced at the kill, and they prove the harness can fail by running it with
//! `database.sync_writes` off. The fail-closed tests make fsync (or write) fail under the server.

use std::{
    sync::{
        Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use serde_json::json;

use crate::{
    rooms::{create_room, send},
    support::{
        Client, TestServer, enc,
        powercut::{CutReport, PowerCut},
    },
};

#[test]
fn sigkill_keeps_accounts_devices_tokens_and_profile() {
    let mut server = TestServer::start();
    let alice = server.user("alice", "pw-alice");
    let c = server.client();
    let second = c
        .login_with(
            "alice",
            "pw-alice",
            json!({"device_id": "TABLET", "initial_device_display_name": "Tablet", "refresh_token": true}),
        )
        .ok()
        .clone();
    let refresh = second["refresh_token"].as_str().expect("refresh token").to_owned();
    let tablet = c.with_token(second["access_token"].as_str());
    let me = enc(&alice.uid());
    alice
        .put(
            &format!("/_matrix/client/v3/profile/{me}/displayname"),
            json!({"displayname": "Alice Durable"}),
        )
        .ok();
    alice
        .put(
            &format!("/_matrix/client/v3/user/{me}/account_data/org.example.k"),
            json!({"v": 1}),
        )
        .ok();

    server.kill9();
    server.launch();

    let alice = alice.with_base(&server.base);
    let tablet = tablet.with_base(&server.base);
    let c = server.client();
    let who = alice.whoami();
    assert_eq!(who.ok()["user_id"], "@alice:hearth.test");
    assert_eq!(who.body["device_id"].as_str(), alice.device_id.as_deref());
    assert_eq!(tablet.whoami().ok()["device_id"], "TABLET");
    let devices = alice.get("/_matrix/client/v3/devices");
    let list = devices.ok()["devices"].as_array().unwrap();
    assert_eq!(list.len(), 2, "{}", devices.text);
    assert!(
        list.iter()
            .any(|d| d["device_id"] == "TABLET" && d["display_name"] == "Tablet"),
        "{}",
        devices.text
    );
    assert_eq!(
        c.get(&format!("/_matrix/client/v3/profile/{me}/displayname")).ok()["displayname"],
        "Alice Durable"
    );
    assert_eq!(
        alice
            .get(&format!("/_matrix/client/v3/user/{me}/account_data/org.example.k"))
            .ok(),
        &json!({"v": 1})
    );
    let r = c.post("/_matrix/client/v3/refresh", json!({"refresh_token": refresh}));
    let new_access = r.ok()["access_token"].as_str().unwrap();
    assert_eq!(c.with_token(Some(new_access)).whoami().ok()["device_id"], "TABLET");
    c.login_with("alice", "pw-alice", json!({})).ok();
    c.login_with("alice", "wrong", json!({})).expect_err(403, "M_FORBIDDEN");
}

#[test]
fn sigkill_right_after_a_stream_of_registrations() {
    let mut server = TestServer::start();
    let c = server.client();
    let names: Vec<String> = (0..30).map(|i| format!("user{i:02}")).collect();
    for name in &names {
        let r = c.register_with(json!({"username": name, "password": format!("pw-{name}")}));
        r.ok();
    }
    server.kill9();
    server.launch();
    let c = server.client();
    for name in &names {
        let r = c.login_with(name, &format!("pw-{name}"), json!({}));
        assert_eq!(
            r.ok()["user_id"],
            format!("@{name}:hearth.test").as_str(),
            "{name} survived"
        );
    }
    c.get("/_matrix/client/v3/register/available?username=user29")
        .expect_err(400, "M_USER_IN_USE");
}

/// The harness itself, on a shell script instead of the server: unsynced appends are cut,
/// durable bytes overwritten after their sync are put back, a file created before its
/// directory's sync stays (empty when never synced), and a file created after it vanishes even
/// though its content was synced.
#[test]
fn the_power_cut_model_keeps_exactly_what_was_synced() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = std::fs::canonicalize(tmp.path()).unwrap();
    std::fs::write(dir.join("old"), "base").unwrap();
    let mut cut = PowerCut::new();
    let env = cut.watch(&dir);
    let script = "cd \"$1\"
        printf grown >> old
        printf 'made early' > early
        dd if=/dev/zero of=synced bs=4 count=1 conv=fsync status=none
        sync .
        printf XY | dd of=synced conv=notrunc status=none
        printf tail >> synced
        printf late > late
        sync late";
    let out = std::process::Command::new("sh")
        .args(["-ec", script, "sh"])
        .arg(&dir)
        .envs(env)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read(dir.join("synced")).unwrap(), b"XY\0\0tail"[..]);
    let report = cut.power_off(&dir);
    eprintln!("{report}");
    assert!(report.unsupported.is_empty(), "{report}");
    assert_eq!(std::fs::read_to_string(dir.join("old")).unwrap(), "base");
    assert_eq!(std::fs::read_to_string(dir.join("early")).unwrap(), "");
    assert_eq!(std::fs::read(dir.join("synced")).unwrap(), [0; 4]);
    assert!(!dir.join("late").exists(), "{report}");
    assert_eq!(report.restored_bytes, 2, "{report}");
}

const ALICE_PW: &str = "pw-alice";

/// Registers alice and creates her room.
fn alice_and_room(server: &TestServer) -> (Client, String) {
    let alice = server.user("alice", ALICE_PW);
    let room = create_room(&alice, json!({"name": "Durable"}));
    (alice, room)
}

/// What clients were told had succeeded before the power cut.
#[derive(Debug, Default)]
struct Acked {
    /// Events whose send was answered 200.
    events: Vec<String>,
    /// The highest value of alice's `org.example.counter` account data answered 200.
    counter: Option<u64>,
    /// The signing key file that signed those events.
    signing_key: Option<Vec<u8>>,
}

/// How the power is cut: [`PowerCut::cut_during_sync`] or [`PowerCut::cut`].
type CutHow = fn(&mut PowerCut, &mut TestServer) -> CutReport;

/// Sends a few messages one by one, then runs two threads sending messages and one writing
/// account data (a plain synced batch, not the room commit queue). The account-data writer
/// stops first; the power is then cut (`how`) while the senders are at it, so sends are in
/// flight, answered or not, at the cut, and every sync under way is a room commit group's.
fn load_then_cut(
    cut: &mut PowerCut,
    how: CutHow,
    server: &mut TestServer,
    alice: &Client,
    room: &str,
) -> (Acked, CutReport) {
    let acked = Mutex::new(Acked {
        signing_key: std::fs::read(server.data_dir.join("signing.key")).ok(),
        ..Acked::default()
    });
    for i in 0..5 {
        let id = send(alice, room, &format!("seq-{i}"), &format!("sequential {i}"));
        acked.lock().unwrap().events.push(id);
    }
    let stop = AtomicBool::new(false);
    let send_path = |txn: &str| format!("/_matrix/client/v3/rooms/{}/send/m.room.message/{txn}", enc(room));
    let counter_path = format!(
        "/_matrix/client/v3/user/{}/account_data/org.example.counter",
        enc(&alice.uid())
    );
    let report = thread::scope(|s| {
        for writer in 0..2 {
            let (acked, stop, send_path) = (&acked, &stop, &send_path);
            s.spawn(move || {
                // Bounded: the cut comes long before this many sends.
                for i in 0..2000 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let body = json!({"msgtype": "m.text", "body": format!("writer {writer} #{i}")});
                    match alice.try_req("PUT", &send_path(&format!("w{writer}-{i}")), Some(body)) {
                        Ok(r) if r.status == 200 => {
                            let id = r.body["event_id"].as_str().expect("event_id").to_owned();
                            acked.lock().unwrap().events.push(id);
                        }
                        _ => break,
                    }
                }
            });
        }
        let (acked_ref, counter_path) = (&acked, &counter_path);
        let account_writer = s.spawn(move || {
            for n in 1..=30u64 {
                match alice.try_req("PUT", counter_path, Some(json!({"n": n}))) {
                    Ok(r) if r.status == 200 => acked_ref.lock().unwrap().counter = Some(n),
                    r => panic!("account data {n}: {r:?}"),
                }
            }
        });
        account_writer.join().unwrap();
        // Cut once a good number of sends were acknowledged, with the senders still going.
        let deadline = Instant::now() + Duration::from_secs(30);
        while acked.lock().unwrap().events.len() < 60 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
        let report = how(cut, server);
        stop.store(true, Ordering::Relaxed);
        report
    });
    (acked.into_inner().unwrap(), report)
}

/// The acknowledged writes a restarted server does not serve.
fn missing_after_restart(server: &TestServer, room: &str, acked: &Acked) -> Vec<String> {
    let mut missing = Vec::new();
    if let Some(key) = &acked.signing_key
        && std::fs::read(server.data_dir.join("signing.key")).ok().as_ref() != Some(key)
    {
        missing.push("the signing key (the restarted server signs with another one)".to_owned());
    }
    let mut alice = server.client();
    let login = alice.login_with("alice", ALICE_PW, json!({}));
    if login.status != 200 {
        missing.push(format!("alice's account (login answered {})", login.text));
        return missing;
    }
    alice.adopt(&login.body);
    let messages = alice.get(&format!(
        "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=1000",
        enc(room)
    ));
    if messages.status != 200 {
        missing.push(format!("the room {room} (/messages answered {})", messages.text));
        return missing;
    }
    let served: Vec<&str> = messages.body["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["event_id"].as_str())
        .collect();
    missing.extend(
        acked
            .events
            .iter()
            .filter(|id| !served.contains(&id.as_str()))
            .map(|id| format!("message {id}")),
    );
    if let Some(n) = acked.counter {
        let r = alice.get(&format!(
            "/_matrix/client/v3/user/{}/account_data/org.example.counter",
            enc(&alice.uid())
        ));
        let stored = if r.status == 200 { r.body["n"].as_u64() } else { None };
        if stored.is_none_or(|stored| stored < n) {
            missing.push(format!("account data counter {n} (now {stored:?})"));
        }
    }
    missing
}

/// The durability promise under simulated power loss: every write answered 200 before the cut
/// (the account, the room, messages sent one by one and by concurrent senders, account data)
/// is served after the restart. The cut comes in place of a sync, while writes are in flight,
/// so a write answered before its sync completed would be lost whatever the timing.
#[test]
fn power_cut_loses_nothing_acknowledged() {
    let mut cut = PowerCut::new();
    let mut server = TestServer::unstarted(&[]);
    cut.arm(&mut server);
    server.launch();
    let (alice, room) = alice_and_room(&server);
    let (acked, report) = load_then_cut(&mut cut, PowerCut::cut_during_sync, &mut server, &alice, &room);
    eprintln!("{report}");
    assert!(report.unsupported.is_empty(), "{report}");
    assert!(acked.events.len() >= 5 && acked.counter.is_some(), "{acked:?}");
    server.launch();
    let missing = missing_after_restart(&server, &room, &acked);
    assert!(
        missing.is_empty(),
        "acknowledged before the power cut, gone after it:\n{}\n{report}",
        missing.join("\n")
    );
    // The restarted server takes writes again.
    let alice = alice.with_base(&server.base);
    send(&alice, &room, "after-restart", "after the restart");
}

/// The harness can fail: with `database.sync_writes` off nothing syncs the WAL, and the same
/// load and check as [`power_cut_loses_nothing_acknowledged`] must find acknowledged writes
/// missing. (Deterministic: nothing in the second run is ever synced, so the cut drops all of
/// it.) The account and room are made durable first, in a clean run with syncing on, so the
/// check has to spot lost messages, not just a lost account.
#[test]
fn power_cut_detects_loss_when_the_wal_is_not_synced() {
    let mut cut = PowerCut::new();
    let mut server = TestServer::start();
    let (alice, room) = alice_and_room(&server);
    server.stop();
    server.set_env("HEARTH_DATABASE__SYNC_WRITES", "false");
    cut.arm(&mut server);
    server.launch();
    let alice = alice.with_base(&server.base);
    // Nothing syncs the WAL now, so there is no sync to cut at: the cut comes at a random moment.
    let (acked, report) = load_then_cut(&mut cut, PowerCut::cut, &mut server, &alice, &room);
    eprintln!("{report}");
    assert!(report.unsupported.is_empty(), "{report}");
    server.remove_env("HEARTH_DATABASE__SYNC_WRITES");
    server.launch();
    let missing = missing_after_restart(&server, &room, &acked);
    eprintln!(
        "with sync_writes off, {} of {} acknowledged messages (and the counter: {}) were lost",
        missing.iter().filter(|m| m.starts_with("message")).count(),
        acked.events.len(),
        missing.iter().any(|m| m.starts_with("account data")),
    );
    assert!(
        missing.iter().any(|m| m.starts_with("message")),
        "the power cut lost no acknowledged message although nothing synced the WAL: \
         the harness cannot detect loss\n{report}"
    );
    assert!(
        !missing.iter().any(|m| m.contains("account (login")),
        "what was durable before the unsynced run must survive: {missing:?}"
    );
}

/// Fail closed: once a WAL write or sync fails, the server acknowledges nothing more, not even
/// after the disk works again (the kernel may have dropped the unsynced pages, so a later
/// successful sync proves nothing): every write gets 500 `M_UNKNOWN`, the failure is logged at
/// ERROR, readers never see the failed event, and after a power cut and restart everything
/// acknowledged before the failure is there and writes are taken again.
#[test]
fn a_failed_wal_write_or_sync_fails_closed() {
    for failure in ["fsync", "write"] {
        let mut cut = PowerCut::new();
        let mut server = TestServer::unstarted(&[]);
        cut.arm(&mut server);
        server.launch();
        let (alice, room) = alice_and_room(&server);
        let mut acked = Acked {
            signing_key: std::fs::read(server.data_dir.join("signing.key")).ok(),
            ..Acked::default()
        };
        for i in 0..3 {
            acked
                .events
                .push(send(&alice, &room, &format!("ok-{i}"), &format!("before {i}")));
        }
        let send_path = |txn: &str| format!("/_matrix/client/v3/rooms/{}/send/m.room.message/{txn}", enc(&room));
        let counter_path = format!(
            "/_matrix/client/v3/user/{}/account_data/org.example.counter",
            enc(&alice.uid())
        );
        let refused = |r: &crate::support::Resp, what: &str| {
            assert!(
                r.status == 500 && r.errcode() == "M_UNKNOWN",
                "{failure}: {what} must be refused with 500 M_UNKNOWN, got {} {}",
                r.status,
                r.text
            );
        };

        cut.inject(Some(failure));
        let body = |text: &str| json!({"msgtype": "m.text", "body": text});
        refused(
            &alice.put(&send_path("failing"), body("failing")),
            "the send that fails",
        );
        cut.inject(None);
        // The disk works again; the server still refuses, whatever the write path.
        refused(
            &alice.put(&send_path("after-1"), body("after failure 1")),
            "a send after the failure",
        );
        refused(
            &alice.put(&send_path("after-2"), body("after failure 2")),
            "a second send",
        );
        refused(&alice.put(&counter_path, json!({"n": 1})), "an account-data write");
        refused(
            &server
                .client()
                .register_with(json!({"username": "bob", "password": "pw-bob"})),
            "a registration",
        );
        // Reads go on, and never show a write that failed.
        let messages = alice.get(&format!(
            "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=100",
            enc(&room)
        ));
        let bodies: Vec<&str> = messages.ok()["chunk"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| e["content"]["body"].as_str())
            .collect();
        assert!(bodies.contains(&"before 2"), "{failure}: {bodies:?}");
        assert!(
            !bodies.iter().any(|b| b.contains("fail")),
            "{failure}: a failed write is served: {bodies:?}"
        );
        let sync = alice.get("/_matrix/client/v3/sync?timeout=0");
        assert!(!sync.ok().to_string().contains("failing"), "{failure}: {}", sync.text);
        let logged = server.logged_errors();
        assert!(
            logged.iter().any(|l| l.contains("STORAGE FAILURE")),
            "{failure}: the failure is logged loudly: {logged:?}"
        );

        let report = cut.cut(&mut server);
        eprintln!("{failure}: {report}");
        assert!(report.unsupported.is_empty(), "{report}");
        assert!(
            !report.injected.is_empty(),
            "{failure}: the shim injected nothing\n{report}"
        );
        server.launch();
        let missing = missing_after_restart(&server, &room, &acked);
        assert!(missing.is_empty(), "{failure}: {missing:?}\n{report}");
        send(
            &alice.with_base(&server.base),
            &room,
            "healthy",
            "the disk is healthy again",
        );
    }
}
