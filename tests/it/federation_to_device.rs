//! To-device messages across servers (`m.direct_to_device` EDUs, spec server-server API
//! "Send-to-device messaging") between real Hearth servers on loopback: to one remote device
//! and to `*`, exactly once (a retried client transaction and a replayed federation
//! transaction deliver nothing twice), in order per sender, kept across a restart of the
//! sending server while the receiver is down, and a sender of another server ignored. Also
//! what an encrypted conversation across servers needs besides: a one-time key claimed across
//! servers handed out once, and a room joined over federation arriving with its state.
//!
//! "Nothing more arrived" is checked without timing: messages of one sender arrive in order,
//! so once a later marker message arrived, anything duplicated before it would have too.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{
    Client, TestServer,
    federation::{TestCa, federated_server, signing_key_of, tls_request, x_matrix},
};

/// Two servers with a user each: `(a, b, alice on a, bob on b)`.
fn pair(ca: &TestCa, ip_a: &str, ip_b: &str) -> (TestServer, TestServer, Client, Client) {
    let mut a = federated_server(ca, ip_a, &[]);
    let mut b = federated_server(ca, ip_b, &[]);
    a.launch();
    b.launch();
    let alice = a.user("alice", "secret-password");
    let bob = b.user("bob", "secret-password");
    (a, b, alice, bob)
}

/// A device's to-device inbox, read through `/sync` (each sync acknowledges the last).
struct Inbox {
    client: Client,
    since: Option<String>,
    got: Vec<Value>,
}

impl Inbox {
    fn new(client: &Client) -> Inbox {
        Inbox {
            client: client.clone(),
            since: None,
            got: Vec::new(),
        }
    }

    fn sync_once(&mut self) {
        let path = match &self.since {
            Some(token) => format!("/_matrix/client/v3/sync?timeout=200&since={token}"),
            None => "/_matrix/client/v3/sync?timeout=0".to_owned(),
        };
        let body = self.client.get(&path).ok().clone();
        self.since = body["next_batch"].as_str().map(str::to_owned);
        self.got
            .extend(body["to_device"]["events"].as_array().cloned().unwrap_or_default());
    }

    /// Syncs (for up to 60 s) until a message whose content has `"marker": marker` arrived;
    /// the messages before it, marker included.
    fn until_marker(&mut self, marker: &str) -> Vec<Value> {
        for _ in 0..300 {
            if let Some(at) = self.got.iter().position(|e| e["content"]["marker"] == marker) {
                return self.got.drain(..=at).collect();
            }
            self.sync_once();
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("no marker {marker}; got {:?}", self.got);
    }
}

/// The `n` field of each message's content (non-markers).
fn numbers(events: &[Value]) -> Vec<u64> {
    events.iter().filter_map(|e| e["content"]["n"].as_u64()).collect()
}

fn send(client: &Client, txn: &str, messages: Value) {
    client
        .put(
            &format!("/_matrix/client/v3/sendToDevice/m.test/{txn}"),
            json!({ "messages": messages }),
        )
        .ok();
}

#[test]
fn to_device_messages_reach_one_remote_device_and_all_of_them_once_in_order() {
    let ca = TestCa::new();
    let (_a, b, alice, bob) = pair(&ca, "127.0.0.141", "127.0.0.142");
    let mut bob2 = b.client();
    bob2.login("bob", "secret-password");
    let bob_id = bob.uid();
    let d1 = bob.device_id.clone().unwrap();
    let (mut inbox1, mut inbox2) = (Inbox::new(&bob), Inbox::new(&bob2));
    inbox1.sync_once();
    inbox2.sync_once();

    for n in 0..5 {
        send(&alice, &format!("t{n}"), json!({ &bob_id: { &d1: {"n": n} } }));
    }
    // A retried client transaction is done once.
    send(&alice, "t0", json!({ &bob_id: { &d1: {"n": 0} } }));
    send(&alice, "all", json!({ &bob_id: { "*": {"n": 100} } }));
    send(&alice, "m1", json!({ &bob_id: { "*": {"marker": "m1"} } }));

    let first = inbox1.until_marker("m1");
    assert_eq!(numbers(&first), vec![0, 1, 2, 3, 4, 100], "{first:?}");
    for event in &first {
        assert_eq!(event["sender"], alice.uid().as_str());
        assert_eq!(event["type"], "m.test");
    }
    let second = inbox2.until_marker("m1");
    assert_eq!(
        numbers(&second),
        vec![100],
        "only `*` reaches the other device: {second:?}"
    );

    // The acknowledged messages are not delivered again.
    send(&alice, "m2", json!({ &bob_id: { "*": {"marker": "m2"} } }));
    assert_eq!(numbers(&inbox1.until_marker("m2")), Vec::<u64>::new());
    assert_eq!(numbers(&inbox2.until_marker("m2")), Vec::<u64>::new());
}

/// `PUT /send/{txn}` to `to` signed as `from` (with `key`), carrying `edus`; the status.
fn send_transaction(
    ca: &TestCa,
    key: &hearth::services::server_keys::ServerKeys,
    from: &str,
    to: &TestServer,
    txn: &str,
    edus: Value,
) -> u16 {
    let uri = format!("/_matrix/federation/v1/send/{txn}");
    let body = json!({
        "origin": from,
        "origin_server_ts": 1,
        "pdus": [],
        "edus": edus,
    });
    let auth = x_matrix(key, from, &to.server_name, "PUT", &uri, Some(&body));
    let ip = to.server_name.split(':').next().unwrap();
    let answer = tls_request(
        ca.client_config(),
        &to.server_name,
        ip,
        &to.server_name,
        "PUT",
        &uri,
        &[("Authorization", &auth), ("Content-Type", "application/json")],
        Some(body.to_string().as_bytes()),
    )
    .unwrap();
    assert_eq!(answer.status, 200, "{}", answer.body);
    answer.status
}

fn direct_to_device(sender: &str, message_id: &str, to: &str, device: &str, content: Value) -> Value {
    json!({
        "edu_type": "m.direct_to_device",
        "content": {
            "sender": sender,
            "type": "m.test",
            "message_id": message_id,
            "messages": { to: { device: content } },
        },
    })
}

#[test]
fn a_replayed_edu_is_delivered_once_and_a_forged_sender_is_ignored() {
    let ca = TestCa::new();
    let (a, b, alice, _bob) = pair(&ca, "127.0.0.143", "127.0.0.144");
    let mut m = federated_server(&ca, "127.0.0.145", &[]);
    m.launch();
    let alice_id = alice.uid();
    let device = alice.device_id.clone().unwrap();
    let (b_key, m_key) = (signing_key_of(&b), signing_key_of(&m));
    let (b_name, m_name) = (b.server_name.clone(), m.server_name.clone());
    let mut inbox = Inbox::new(&alice);
    inbox.sync_once();
    let bob_id = format!("@bob:{b_name}");

    let once = direct_to_device(&bob_id, "msg-1", &alice_id, &device, json!({"n": 1}));
    // The same transaction twice, then the same EDU in another transaction (a sender that
    // crashed before it saw the 200 sends it again under a new transaction id).
    send_transaction(&ca, &b_key, &b_name, &a, "txn-1", json!([once]));
    send_transaction(&ca, &b_key, &b_name, &a, "txn-1", json!([once]));
    send_transaction(&ca, &b_key, &b_name, &a, "txn-2", json!([once, once]));
    // `*` from another server reaches every device.
    let all = direct_to_device(&bob_id, "msg-2", &alice_id, "*", json!({"n": 2}));
    // M sends as a user of B: ignored; a message to a user of another server: skipped.
    let forged = direct_to_device(&bob_id, "msg-3", &alice_id, &device, json!({"n": 3}));
    let elsewhere = direct_to_device(
        &format!("@mallory:{m_name}"),
        "msg-4",
        &format!("@carol:{b_name}"),
        "*",
        json!({"n": 4}),
    );
    send_transaction(&ca, &m_key, &m_name, &a, "m-1", json!([forged, elsewhere]));
    send_transaction(&ca, &b_key, &b_name, &a, "txn-3", json!([all]));
    let marker = direct_to_device(
        &format!("@mallory:{m_name}"),
        "msg-5",
        &alice_id,
        &device,
        json!({"marker": "end"}),
    );
    send_transaction(&ca, &m_key, &m_name, &a, "m-2", json!([marker]));
    // The marker was received after everything else (transactions are handled in turn).
    let got = inbox.until_marker("end");
    assert_eq!(numbers(&got), vec![1, 2], "{got:?}");
    assert_eq!(got[0]["sender"], bob_id.as_str());
    assert_eq!(got[2]["sender"], format!("@mallory:{m_name}").as_str());
}

#[test]
fn queued_to_device_messages_survive_a_sender_restart_while_the_receiver_is_down() {
    let ca = TestCa::new();
    let (mut a, mut b, alice, bob) = pair(&ca, "127.0.0.146", "127.0.0.147");
    let bob_id = bob.uid();
    let device = bob.device_id.clone().unwrap();
    b.stop();
    for n in 0..3 {
        send(&alice, &format!("down{n}"), json!({ &bob_id: { &device: {"n": n} } }));
    }
    send(
        &alice,
        "down-marker",
        json!({ &bob_id: { &device: {"marker": "down"} } }),
    );
    // The sender restarts with the messages queued, tries while the receiver is still down,
    // then the receiver comes back.
    a.stop();
    a.launch();
    // A fresh connection pool: the old one holds connections to the stopped process.
    let mut fresh = a.client();
    fresh.token = alice.token.clone();
    let alice = fresh;
    std::thread::sleep(Duration::from_millis(500));
    b.launch();
    let mut fresh = b.client();
    fresh.token = bob.token.clone();
    let bob = fresh;
    let mut inbox = Inbox::new(&bob);
    let got = inbox.until_marker("down");
    assert_eq!(numbers(&got), vec![0, 1, 2], "{got:?}");
    // Nothing comes twice after that.
    send(&alice, "after", json!({ &bob_id: { &device: {"marker": "after"} } }));
    assert_eq!(numbers(&inbox.until_marker("after")), Vec::<u64>::new());
}

/// An encrypted room joined over federation: the joiner's next sync carries the room's state
/// (its clients learn the room is encrypted), although no event of the room lies before the
/// join on the joiner's server.
#[test]
fn a_room_joined_over_federation_comes_with_its_state_in_the_next_sync() {
    let ca = TestCa::new();
    let (a, _b, alice, bob) = pair(&ca, "127.0.0.148", "127.0.0.149");
    let room = alice.post(
        "/_matrix/client/v3/createRoom",
        json!({
            "preset": "public_chat",
            "initial_state": [{"type": "m.room.encryption", "state_key": "", "content": {"algorithm": "m.megolm.v1.aes-sha2"}}],
        }),
    );
    let room_id = room.ok()["room_id"].as_str().unwrap().to_owned();
    let since = bob.get("/_matrix/client/v3/sync?timeout=0").ok()["next_batch"]
        .as_str()
        .unwrap()
        .to_owned();
    bob.post(
        &format!("/_matrix/client/v3/join/{room_id}?via={}", a.server_name),
        json!({}),
    )
    .ok();
    let sync = bob.get(&format!("/_matrix/client/v3/sync?timeout=0&since={since}"));
    let joined = &sync.ok()["rooms"]["join"][&room_id];
    let state: Vec<&str> = joined["state"]["events"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(joined["timeline"]["events"].as_array().into_iter().flatten())
        .filter_map(|e| e["type"].as_str())
        .collect();
    for kind in [
        "m.room.create",
        "m.room.encryption",
        "m.room.power_levels",
        "m.room.join_rules",
    ] {
        assert!(state.contains(&kind), "{kind} missing: {joined:#}");
    }
}

/// A one-time key of a user of another Hearth, claimed through our server
/// (`user/keys/claim`), is handed out once.
#[test]
fn a_one_time_key_claimed_across_servers_is_handed_out_once() {
    let ca = TestCa::new();
    let (_a, b, alice, bob) = pair(&ca, "127.0.0.150", "127.0.0.153");
    let (alice_id, device) = (alice.uid(), alice.device_id.clone().unwrap());
    let (keys, otk) = crate::federation_synapse::signed_keys(&alice);
    alice
        .post(
            "/_matrix/client/v3/keys/upload",
            json!({"device_keys": keys, "one_time_keys": {"signed_curve25519:AAAAAQ": otk}}),
        )
        .ok();
    let claim = |client: &Client| {
        client
            .post(
                "/_matrix/client/v3/keys/claim",
                json!({"one_time_keys": {alice_id.clone(): {device.clone(): "signed_curve25519"}}}),
            )
            .ok()
            .clone()
    };
    let first = claim(&bob);
    assert_eq!(
        first["one_time_keys"][&alice_id][&device]["signed_curve25519:AAAAAQ"], otk,
        "{first:#}"
    );
    let carol = b.user("carol", "secret-password");
    for answer in [claim(&bob), claim(&carol), claim(&alice)] {
        assert!(
            answer["one_time_keys"][&alice_id][&device]
                .as_object()
                .is_none_or(|k| k.is_empty()),
            "{answer:#}"
        );
    }
}
