//! Federation, part 2, with a real Synapse (`support::synapse`, presence on) on loopback, both
//! directions: typing, read receipts (threaded too), presence and profile look-ups; and a server
//! ACL set on a Hearth room that bars Synapse making Hearth refuse Synapse's messages and typing.
//! Skipped with a note when the Synapse venv is missing, unless `HEARTH_TEST_REQUIRE_SYNAPSE=1`.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{
    Client, TestServer,
    federation::{TestCa, federated_server},
    synapse::{self, Synapse},
};

/// A Hearth server on `hearth_ip` and a Synapse (presence on) on `synapse_ip` (their own
/// addresses, so a server ACL can tell them apart), trusting the same CA; `None` when Synapse
/// is not installed (and not required).
fn servers(hearth_ip: &str, synapse_ip: &str) -> Option<(TestCa, TestServer, Synapse)> {
    let python = synapse::python()?;
    let ca = TestCa::new();
    let mut hearth = federated_server(&ca, hearth_ip, &[]);
    hearth.launch();
    let synapse = Synapse::start_with_presence(&python, &ca, synapse_ip);
    Some((ca, hearth, synapse))
}

/// Polls `check` every 200 ms for up to 60 s; true once it holds.
fn eventually(mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if check() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn bodies(client: &Client, room_id: &str) -> Vec<String> {
    let page = client.get(&format!("/_matrix/client/v3/rooms/{room_id}/messages?dir=b&limit=100"));
    page.body["chunk"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
        .collect()
}

fn send_text(client: &Client, room_id: &str, txn: &str, body: &str) -> String {
    let answer = client.put(
        &format!("/_matrix/client/v3/rooms/{room_id}/send/m.room.message/{txn}"),
        json!({"msgtype": "m.text", "body": body}),
    );
    answer.ok()["event_id"].as_str().unwrap().to_owned()
}

/// Incremental syncs that leave presence alone; every answer kept.
struct Syncer<'a> {
    client: &'a Client,
    since: Option<String>,
    seen: Vec<Value>,
}

impl<'a> Syncer<'a> {
    fn new(client: &'a Client) -> Self {
        Syncer {
            client,
            since: None,
            seen: Vec::new(),
        }
    }

    fn once(&mut self) {
        let path = match &self.since {
            Some(token) => format!("/_matrix/client/v3/sync?timeout=0&set_presence=offline&since={token}"),
            None => "/_matrix/client/v3/sync?timeout=0&set_presence=offline".to_owned(),
        };
        let body = self.client.get(&path).ok().clone();
        self.since = body["next_batch"].as_str().map(str::to_owned);
        self.seen.push(body);
    }

    fn ephemeral(&self, room_id: &str) -> Vec<Value> {
        self.seen
            .iter()
            .flat_map(|s| {
                s["rooms"]["join"][room_id]["ephemeral"]["events"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .collect()
    }

    fn presence(&self) -> Vec<Value> {
        self.seen
            .iter()
            .flat_map(|s| s["presence"]["events"].as_array().cloned().unwrap_or_default())
            .collect()
    }

    fn typing(&self, room_id: &str, user: &str) -> bool {
        self.ephemeral(room_id).iter().any(|e| {
            e["type"] == "m.typing"
                && e["content"]["user_ids"]
                    .as_array()
                    .is_some_and(|u| u.contains(&json!(user)))
        })
    }

    fn receipt(&self, room_id: &str, event_id: &str, user: &str) -> Option<Value> {
        self.ephemeral(room_id)
            .iter()
            .filter(|e| e["type"] == "m.receipt")
            .find_map(|e| e["content"][event_id]["m.read"].get(user).cloned())
    }

    fn status_of(&self, user: &str, status: &str) -> bool {
        self.presence()
            .iter()
            .any(|e| e["sender"] == user && e["content"]["status_msg"] == status)
    }
}

/// A Hearth room a Synapse user joined: typing, receipts (a threaded one with its thread id)
/// and presence cross both ways, and each side looks up the other's profile.
#[test]
fn typing_receipts_presence_and_profiles_cross_with_synapse() {
    let Some((_ca, hearth, synapse)) = servers("127.0.0.221", "127.0.0.222") else {
        return;
    };
    let alice = hearth.user("alice", "secret-password");
    let sam = synapse.user("sam", "secret-password");
    let alice_id = format!("@alice:{}", hearth.server_name);
    let sam_id = format!("@sam:{}", synapse.server_name);
    alice
        .put(
            &format!("/_matrix/client/v3/profile/{alice_id}/displayname"),
            json!({"displayname": "Alice on Hearth"}),
        )
        .ok();
    sam.put(
        &format!("/_matrix/client/v3/profile/{sam_id}/displayname"),
        json!({"displayname": "Sam on Synapse"}),
    )
    .ok();

    // Profiles both ways.
    let profile = alice.get(&format!("/_matrix/client/v3/profile/{sam_id}"));
    assert_eq!(profile.ok()["displayname"], "Sam on Synapse", "{}", profile.body);
    let profile = sam.get(&format!("/_matrix/client/v3/profile/{alice_id}"));
    assert_eq!(profile.ok()["displayname"], "Alice on Hearth", "{}", profile.body);
    let field = alice.get(&format!("/_matrix/client/v3/profile/{sam_id}/displayname"));
    assert_eq!(field.ok()["displayname"], "Sam on Synapse");

    let room = alice.post("/_matrix/client/v3/createRoom", json!({"preset": "public_chat"}));
    let room_id = room.ok()["room_id"].as_str().unwrap().to_owned();
    let joined = sam.post(
        &format!("/_matrix/client/v3/join/{room_id}?server_name={}", hearth.server_name),
        json!({}),
    );
    assert_eq!(joined.status, 200, "{}", joined.body);
    let members = alice.get(&format!("/_matrix/client/v3/rooms/{room_id}/joined_members"));
    assert_eq!(members.ok()["joined"][&sam_id]["display_name"], "Sam on Synapse");
    let root = send_text(&alice, &room_id, "a1", "root");
    assert!(eventually(|| bodies(&sam, &room_id).contains(&"root".to_owned())));
    let sams = send_text(&sam, &room_id, "s1", "from sam");
    assert!(eventually(|| bodies(&alice, &room_id).contains(&"from sam".to_owned())));

    // Typing and receipts, Synapse to Hearth (a threaded receipt keeps its thread).
    sam.put(
        &format!("/_matrix/client/v3/rooms/{room_id}/typing/{sam_id}"),
        json!({"typing": true, "timeout": 30000}),
    )
    .ok();
    sam.post(
        &format!("/_matrix/client/v3/rooms/{room_id}/receipt/m.read/{root}"),
        json!({"thread_id": "main"}),
    )
    .ok();
    let mut alice_sync = Syncer::new(&alice);
    assert!(
        eventually(|| {
            alice_sync.once();
            alice_sync.typing(&room_id, &sam_id)
                && alice_sync
                    .receipt(&room_id, &root, &sam_id)
                    .is_some_and(|r| r["thread_id"] == "main")
        }),
        "Synapse's typing and threaded receipt reach Hearth"
    );

    // Hearth to Synapse.
    alice
        .put(
            &format!("/_matrix/client/v3/rooms/{room_id}/typing/{alice_id}"),
            json!({"typing": true, "timeout": 30000}),
        )
        .ok();
    alice
        .post(
            &format!("/_matrix/client/v3/rooms/{room_id}/receipt/m.read/{sams}"),
            json!({"thread_id": "main"}),
        )
        .ok();
    let mut sam_sync = Syncer::new(&sam);
    assert!(
        eventually(|| {
            sam_sync.once();
            sam_sync.typing(&room_id, &alice_id)
                && sam_sync
                    .receipt(&room_id, &sams, &alice_id)
                    .is_some_and(|r| r["thread_id"] == "main")
        }),
        "Hearth's typing and threaded receipt reach Synapse"
    );

    // Presence both ways.
    alice
        .put(
            &format!("/_matrix/client/v3/presence/{alice_id}/status"),
            json!({"presence": "online", "status_msg": "hearth side"}),
        )
        .ok();
    assert!(
        eventually(|| {
            sam_sync.once();
            sam_sync.status_of(&alice_id, "hearth side")
        }),
        "Hearth's presence reaches Synapse"
    );
    sam.put(
        &format!("/_matrix/client/v3/presence/{sam_id}/status"),
        json!({"presence": "unavailable", "status_msg": "synapse side"}),
    )
    .ok();
    assert!(
        eventually(|| {
            alice_sync.once();
            alice_sync.status_of(&sam_id, "synapse side")
        }),
        "Synapse's presence reaches Hearth"
    );
    let seen = alice.get(&format!("/_matrix/client/v3/presence/{sam_id}/status"));
    assert_eq!(seen.ok()["presence"], "unavailable", "{}", seen.body);
}

/// A server ACL on a Hearth room barring Synapse's host: Hearth answers Synapse's next
/// message with an error naming the ACL (Synapse logs it) and never shows it, nor Synapse's
/// typing sent before it; Hearth's own messages still reach Synapse (it is not barred there).
#[test]
fn a_hearth_room_acl_barring_synapse_refuses_its_messages() {
    let Some((_ca, hearth, synapse)) = servers("127.0.0.223", "127.0.0.224") else {
        return;
    };
    let alice = hearth.user("alice", "secret-password");
    let sam = synapse.user("sam", "secret-password");
    let sam_id = format!("@sam:{}", synapse.server_name);
    let room = alice.post("/_matrix/client/v3/createRoom", json!({"preset": "public_chat"}));
    let room_id = room.ok()["room_id"].as_str().unwrap().to_owned();
    let joined = sam.post(
        &format!("/_matrix/client/v3/join/{room_id}?server_name={}", hearth.server_name),
        json!({}),
    );
    assert_eq!(joined.status, 200, "{}", joined.body);
    send_text(&sam, &room_id, "s0", "before the acl");
    assert!(eventually(
        || bodies(&alice, &room_id).contains(&"before the acl".to_owned())
    ));

    alice
        .put(
            &format!("/_matrix/client/v3/rooms/{room_id}/state/m.room.server_acl"),
            json!({"allow": ["*"], "deny": ["127.0.0.224"], "allow_ip_literals": true}),
        )
        .ok();
    assert!(
        eventually(|| sam
            .get(&format!("/_matrix/client/v3/rooms/{room_id}/state/m.room.server_acl"))
            .status
            == 200),
        "the ACL reaches Synapse"
    );
    sam.put(
        &format!("/_matrix/client/v3/rooms/{room_id}/typing/{sam_id}"),
        json!({"typing": true, "timeout": 30000}),
    )
    .ok();
    let barred = send_text(&sam, &room_id, "s1", "after the acl");
    assert!(
        eventually(|| {
            let log = synapse.log();
            log.lines()
                .any(|l| l.contains("Remote returned error for") && l.contains(&barred) && l.contains("server ACL"))
        }),
        "Hearth answered Synapse's message with the ACL error"
    );
    assert!(!bodies(&alice, &room_id).contains(&"after the acl".to_owned()));
    let mut alice_sync = Syncer::new(&alice);
    alice_sync.once();
    assert!(!alice_sync.typing(&room_id, &sam_id), "Synapse's typing dropped");

    send_text(&alice, &room_id, "a1", "hearth still talks");
    assert!(eventually(
        || bodies(&sam, &room_id).contains(&"hearth still talks".to_owned())
    ));
}
