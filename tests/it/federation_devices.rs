//! Device lists and cross-signing keys across servers (federation, part 2), between Hearth
//! servers on loopback: a new device, its keys, a deleted device and cross-signing keys of a
//! user of one server reach the users of the other who share a room (`/sync`
//! `device_lists.changed`, `keys/query` answered from the cache), a gap in a user's `prev_id`
//! chain makes the receiver fetch the whole list, a server cannot write another server's
//! users' device lists, and a server that does not answer a `keys/query` is named under
//! `failures`.

use std::time::Duration;

use ruma::{
    CanonicalJsonObject,
    serde::{Base64, base64::Standard},
    signatures::{Ed25519KeyPair, sign_json},
};
use serde_json::{Value, json};

use crate::support::{
    Client, TestServer, enc,
    federation::{TestCa, federated_server, signing_key_of, tls_request, x_matrix},
};

/// An ed25519 key pair (a device's, key id `ed25519:{device}`, or a cross-signing key's, key
/// id `ed25519:{public key}`).
struct Signer {
    pair: Ed25519KeyPair,
    public: String,
}

impl Signer {
    fn device(device_id: &str) -> Signer {
        let doc = Ed25519KeyPair::generate();
        let pair = Ed25519KeyPair::from_der(&doc, device_id.to_owned()).unwrap();
        let public = Base64::<Standard, _>::new(pair.public_key().to_vec()).encode();
        Signer { pair, public }
    }

    fn cross_signing() -> Signer {
        let doc = Ed25519KeyPair::generate();
        let probe = Ed25519KeyPair::from_der(&doc, "x".into()).unwrap();
        let public = Base64::<Standard, _>::new(probe.public_key().to_vec()).encode();
        let pair = Ed25519KeyPair::from_der(&doc, public.clone()).unwrap();
        Signer { pair, public }
    }

    fn sign(&self, user: &str, value: &Value) -> Value {
        let mut object: CanonicalJsonObject = serde_json::from_value(value.clone()).unwrap();
        sign_json(user, &self.pair, &mut object).unwrap();
        serde_json::to_value(object).unwrap()
    }
}

/// Self-signed device keys for `device` of `user`.
fn device_keys(user: &str, device: &str) -> Value {
    let signer = Signer::device(device);
    let keys = json!({
        "user_id": user,
        "device_id": device,
        "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
        "keys": {
            format!("curve25519:{device}"): "Y3VydmUyNTUxOWtleWN1cnZlMjU1MTlrZXljdXJ2ZTI1",
            format!("ed25519:{device}"): signer.public,
        },
    });
    signer.sign(user, &keys)
}

/// Uploads device keys for the client's device.
fn upload_device_keys(c: &Client) {
    let keys = device_keys(&c.uid(), c.device_id.as_deref().unwrap());
    c.post("/_matrix/client/v3/keys/upload", json!({"device_keys": keys}))
        .ok();
}

fn query(c: &Client, user: &str) -> Value {
    c.post("/_matrix/client/v3/keys/query", json!({"device_keys": {user: []}}))
        .ok()
        .clone()
}

/// The device ids `keys/query` gives for `user`.
fn queried_devices(c: &Client, user: &str) -> Vec<String> {
    let answer = query(c, user);
    let mut devices: Vec<String> = answer["device_keys"][user]
        .as_object()
        .map(|d| d.keys().cloned().collect())
        .unwrap_or_default();
    devices.sort();
    devices
}

fn sync(c: &Client, since: Option<&str>) -> Value {
    let mut path = "/_matrix/client/v3/sync?timeout=0".to_owned();
    if let Some(since) = since {
        path.push_str(&format!("&since={}", enc(since)));
    }
    c.get(&path).ok().clone()
}

fn changed(body: &Value) -> Vec<String> {
    body["device_lists"]["changed"]
        .as_array()
        .map(|a| a.iter().filter_map(|u| u.as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

/// Polls `check` every 100 ms for up to 30 s; true once it holds.
fn eventually(mut check: impl FnMut() -> bool) -> bool {
    for _ in 0..300 {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// Syncs from `since` until `user` shows in `device_lists.changed`; true if it did.
fn sees_change(c: &Client, since: &str, user: &str) -> bool {
    eventually(|| changed(&sync(c, Some(since))).iter().any(|u| u == user))
}

/// Two servers with a user each, both joined to a room of A: `(a, b, alice, bob, room)`.
fn shared_room(ca: &TestCa, ip_a: &str, ip_b: &str) -> (TestServer, TestServer, Client, Client, String) {
    let mut a = federated_server(ca, ip_a, &[]);
    let mut b = federated_server(ca, ip_b, &[]);
    a.launch();
    b.launch();
    let alice = a.user("alice", "secret-password");
    let bob = b.user("bob", "secret-password");
    let room = alice.post("/_matrix/client/v3/createRoom", json!({"preset": "public_chat"}));
    let room_id = room.ok()["room_id"].as_str().unwrap().to_owned();
    bob.post(
        &format!("/_matrix/client/v3/join/{room_id}?via={}", a.server_name),
        json!({}),
    )
    .ok();
    assert!(eventually(|| {
        let members = alice.get(&format!("/_matrix/client/v3/rooms/{room_id}/joined_members"));
        members.ok()["joined"].get(bob.uid()).is_some()
    }));
    (a, b, alice, bob, room_id)
}

/// Sends a transaction of `edus` to `to` as `from` (signed with `from`'s key); the status.
fn send_edus(ca: &TestCa, from: &TestServer, to: &TestServer, txn: &str, edus: Value) -> u16 {
    let body = json!({
        "origin": from.server_name,
        "origin_server_ts": 1,
        "pdus": [],
        "edus": edus,
    });
    let uri = format!("/_matrix/federation/v1/send/{txn}");
    let auth = x_matrix(
        &signing_key_of(from),
        &from.server_name,
        &to.server_name,
        "PUT",
        &uri,
        Some(&body),
    );
    let ip = to.server_name.split(':').next().unwrap();
    let bytes = serde_json::to_vec(&body).unwrap();
    tls_request(
        ca.client_config(),
        &to.server_name,
        ip,
        &to.server_name,
        "PUT",
        &uri,
        &[("Authorization", &auth), ("Content-Type", "application/json")],
        Some(&bytes),
    )
    .unwrap()
    .status
}

/// `GET user/devices/{user}` of `server`, asked as `asker`.
fn user_devices(ca: &TestCa, asker: &TestServer, server: &TestServer, user: &str) -> Value {
    let uri = format!("/_matrix/federation/v1/user/devices/{}", enc(user));
    let auth = x_matrix(
        &signing_key_of(asker),
        &asker.server_name,
        &server.server_name,
        "GET",
        &uri,
        None,
    );
    let ip = server.server_name.split(':').next().unwrap();
    let answer = tls_request(
        ca.client_config(),
        &server.server_name,
        ip,
        &server.server_name,
        "GET",
        &uri,
        &[("Authorization", &auth)],
        None,
    )
    .unwrap();
    assert_eq!(answer.status, 200, "{}", answer.body);
    answer.body
}

fn device_update(user: &str, device: &str, stream_id: u64, prev_id: &[u64]) -> Value {
    json!({
        "edu_type": "m.device_list_update",
        "content": {
            "user_id": user,
            "device_id": device,
            "stream_id": stream_id,
            "prev_id": prev_id,
            "keys": device_keys(user, device),
        },
    })
}

#[test]
fn a_device_added_and_deleted_on_one_server_shows_in_the_others_sync_and_keys_query() {
    let ca = TestCa::new();
    let (a, mut b, alice, bob, _room) = shared_room(&ca, "127.0.0.211", "127.0.0.212");
    let bob_id = bob.uid();
    upload_device_keys(&bob);
    let first = bob.device_id.clone().unwrap();
    // Alice's first query goes to B; from then on B's updates keep A's copy fresh.
    assert!(eventually(|| queried_devices(&alice, &bob_id) == vec![first.clone()]));
    let since = sync(&alice, None)["next_batch"].as_str().unwrap().to_owned();

    // Bob logs in on a second device and uploads its keys.
    let mut bob2 = b.client();
    bob2.login("bob", "secret-password");
    upload_device_keys(&bob2);
    let second = bob2.device_id.clone().unwrap();
    assert!(
        sees_change(&alice, &since, &bob_id),
        "bob's new device is in alice's sync"
    );
    let mut both = vec![first.clone(), second.clone()];
    both.sort();
    assert!(
        eventually(|| queried_devices(&alice, &bob_id) == both),
        "{} {:?} {:?}",
        query(&alice, &bob_id),
        a.logged_errors(),
        b.logged_errors()
    );
    let answer = query(&alice, &bob_id);
    assert_eq!(
        answer["device_keys"][&bob_id][&second]["device_id"],
        second.as_str(),
        "{answer}"
    );
    assert!(answer["failures"].as_object().is_none_or(|f| f.is_empty()), "{answer}");

    // The second device is deleted: it disappears on A too.
    let since = sync(&alice, None)["next_batch"].as_str().unwrap().to_owned();
    let path = format!("/_matrix/client/v3/devices/{second}");
    let start = bob.uia_start("DELETE", &path, json!({}));
    let session = start["session"].as_str().unwrap().to_owned();
    bob.delete(
        &path,
        json!({"auth": bob.password_auth("secret-password", Some(&session))}),
    )
    .ok();
    assert!(sees_change(&alice, &since, &bob_id), "the deletion is in alice's sync");
    assert!(eventually(|| queried_devices(&alice, &bob_id) == vec![first.clone()]));

    // With B gone, A still answers from its copy, with no failure.
    b.stop();
    let answer = query(&alice, &bob_id);
    let devices: Vec<&String> = answer["device_keys"][&bob_id].as_object().unwrap().keys().collect();
    assert_eq!(devices, vec![&first], "{answer}");
    assert!(answer["failures"].as_object().is_none_or(|f| f.is_empty()), "{answer}");
    drop(a);
}

#[test]
fn cross_signing_keys_uploaded_on_one_server_reach_the_other() {
    let ca = TestCa::new();
    let (_a, mut b, alice, bob, _room) = shared_room(&ca, "127.0.0.213", "127.0.0.214");
    let bob_id = bob.uid();
    upload_device_keys(&bob);
    assert!(eventually(|| queried_devices(&alice, &bob_id).len() == 1));
    let since = sync(&alice, None)["next_batch"].as_str().unwrap().to_owned();

    let (master, ssk, usk) = (
        Signer::cross_signing(),
        Signer::cross_signing(),
        Signer::cross_signing(),
    );
    let key = |s: &Signer, usage: &str| json!({"user_id": bob_id, "usage": [usage], "keys": {format!("ed25519:{}", s.public): s.public}});
    bob.post(
        "/_matrix/client/v3/keys/device_signing/upload",
        json!({
            "master_key": key(&master, "master"),
            "self_signing_key": master.sign(&bob_id, &key(&ssk, "self_signing")),
            "user_signing_key": master.sign(&bob_id, &key(&usk, "user_signing")),
        }),
    )
    .ok();
    assert!(sees_change(&alice, &since, &bob_id));
    let master_id = format!("ed25519:{}", master.public);
    let ssk_id = format!("ed25519:{}", ssk.public);
    assert!(eventually(|| {
        let answer = query(&alice, &bob_id);
        answer["master_keys"][&bob_id]["keys"][&master_id] == master.public.as_str()
            && answer["self_signing_keys"][&bob_id]["keys"][&ssk_id] == ssk.public.as_str()
    }));
    // Answered from A's copy: the same with B stopped; the user-signing key never crosses.
    b.stop();
    let answer = query(&alice, &bob_id);
    assert_eq!(
        answer["master_keys"][&bob_id]["keys"][&master_id],
        master.public.as_str(),
        "{answer}"
    );
    assert!(answer["user_signing_keys"].get(&bob_id).is_none(), "{answer}");
}

#[test]
fn an_update_in_sequence_is_applied_and_a_gap_makes_the_receiver_fetch_the_whole_list() {
    let ca = TestCa::new();
    let (a, b, alice, bob, _room) = shared_room(&ca, "127.0.0.215", "127.0.0.216");
    let bob_id = bob.uid();
    upload_device_keys(&bob);
    let real = bob.device_id.clone().unwrap();
    assert!(eventually(|| queried_devices(&alice, &bob_id) == vec![real.clone()]));
    // Wait until A's copy is at B's current stream_id (A holds it once its resync is done).
    let stream_id = user_devices(&ca, &a, &b, &bob_id)["stream_id"].as_u64().unwrap();
    assert!(stream_id > 0);

    // The next update of the chain (as B would send it) is applied as is.
    let since = sync(&alice, None)["next_batch"].as_str().unwrap().to_owned();
    let next = device_update(&bob_id, "CHAINED", stream_id + 1, &[stream_id]);
    // A's resync may still be in flight: send until the device shows (same content each time).
    let mut txn = 0;
    assert!(eventually(|| {
        txn += 1;
        assert_eq!(send_edus(&ca, &b, &a, &format!("chain{txn}"), json!([next])), 200);
        queried_devices(&alice, &bob_id).contains(&"CHAINED".to_owned())
    }));
    assert!(sees_change(&alice, &since, &bob_id));

    // An update whose prev_id A never saw: A fetches B's list, which has neither the gapped
    // device nor the chained one, and holds it at B's stream_id: an update chained on that
    // one is then applied (while A's copy is stale it would only start another resync).
    let gap = device_update(&bob_id, "AFTERGAP", stream_id + 10, &[stream_id + 9]);
    assert_eq!(send_edus(&ca, &b, &a, "gap", json!([gap])), 200);
    let after = device_update(&bob_id, "AFTERRESYNC", stream_id + 1, &[stream_id]);
    let mut expected = vec![real.clone(), "AFTERRESYNC".to_owned()];
    expected.sort();
    let mut txn = 0;
    assert!(
        eventually(|| {
            txn += 1;
            assert_eq!(send_edus(&ca, &b, &a, &format!("after{txn}"), json!([after])), 200);
            queried_devices(&alice, &bob_id) == expected
        }),
        "after the resync A holds B's real list: {:?}",
        queried_devices(&alice, &bob_id)
    );
}

#[test]
fn a_server_cannot_update_the_device_lists_of_another_servers_users() {
    let ca = TestCa::new();
    let (a, b, alice, bob, room_id) = shared_room(&ca, "127.0.0.217", "127.0.0.218");
    let mut m = federated_server(&ca, "127.0.0.219", &[]);
    m.launch();
    let mallory = m.user("mallory", "secret-password");
    mallory
        .post(
            &format!("/_matrix/client/v3/join/{room_id}?via={}", a.server_name),
            json!({}),
        )
        .ok();
    let bob_id = bob.uid();
    upload_device_keys(&bob);
    let real = bob.device_id.clone().unwrap();
    assert!(eventually(|| queried_devices(&alice, &bob_id) == vec![real.clone()]));
    let stream_id = user_devices(&ca, &a, &b, &bob_id)["stream_id"].as_u64().unwrap();

    // M, in the room too, claims a new device and a new master key for bob: both ignored.
    let forged_master = Signer::cross_signing();
    let forged = json!([
        device_update(&bob_id, "FORGED", stream_id + 1, &[stream_id]),
        {"edu_type": "m.signing_key_update", "content": {
            "user_id": bob_id,
            "master_key": {"user_id": bob_id, "usage": ["master"],
                "keys": {format!("ed25519:{}", forged_master.public): forged_master.public}},
        }},
    ]);
    assert_eq!(send_edus(&ca, &m, &a, "forged", forged), 200);
    // The same update from B itself is applied: once it shows, the forged one had its turn.
    let honest = device_update(&bob_id, "HONEST", stream_id + 1, &[stream_id]);
    let mut txn = 0;
    assert!(eventually(|| {
        txn += 1;
        assert_eq!(send_edus(&ca, &b, &a, &format!("honest{txn}"), json!([honest])), 200);
        queried_devices(&alice, &bob_id).contains(&"HONEST".to_owned())
    }));
    let answer = query(&alice, &bob_id);
    assert!(answer["device_keys"][&bob_id].get("FORGED").is_none(), "{answer}");
    assert!(answer["master_keys"].get(&bob_id).is_none(), "{answer}");
}

#[test]
fn a_server_that_does_not_answer_a_key_query_or_claim_in_time_is_named_under_failures() {
    let ca = TestCa::new();
    let mut a = federated_server(&ca, "127.0.0.220", &[]);
    a.launch();
    let alice = a.user("alice", "secret-password");
    // A listener that never answers (connections wait in its backlog).
    let silent = std::net::TcpListener::bind("127.0.0.221:0").unwrap();
    let silent_name = silent.local_addr().unwrap().to_string();
    let user = format!("@nobody:{silent_name}");
    let answer = alice
        .post(
            "/_matrix/client/v3/keys/query",
            json!({"device_keys": {user.clone(): []}, "timeout": 1000}),
        )
        .ok()
        .clone();
    assert!(answer["failures"].get(&silent_name).is_some(), "{answer}");
    assert!(answer["device_keys"].get(&user).is_none(), "{answer}");
    // A claim too.
    let answer = alice
        .post(
            "/_matrix/client/v3/keys/claim",
            json!({"one_time_keys": {user.clone(): {"DEVICE": "signed_curve25519"}}, "timeout": 1000}),
        )
        .ok()
        .clone();
    assert_eq!(answer["failures"][&silent_name]["status"], 504, "{answer}");
    assert!(answer["one_time_keys"].get(&user).is_none(), "{answer}");
    drop(silent);
}

#[test]
fn a_remote_user_who_leaves_the_last_shared_room_is_reported_left_and_no_longer_cached() {
    let ca = TestCa::new();
    let (_a, mut b, alice, bob, room_id) = shared_room(&ca, "127.0.0.222", "127.0.0.223");
    let bob_id = bob.uid();
    upload_device_keys(&bob);
    let real = bob.device_id.clone().unwrap();
    assert!(eventually(|| queried_devices(&alice, &bob_id) == vec![real.clone()]));
    let since = sync(&alice, None)["next_batch"].as_str().unwrap().to_owned();

    bob.post(&format!("/_matrix/client/v3/rooms/{room_id}/leave"), json!({}))
        .ok();
    assert!(eventually(|| {
        sync(&alice, Some(&since))["device_lists"]["left"]
            .as_array()
            .is_some_and(|l| l.iter().any(|u| u == bob_id.as_str()))
    }));
    // Not answered from a copy any more: with B gone, B is named under failures.
    b.stop();
    let answer = query(&alice, &bob_id);
    assert!(answer["failures"].get(&b.server_name).is_some(), "{answer}");
    assert!(answer["device_keys"].get(&bob_id).is_none(), "{answer}");
}
