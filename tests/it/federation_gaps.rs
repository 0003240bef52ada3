//! Gaps in the room graph and state answers that lie: a peer (a fake server whose key the test holds, with eve joined to
//! alice's room on a real Hearth through `make_join`/`send_join`) sends an event on top of a
//! deep chain of events Hearth never saw. Hearth asks once for the missing events
//! (`get_missing_events`), then for the state before the oldest it got (`/state_ids`): the
//! recent events arrive, the requests back stay few, and a state answer that its own auth
//! chain does not support is refused whole.

use base64::{Engine, engine::general_purpose::STANDARD_NO_PAD};
use ruma::{CanonicalJsonObject, RoomVersionId};
use serde_json::{Value, json};

use crate::support::{
    Client, TestServer,
    fake_server::FakeServer,
    federation::{TestCa, federated_server, message_bodies, room_state_ids, tls_request, x_matrix},
};

/// Alice's room on `a`, and eve of the fake server `peer` joined to it.
struct Gap {
    ca: TestCa,
    a: TestServer,
    alice: Client,
    room_id: String,
    peer: FakeServer,
    key: hearth::services::server_keys::ServerKeys,
    eve: String,
}

fn gap_scene(ip_a: &str, ip_peer: &str) -> Gap {
    let ca = TestCa::new();
    let mut a = federated_server(&ca, ip_a, &[]);
    a.launch();
    let alice = a.user("alice", "secret-password");
    let room = alice.post("/_matrix/client/v3/createRoom", json!({"preset": "public_chat"}));
    let room_id = room.ok()["room_id"].as_str().unwrap().to_owned();
    let peer = FakeServer::start(&ca, ip_peer);
    let key_text = hearth::services::server_keys::generate_key_file().unwrap();
    let key = hearth::services::server_keys::ServerKeys::parse(&key_text).unwrap();
    let mut answer: CanonicalJsonObject = serde_json::from_value(json!({
        "server_name": peer.name,
        "verify_keys": {key.key_id(): {"key": STANDARD_NO_PAD.encode(key.public_key())}},
        "old_verify_keys": {},
        "valid_until_ts": 4_000_000_000_000u64,
    }))
    .unwrap();
    ruma::signatures::sign_json(&peer.name, &key.keypair, &mut answer).unwrap();
    peer.answer_path("/_matrix/key/v2/server", &serde_json::to_string(&answer).unwrap());
    let eve = format!("@eve:{}", peer.name);
    let gap = Gap {
        ca,
        a,
        alice,
        room_id,
        peer,
        key,
        eve,
    };
    gap.join_eve();
    gap
}

impl Gap {
    /// A federation request to `a` signed as the peer: status and body.
    fn request(&self, method: &str, uri: &str, body: Option<Value>) -> (u16, Value) {
        let auth = x_matrix(
            &self.key,
            &self.peer.name,
            &self.a.server_name,
            method,
            uri,
            body.as_ref(),
        );
        let ip = self.a.server_name.split(':').next().unwrap();
        let bytes = body.map(|b| serde_json::to_vec(&b).unwrap());
        let answer = tls_request(
            self.ca.client_config(),
            &self.a.server_name,
            ip,
            &self.a.server_name,
            method,
            uri,
            &[("Authorization", &auth), ("Content-Type", "application/json")],
            bytes.as_deref(),
        )
        .unwrap();
        (answer.status, answer.body)
    }

    /// `object` hashed and signed as the peer; its event id and JSON.
    fn sign(&self, object: Value) -> (String, Value) {
        let mut object: CanonicalJsonObject = serde_json::from_value(object).unwrap();
        let rules = RoomVersionId::V12.rules().unwrap();
        ruma::signatures::hash_and_sign_event(&self.peer.name, &self.key.keypair, &mut object, &rules.redaction)
            .unwrap();
        let hash = ruma::signatures::reference_hash(&object, &rules).unwrap();
        (format!("${hash}"), serde_json::to_value(&object).unwrap())
    }

    /// Eve joins through `make_join` and `send_join`, as another server's user does.
    fn join_eve(&self) {
        let (status, template) = self.request(
            "GET",
            &format!("/_matrix/federation/v1/make_join/{}/{}?ver=12", self.room_id, self.eve),
            None,
        );
        assert_eq!(status, 200, "{template}");
        let (event_id, event) = self.sign(template["event"].clone());
        let (status, body) = self.request(
            "PUT",
            &format!("/_matrix/federation/v2/send_join/{}/{event_id}", self.room_id),
            Some(event),
        );
        assert_eq!(status, 200, "{body}");
    }

    /// The room's current state as alice sees it: `type|state_key` → event id.
    fn state_ids(&self) -> std::collections::BTreeMap<String, String> {
        room_state_ids(&self.alice, &self.room_id)
    }

    /// A message from eve after `prev`, allowed by the room's power levels and eve's join.
    fn message(&self, body: &str, prev: &str, depth: u64) -> (String, Value) {
        let ids = self.state_ids();
        self.sign(json!({
            "type": "m.room.message",
            "room_id": self.room_id,
            "sender": self.eve,
            "content": {"body": body, "msgtype": "m.text"},
            "prev_events": [prev],
            "auth_events": [ids["m.room.power_levels|"], ids[&format!("m.room.member|{}", self.eve)]],
            "depth": depth,
            "origin_server_ts": 1_700_000_000_000u64 + depth,
        }))
    }

    /// Sends `pdus` in one transaction; the per-PDU results.
    fn send(&self, txn: &str, pdus: Vec<Value>) -> Value {
        let body = json!({
            "origin": self.peer.name, "origin_server_ts": 1_700_000_000_000u64, "pdus": pdus, "edus": [],
        });
        let (status, answer) = self.request("PUT", &format!("/_matrix/federation/v1/send/{txn}"), Some(body));
        assert_eq!(status, 200, "{answer}");
        answer["pdus"].clone()
    }

    /// The message bodies alice sees, newest first (one page of 100).
    fn bodies(&self) -> Vec<String> {
        message_bodies(&self.alice, &self.room_id, 100)
    }

    /// The requests `a` made to the peer whose path starts with `prefix`.
    fn asked(&self, prefix: &str) -> usize {
        self.peer
            .received()
            .iter()
            .filter(|r| r.path.starts_with(prefix))
            .count()
    }
}

/// Eve's server sends the 1,000th event of a chain Hearth never saw: Hearth asks once for the
/// missing events (getting the 10 before it) and once for the state before the oldest of
/// those, then shows those 11 events; the 989 older ones are never asked for one by one.
#[test]
fn a_deep_gap_is_bridged_with_the_state_before_it_and_few_requests() {
    let gap = gap_scene("127.0.0.101", "127.0.0.102");
    let join = gap.state_ids()[&format!("m.room.member|{}", gap.eve)].clone();
    let mut chain: Vec<(String, Value)> = Vec::with_capacity(1_000);
    for n in 1..=1_000u64 {
        let prev = chain.last().map(|(id, _)| id.clone()).unwrap_or_else(|| join.clone());
        chain.push(gap.message(&format!("m{n}"), &prev, 100 + n));
    }
    let recent: Vec<Value> = chain[989..999].iter().map(|(_, e)| e.clone()).collect();
    gap.peer.answer_path(
        "/_matrix/federation/v1/get_missing_events/",
        &json!({"events": recent}).to_string(),
    );
    let state: Vec<String> = gap.state_ids().into_values().collect();
    gap.peer.answer_path(
        "/_matrix/federation/v1/state_ids/",
        &json!({"pdu_ids": state, "auth_chain_ids": state}).to_string(),
    );
    let state_before = gap.state_ids();

    let (last_id, last) = chain[999].clone();
    let results = gap.send("deep", vec![last]);
    assert!(results[&last_id].get("error").is_none(), "{results}");

    let bodies = gap.bodies();
    for n in 990..=1_000 {
        assert!(bodies.contains(&format!("m{n}")), "m{n} missing from {bodies:?}");
    }
    assert!(!bodies.iter().any(|b| b == "m989" || b == "m1"), "{bodies:?}");
    assert_eq!(gap.asked("/_matrix/federation/v1/get_missing_events/"), 1);
    assert_eq!(gap.asked("/_matrix/federation/v1/state_ids/"), 1);
    assert_eq!(
        gap.asked("/_matrix/federation/v1/event/"),
        0,
        "every state event was known"
    );
    assert_eq!(gap.state_ids(), state_before, "messages change no state");
}

/// The state before an event is given by a peer whose answer its own auth chain does not
/// support: a power-levels event giving eve power that its auth events (the room's power
/// levels, where eve has none) forbid; then a member event whose auth events the answer's
/// auth chain leaves out. Each answer is refused whole: the event is not accepted, nothing
/// of the answer is stored, the state stays. An honest answer afterwards is taken.
#[test]
fn a_state_answer_its_auth_chain_does_not_support_is_refused() {
    let gap = gap_scene("127.0.0.103", "127.0.0.104");
    let ids = gap.state_ids();
    let latest = gap.alice.get(&format!(
        "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=1",
        gap.room_id
    ));
    let latest = latest.ok()["chunk"][0]["event_id"].as_str().unwrap().to_owned();
    let eve_join = ids[&format!("m.room.member|{}", gap.eve)].clone();
    gap.peer
        .answer_path("/_matrix/federation/v1/get_missing_events/", r#"{"events":[]}"#);
    let unknown_prev = "$an-event-nobody-has";

    // 1. A forged power-levels event, served when asked for.
    let (forged_id, forged) = gap.sign(json!({
        "type": "m.room.power_levels", "state_key": "", "room_id": gap.room_id, "sender": gap.eve,
        "content": {"users": {gap.eve.clone(): 100}},
        "prev_events": [latest], "auth_events": [ids["m.room.power_levels|"], eve_join],
        "depth": 50, "origin_server_ts": 1_700_000_000_000u64,
    }));
    let mut lying: Vec<String> = ids
        .iter()
        .filter(|(k, _)| k.as_str() != "m.room.power_levels|")
        .map(|(_, id)| id.clone())
        .collect();
    lying.push(forged_id.clone());
    let mut chain = lying.clone();
    chain.push(ids["m.room.power_levels|"].clone());
    gap.peer.answer_path(
        "/_matrix/federation/v1/state_ids/",
        &json!({"pdu_ids": lying, "auth_chain_ids": chain}).to_string(),
    );
    gap.peer.answer_path(
        "/_matrix/federation/v1/event/",
        &json!({"origin": gap.peer.name, "origin_server_ts": 1, "pdus": [forged]}).to_string(),
    );
    let (first_id, first) = gap.message("after a forged state", unknown_prev, 60);
    let results = gap.send("forged-state", vec![first]);
    let error = results[&first_id]["error"].as_str().unwrap_or_default();
    assert!(error.contains("state before it"), "{results}");
    assert!(error.contains("not allowed by its auth events"), "{results}");
    assert_eq!(gap.asked("/_matrix/federation/v1/event/"), 1);

    // 2. A member event whose auth events the answer's auth chain leaves out.
    let (ghost_id, ghost) = gap.sign(json!({
        "type": "m.room.member", "state_key": format!("@ghost:{}", gap.peer.name), "room_id": gap.room_id,
        "sender": format!("@ghost:{}", gap.peer.name), "content": {"membership": "join"},
        "prev_events": [latest], "auth_events": ["$left-out-of-the-chain"],
        "depth": 50, "origin_server_ts": 1_700_000_000_000u64,
    }));
    let mut lying: Vec<String> = ids.values().cloned().collect();
    lying.push(ghost_id.clone());
    gap.peer.answer_path(
        "/_matrix/federation/v1/state_ids/",
        &json!({"pdu_ids": lying, "auth_chain_ids": ids.values().collect::<Vec<_>>()}).to_string(),
    );
    gap.peer.answer_path(
        "/_matrix/federation/v1/event/",
        &json!({"origin": gap.peer.name, "origin_server_ts": 1, "pdus": [ghost]}).to_string(),
    );
    let (second_id, second) = gap.message("after a chainless state", unknown_prev, 61);
    let results = gap.send("chainless-state", vec![second]);
    assert!(results[&second_id]["error"].is_string(), "{results}");

    // Nothing of either answer is stored or shown.
    assert_eq!(gap.state_ids(), ids);
    for id in [&forged_id, &ghost_id, &first_id, &second_id] {
        let event = gap
            .alice
            .get(&format!("/_matrix/client/v3/rooms/{}/event/{id}", gap.room_id));
        assert_eq!(event.status, 404, "{id}: {}", event.text);
    }
    assert!(!gap.bodies().iter().any(|b| b.starts_with("after a")));

    // 3. An honest answer: the event comes through.
    let honest: Vec<String> = ids.values().cloned().collect();
    gap.peer.answer_path(
        "/_matrix/federation/v1/state_ids/",
        &json!({"pdu_ids": honest, "auth_chain_ids": honest}).to_string(),
    );
    let (third_id, third) = gap.message("after an honest state", unknown_prev, 62);
    let results = gap.send("honest-state", vec![third]);
    assert!(results[&third_id].get("error").is_none(), "{results}");
    assert!(gap.bodies().contains(&"after an honest state".to_owned()));
}

/// A room of the fake server (version 11): its create event, the owner's join, power levels
/// giving the owner 100, a public join rule, mallory's join, and a power-levels event mallory
/// forged (her power 0 cannot change them) that gives her 100. Returns the room id and the
/// events by name.
fn fake_room(gap: &Gap) -> (String, std::collections::HashMap<&'static str, (String, Value)>) {
    let room_id = format!("!fake:{}", gap.peer.name);
    let owner = format!("@owner:{}", gap.peer.name);
    let mallory = format!("@mallory:{}", gap.peer.name);
    let sign = |object: Value| {
        let mut object: CanonicalJsonObject = serde_json::from_value(object).unwrap();
        let rules = RoomVersionId::V11.rules().unwrap();
        ruma::signatures::hash_and_sign_event(&gap.peer.name, &gap.key.keypair, &mut object, &rules.redaction).unwrap();
        let hash = ruma::signatures::reference_hash(&object, &rules).unwrap();
        (format!("${hash}"), serde_json::to_value(&object).unwrap())
    };
    let event = |kind: &str, sender: &str, key: &str, content: Value, auth: &[&str], prev: &str, depth: u64| {
        sign(json!({
            "type": kind, "state_key": key, "sender": sender, "room_id": room_id, "content": content,
            "auth_events": auth, "prev_events": if prev.is_empty() { vec![] } else { vec![prev] },
            "depth": depth, "origin_server_ts": 1_700_000_000_000u64 + depth,
        }))
    };
    let mut events = std::collections::HashMap::new();
    let create = event("m.room.create", &owner, "", json!({"room_version": "11"}), &[], "", 1);
    let c = create.0.clone();
    let member = event(
        "m.room.member",
        &owner,
        &owner,
        json!({"membership": "join"}),
        &[&c],
        &c,
        2,
    );
    let m = member.0.clone();
    let power = event(
        "m.room.power_levels",
        &owner,
        "",
        json!({"users": {owner.clone(): 100}}),
        &[&c, &m],
        &m,
        3,
    );
    let p = power.0.clone();
    let rule = event(
        "m.room.join_rules",
        &owner,
        "",
        json!({"join_rule": "public"}),
        &[&c, &m, &p],
        &p,
        4,
    );
    let j = rule.0.clone();
    let joined = event(
        "m.room.member",
        &mallory,
        &mallory,
        json!({"membership": "join"}),
        &[&c, &j, &p],
        &j,
        5,
    );
    let mm = joined.0.clone();
    let forged = event(
        "m.room.power_levels",
        &mallory,
        "",
        json!({"users": {owner.clone(): 100, mallory.clone(): 100}}),
        &[&c, &p, &mm],
        &mm,
        6,
    );
    for (name, e) in [
        ("create", create),
        ("owner", member),
        ("power", power),
        ("rule", rule),
        ("mallory", joined),
        ("forged", forged),
    ] {
        events.insert(name, e);
    }
    (room_id, events)
}

/// A server that answers `send_join` with a state holding an event its own auth events do not
/// allow (mallory's forged power levels) gets no room: the join fails, and nothing of its
/// state is taken. The same server answering honestly lets the user in with the real power
/// levels.
#[test]
fn a_join_answer_with_a_forged_state_event_is_refused() {
    let gap = gap_scene("127.0.0.105", "127.0.0.106");
    let (room_id, events) = fake_room(&gap);
    let id = |name: &str| events[name].0.clone();
    let pdu = |name: &str| events[name].1.clone();
    let alice = format!("@alice:{}", gap.a.server_name);
    let template = json!({
        "room_version": "11",
        "event": {
            "type": "m.room.member", "state_key": alice, "sender": alice, "room_id": room_id,
            "content": {"membership": "join"}, "prev_events": [id("forged")],
            "auth_events": [id("create"), id("rule"), id("power")], "depth": 7,
            "origin_server_ts": 1_700_000_000_100u64, "origin": gap.a.server_name,
        },
    });
    gap.peer
        .answer_path("/_matrix/federation/v1/make_join/", &template.to_string());
    let chain: Vec<Value> = ["create", "owner", "power", "rule", "mallory"]
        .iter()
        .map(|n| pdu(n))
        .collect();
    let answer = |power: &str| {
        let state: Vec<Value> = ["create", "owner", power, "rule", "mallory"]
            .iter()
            .map(|n| pdu(n))
            .collect();
        json!({
            "origin": gap.peer.name, "members_omitted": false, "servers_in_room": [gap.peer.name],
            "state": state, "auth_chain": chain,
        })
        .to_string()
    };
    gap.peer
        .answer_path("/_matrix/federation/v2/send_join/", &answer("forged"));
    let join = format!("/_matrix/client/v3/join/{room_id}?via={}", gap.peer.name);
    let refused = gap.alice.post(&join, json!({}));
    assert_eq!(refused.status, 403, "{}", refused.text);
    assert!(refused.text.contains(&id("forged")), "{}", refused.text);
    let rooms = gap.alice.get("/_matrix/client/v3/joined_rooms");
    assert!(!rooms.ok()["joined_rooms"].as_array().unwrap().contains(&json!(room_id)));

    gap.peer
        .answer_path("/_matrix/federation/v2/send_join/", &answer("power"));
    gap.alice.post(&join, json!({})).ok();
    let power = gap.alice.get(&format!(
        "/_matrix/client/v3/rooms/{room_id}/state/m.room.power_levels/"
    ));
    assert_eq!(power.ok()["users"], json!({format!("@owner:{}", gap.peer.name): 100}));
}
