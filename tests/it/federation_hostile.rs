//! A hostile peer: a real Hearth server whose signing key the test holds, so the test can sign
//! whatever it likes as that server and send it to another Hearth in transactions. Forged
//! signatures, a content hash that does not match, a sender of a third server, an event its
//! auth events do not allow, oversized and replayed transactions, unknown prev events: each is
//! refused (or, for the hash, kept redacted) and nothing already stored changes.

use base64::{Engine, engine::general_purpose::STANDARD_NO_PAD};
use ruma::{CanonicalJsonObject, RoomVersionId};
use serde_json::{Value, json};

use crate::support::{
    Client, TestServer,
    federation::{TestCa, federated_server, room_state_ids, signing_key_of, tls_request, x_matrix},
};

/// The victim (`a`, with alice), the hostile server (`m`, with mallory joined to alice's public
/// room through it) and the room.
struct Scene {
    ca: TestCa,
    a: TestServer,
    m: TestServer,
    alice: Client,
    room_id: String,
}

fn scene(ip_a: &str, ip_m: &str) -> Scene {
    let ca = TestCa::new();
    let mut a = federated_server(&ca, ip_a, &[]);
    let mut m = federated_server(&ca, ip_m, &[]);
    a.launch();
    m.launch();
    let alice = a.user("alice", "secret-password");
    let mallory = m.user("mallory", "secret-password");
    let room = alice.post("/_matrix/client/v3/createRoom", json!({"preset": "public_chat"}));
    let room_id = room.ok()["room_id"].as_str().unwrap().to_owned();
    mallory
        .post(
            &format!("/_matrix/client/v3/join/{room_id}?via={}", a.server_name),
            json!({}),
        )
        .ok();
    Scene {
        ca,
        a,
        m,
        alice,
        room_id,
    }
}

impl Scene {
    fn mallory_id(&self) -> String {
        format!("@mallory:{}", self.m.server_name)
    }

    /// The event ids of the room's current state, by `type|state_key`.
    fn state_ids(&self) -> std::collections::BTreeMap<String, String> {
        room_state_ids(&self.alice, &self.room_id)
    }

    /// The newest event of the room, as alice sees it.
    fn latest(&self) -> Value {
        let page = self.alice.get(&format!(
            "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=1",
            self.room_id
        ));
        page.ok()["chunk"][0].clone()
    }

    /// A PDU from mallory (or `sender`) built on the room's newest event, hashed and signed
    /// with `key` as the hostile server; returns its event id and JSON.
    fn forge(
        &self,
        key: &hearth::services::server_keys::ServerKeys,
        sender: &str,
        kind: &str,
        state_key: Option<&str>,
        content: Value,
        auth: &[&str],
    ) -> (String, Value) {
        let ids = self.state_ids();
        let mut object = json!({
            "type": kind,
            "room_id": self.room_id,
            "sender": sender,
            "content": content,
            "prev_events": [self.latest()["event_id"]],
            "auth_events": auth.iter().map(|k| ids[*k].clone()).collect::<Vec<_>>(),
            "depth": 1000,
            "origin_server_ts": 1_700_000_000_000u64,
        });
        if let Some(state_key) = state_key {
            object["state_key"] = json!(state_key);
        }
        let mut object: CanonicalJsonObject = serde_json::from_value(object).unwrap();
        let rules = RoomVersionId::V12.rules().unwrap();
        ruma::signatures::hash_and_sign_event(&self.m.server_name, &key.keypair, &mut object, &rules.redaction)
            .unwrap();
        let hash = ruma::signatures::reference_hash(&object, &rules).unwrap();
        (format!("${hash}"), serde_json::to_value(&object).unwrap())
    }

    /// Sends a transaction of `pdus` to `a` as the hostile server; status and body.
    fn send(&self, txn: &str, pdus: Vec<Value>) -> (u16, Value) {
        let key = signing_key_of(&self.m);
        let body = json!({
            "origin": self.m.server_name,
            "origin_server_ts": 1_700_000_000_000u64,
            "pdus": pdus,
            "edus": [],
        });
        let uri = format!("/_matrix/federation/v1/send/{txn}");
        let auth = x_matrix(&key, &self.m.server_name, &self.a.server_name, "PUT", &uri, Some(&body));
        let ip = self.a.server_name.split(':').next().unwrap();
        let bytes = serde_json::to_vec(&body).unwrap();
        let answer = tls_request(
            self.ca.client_config(),
            &self.a.server_name,
            ip,
            &self.a.server_name,
            "PUT",
            &uri,
            &[("Authorization", &auth), ("Content-Type", "application/json")],
            Some(&bytes),
        )
        .unwrap();
        (answer.status, answer.body)
    }

    /// Whether alice sees the event in the room's timeline (and its content then).
    fn seen(&self, event_id: &str) -> Option<Value> {
        let page = self.alice.get(&format!(
            "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=50",
            self.room_id
        ));
        page.ok()["chunk"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["event_id"] == event_id)
            .map(|e| e["content"].clone())
    }
}

/// The auth events of a message from mallory: the power levels and mallory's membership.
fn message_auth(scene: &Scene) -> Vec<String> {
    vec![
        "m.room.power_levels|".to_owned(),
        format!("m.room.member|{}", scene.mallory_id()),
    ]
}

#[test]
fn forged_and_unauthorised_events_are_refused_and_nothing_stored_changes() {
    let s = scene("127.0.0.91", "127.0.0.92");
    let key = signing_key_of(&s.m);
    let auth = message_auth(&s);
    let auth: Vec<&str> = auth.iter().map(String::as_str).collect();
    let mallory = s.mallory_id();

    // A genuine message first: accepted and shown.
    let (good, pdu) = s.forge(
        &key,
        &mallory,
        "m.room.message",
        None,
        json!({"msgtype": "m.text", "body": "hi"}),
        &auth,
    );
    let (status, body) = s.send("t1", vec![pdu.clone()]);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["pdus"][&good], json!({}), "{body}");
    assert_eq!(s.seen(&good).unwrap()["body"], "hi");

    // The same transaction id again: the same answer, nothing stored twice.
    let (_, again) = s.send("t1", vec![pdu]);
    assert_eq!(again, body);

    // Signed with a key that is not the hostile server's (but named as its key).
    let impostor = hearth::services::server_keys::ServerKeys::parse(&format!(
        "ed25519 {} {}",
        key.version,
        STANDARD_NO_PAD.encode([9u8; 32])
    ))
    .unwrap();
    let (bad_sig, pdu) = s.forge(
        &impostor,
        &mallory,
        "m.room.message",
        None,
        json!({"msgtype": "m.text", "body": "forged"}),
        &auth,
    );
    let (_, body) = s.send("t2", vec![pdu]);
    assert!(
        body["pdus"].get(&bad_sig).is_none_or(|r| r.get("error").is_some()),
        "{body}"
    );
    assert!(s.seen(&bad_sig).is_none());

    // A user of the victim's own server, signed by the hostile one.
    let alice_id = format!("@alice:{}", s.a.server_name);
    let (as_alice, pdu) = s.forge(
        &key,
        &alice_id,
        "m.room.message",
        None,
        json!({"msgtype": "m.text", "body": "not alice"}),
        &auth,
    );
    s.send("t3", vec![pdu]);
    assert!(s.seen(&as_alice).is_none());

    // The content changed after signing: kept, but redacted.
    let (tampered, mut pdu) = s.forge(
        &key,
        &mallory,
        "m.room.message",
        None,
        json!({"msgtype": "m.text", "body": "original"}),
        &auth,
    );
    pdu["content"]["body"] = json!("tampered");
    let (_, body) = s.send("t4", vec![pdu]);
    assert_eq!(body["pdus"][&tampered], json!({}), "{body}");
    let content = s.seen(&tampered).expect("kept in its redacted form");
    assert!(content.get("body").is_none(), "{content}");

    // Power mallory's auth events do not give: rejected, the power levels stay.
    let before = s.alice.get(&format!(
        "/_matrix/client/v3/rooms/{}/state/m.room.power_levels",
        s.room_id
    ));
    let mut levels = before.ok().clone();
    levels["users"][&mallory] = json!(100);
    let pl_auth = ["m.room.power_levels|".to_owned(), format!("m.room.member|{mallory}")];
    let pl_auth: Vec<&str> = pl_auth.iter().map(String::as_str).collect();
    let (coup, pdu) = s.forge(&key, &mallory, "m.room.power_levels", Some(""), levels, &pl_auth);
    let (_, body) = s.send("t5", vec![pdu]);
    assert!(body["pdus"][&coup]["error"].is_string(), "{body}");
    let after = s.alice.get(&format!(
        "/_matrix/client/v3/rooms/{}/state/m.room.power_levels",
        s.room_id
    ));
    assert_eq!(after.ok(), before.ok());

    // Prev events nobody has: not stored, answered with an error.
    let (orphan, mut pdu) = s.forge(
        &key,
        &mallory,
        "m.room.message",
        None,
        json!({"msgtype": "m.text", "body": "orphan"}),
        &auth,
    );
    pdu["prev_events"] = json!(["$doesnotexist0000000000000000000000000000000"]);
    let (status, body) = s.send("t6", vec![pdu]);
    assert_eq!(status, 200, "{body}");
    assert!(
        body["pdus"]
            .as_object()
            .unwrap()
            .values()
            .all(|r| r.get("error").is_some()),
        "{body}"
    );
    assert!(s.seen(&orphan).is_none());
}

#[test]
fn oversized_transactions_are_refused_whole() {
    let s = scene("127.0.0.93", "127.0.0.94");
    let key = signing_key_of(&s.m);
    let auth = message_auth(&s);
    let auth: Vec<&str> = auth.iter().map(String::as_str).collect();
    let mallory = s.mallory_id();
    let pdus: Vec<Value> = (0..51)
        .map(|n| {
            s.forge(
                &key,
                &mallory,
                "m.room.message",
                None,
                json!({"msgtype": "m.text", "body": format!("m{n}")}),
                &auth,
            )
            .1
        })
        .collect();
    let ids: Vec<String> = pdus
        .iter()
        .map(|p| {
            let object: CanonicalJsonObject = serde_json::from_value(p.clone()).unwrap();
            let hash = ruma::signatures::reference_hash(&object, &RoomVersionId::V12.rules().unwrap()).unwrap();
            format!("${hash}")
        })
        .collect();
    let (status, body) = s.send("big", pdus);
    assert_eq!((status, body["errcode"].as_str()), (400, Some("M_BAD_JSON")), "{body}");
    assert!(ids.iter().all(|id| s.seen(id).is_none()));
    // 10,000 PDUs: refused as too large or too many, never processed.
    let one = s
        .forge(
            &key,
            &mallory,
            "m.room.message",
            None,
            json!({"msgtype": "m.text", "body": "x"}),
            &auth,
        )
        .1;
    let (status, _) = s.send("huge", vec![one; 10_000]);
    assert!(status == 400 || status == 413, "{status}");
}

/// A server that answers `make_join` with a template for another event: a ban of someone else,
/// or a join of another user. Hearth must never sign it, and stores nothing of the room.
#[test]
fn a_lying_join_template_is_never_signed() {
    use crate::support::fake_server::FakeServer;
    let ca = TestCa::new();
    let mut b = federated_server(&ca, "127.0.0.95", &[]);
    b.launch();
    let bob = b.user("bob", "secret-password");
    let bob_id = format!("@bob:{}", b.server_name);
    let liar = FakeServer::start(&ca, "127.0.0.96");
    let room_id = format!("!liar:{}", liar.name);
    let victim = format!("@victim:{}", liar.name);
    for (sender, state_key, membership) in [
        (bob_id.as_str(), victim.as_str(), "ban"),
        (bob_id.as_str(), bob_id.as_str(), "ban"),
        (victim.as_str(), victim.as_str(), "join"),
    ] {
        let template = json!({
            "room_version": "10",
            "event": {
                "type": "m.room.member", "room_id": room_id, "sender": sender, "state_key": state_key,
                "content": {"membership": membership}, "prev_events": [], "auth_events": [], "depth": 5,
                "origin_server_ts": 1, "origin": liar.name,
            },
        });
        liar.answer_with(&template.to_string());
        let answer = bob.post(
            &format!("/_matrix/client/v3/join/{room_id}?via={}", liar.name),
            json!({}),
        );
        assert_eq!(answer.status, 403, "{membership} of {state_key}: {}", answer.text);
        // Only make_join was asked: nothing was signed and sent with send_join.
        assert!(
            liar.received().iter().all(|r| !r.path.contains("send_join")),
            "{:?}",
            liar.received()
        );
    }
    let rooms = bob.get("/_matrix/client/v3/joined_rooms");
    assert!(rooms.ok()["joined_rooms"].as_array().unwrap().is_empty());
}

/// A transaction whose PDUs name many unknown auth events makes the receiving server ask the
/// origin for at most a bounded number of them, however many the PDUs name.
#[test]
fn a_transaction_causes_a_bounded_number_of_requests_back() {
    use crate::support::fake_server::FakeServer;
    let ca = TestCa::new();
    let mut a = federated_server(&ca, "127.0.0.97", &[]);
    a.launch();
    let alice = a.user("alice", "secret-password");
    let room = alice.post("/_matrix/client/v3/createRoom", json!({"preset": "public_chat"}));
    let room_id = room.ok()["room_id"].as_str().unwrap().to_owned();
    let peer = FakeServer::start(&ca, "127.0.0.98");
    let key_text = hearth::services::server_keys::generate_key_file().unwrap();
    let key = hearth::services::server_keys::ServerKeys::parse(&key_text).unwrap();
    // The peer answers every request with its key answer: fetched auth events come back
    // as nonsense, so each missing one stays missing and would be asked for again.
    let mut answer: CanonicalJsonObject = serde_json::from_value(json!({
        "server_name": peer.name,
        "verify_keys": {key.key_id(): {"key": STANDARD_NO_PAD.encode(key.public_key())}},
        "old_verify_keys": {},
        "valid_until_ts": 4_000_000_000_000u64,
    }))
    .unwrap();
    ruma::signatures::sign_json(&peer.name, &key.keypair, &mut answer).unwrap();
    peer.answer_with(&serde_json::to_string(&answer).unwrap());

    let rules = RoomVersionId::V12.rules().unwrap();
    let pdus: Vec<Value> = (0..50)
        .map(|n| {
            let unknown: Vec<String> = (0..10).map(|k| format!("$unknown{n}x{k}")).collect();
            let mut object: CanonicalJsonObject = serde_json::from_value(json!({
                "type": "m.room.message", "room_id": room_id, "sender": format!("@eve:{}", peer.name),
                "content": {"body": format!("m{n}"), "msgtype": "m.text"},
                "prev_events": [], "auth_events": unknown, "depth": 5, "origin_server_ts": 1,
            }))
            .unwrap();
            ruma::signatures::hash_and_sign_event(&peer.name, &key.keypair, &mut object, &rules.redaction).unwrap();
            serde_json::to_value(&object).unwrap()
        })
        .collect();
    let body = json!({"origin": peer.name, "origin_server_ts": 1, "pdus": pdus, "edus": []});
    let uri = "/_matrix/federation/v1/send/flood";
    let auth = x_matrix(&key, &peer.name, &a.server_name, "PUT", uri, Some(&body));
    let bytes = serde_json::to_vec(&body).unwrap();
    let answer = tls_request(
        ca.client_config(),
        &a.server_name,
        "127.0.0.97",
        &a.server_name,
        "PUT",
        uri,
        &[("Authorization", &auth), ("Content-Type", "application/json")],
        Some(&bytes),
    )
    .unwrap();
    assert_eq!(answer.status, 200, "{}", answer.body);
    let asked = peer
        .received()
        .iter()
        .filter(|r| r.path.starts_with("/_matrix/federation/v1/event/"))
        .count();
    assert!(asked > 0, "the missing auth events were asked for");
    assert!(asked <= 20, "{asked} requests back for one transaction");
}
