//! Device lists across servers with a real Synapse (`support::synapse`) on loopback, both
//! directions: a Synapse user's new device (a new login with keys) shows in a Hearth user's
//! `/sync` `device_lists.changed` and `keys/query`, and a Hearth user's new device shows in a
//! Synapse user's; cross-signing keys uploaded on either side reach the other. Skipped with a note when the Synapse venv is missing, unless
//! `HEARTH_TEST_REQUIRE_SYNAPSE=1`.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{
    Client, TestServer, enc,
    federation::{TestCa, federated_server},
    synapse::{self, Synapse},
};

/// A Hearth server and a Synapse on `ip` (127.0.0.231 to 239 are this file's), trusting the
/// same CA; `None` when Synapse is not installed (and not required).
fn servers(ip: &str) -> Option<(TestCa, TestServer, Synapse)> {
    let python = synapse::python()?;
    let ca = TestCa::new();
    let mut hearth = federated_server(&ca, ip, &[]);
    hearth.launch();
    let synapse = Synapse::start(&python, &ca, ip);
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

/// Uploads self-signed device keys for `client`'s device.
fn upload_device_keys(client: &Client) {
    use ruma::signatures::{Ed25519KeyPair, sign_json};
    let device = client.device_id.clone().unwrap();
    let doc = Ed25519KeyPair::generate();
    let pair = Ed25519KeyPair::from_der(&doc, device.clone()).unwrap();
    let public = ruma::serde::Base64::<ruma::serde::base64::Standard, _>::new(pair.public_key().to_vec()).encode();
    let mut object: ruma::CanonicalJsonObject = serde_json::from_value(json!({
        "user_id": client.uid(),
        "device_id": device,
        "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
        "keys": {
            format!("curve25519:{device}"): "Y3VydmUyNTUxOWtleWN1cnZlMjU1MTlrZXljdXJ2ZTI1",
            format!("ed25519:{device}"): public,
        },
    }))
    .unwrap();
    sign_json(&client.uid(), &pair, &mut object).unwrap();
    client
        .post("/_matrix/client/v3/keys/upload", json!({"device_keys": object}))
        .ok();
}

fn sync(c: &Client, since: Option<&str>) -> Value {
    let mut path = "/_matrix/client/v3/sync?timeout=0".to_owned();
    if let Some(since) = since {
        path.push_str(&format!("&since={}", enc(since)));
    }
    c.get(&path).ok().clone()
}

fn next_batch(c: &Client) -> String {
    sync(c, None)["next_batch"].as_str().unwrap().to_owned()
}

/// Whether `user` shows in `device_lists.changed` of a sync of `c` from `since`.
fn sees_change(c: &Client, since: &str, user: &str) -> bool {
    eventually(|| {
        sync(c, Some(since))["device_lists"]["changed"]
            .as_array()
            .is_some_and(|a| a.iter().any(|u| u == user))
    })
}

fn has_device(c: &Client, user: &str, device: &str) -> bool {
    let answer = c
        .post("/_matrix/client/v3/keys/query", json!({"device_keys": {user: []}}))
        .ok()
        .clone();
    answer["device_keys"][user][device]["device_id"] == device
}

/// A room of Hearth's alice that Synapse's bob joined: `(alice, bob)`.
fn shared_room(hearth: &TestServer, synapse: &Synapse) -> (Client, Client) {
    let alice = hearth.user("alice", "secret-password");
    let bob = synapse.user("bob", "secret-password");
    let room = alice.post("/_matrix/client/v3/createRoom", json!({"preset": "public_chat"}));
    let room_id = room.ok()["room_id"].as_str().unwrap().to_owned();
    bob.post(
        &format!("/_matrix/client/v3/join/{room_id}?server_name={}", hearth.server_name),
        json!({}),
    )
    .ok();
    assert!(eventually(|| {
        let members = alice.get(&format!("/_matrix/client/v3/rooms/{room_id}/joined_members"));
        members.ok()["joined"].get(bob.uid()).is_some()
    }));
    (alice, bob)
}

#[test]
fn a_synapse_users_new_device_shows_in_hearths_sync_and_keys_query() {
    let Some((_ca, hearth, synapse)) = servers("127.0.0.231") else {
        return;
    };
    let (alice, bob) = shared_room(&hearth, &synapse);
    let bob_id = bob.uid();
    upload_device_keys(&bob);
    assert!(eventually(|| has_device(
        &alice,
        &bob_id,
        bob.device_id.as_deref().unwrap()
    )));
    let since = next_batch(&alice);

    // Bob logs in on Synapse a second time: a new device, with keys.
    let mut bob2 = synapse.client();
    bob2.login("bob", "secret-password");
    upload_device_keys(&bob2);
    let second = bob2.device_id.clone().unwrap();
    let seen = sees_change(&alice, &since, &bob_id);
    if !seen {
        synapse.print_log();
    }
    assert!(seen, "bob's new device is in alice's device_lists.changed");
    assert!(eventually(|| has_device(&alice, &bob_id, &second)));
}

#[test]
fn a_hearth_users_new_device_shows_in_synapses_sync_and_keys_query() {
    let Some((_ca, hearth, synapse)) = servers("127.0.0.232") else {
        return;
    };
    let (alice, bob) = shared_room(&hearth, &synapse);
    let alice_id = alice.uid();
    upload_device_keys(&alice);
    assert!(eventually(|| has_device(
        &bob,
        &alice_id,
        alice.device_id.as_deref().unwrap()
    )));
    let since = next_batch(&bob);

    let mut alice2 = hearth.client();
    alice2.login("alice", "secret-password");
    upload_device_keys(&alice2);
    let second = alice2.device_id.clone().unwrap();
    let seen = sees_change(&bob, &since, &alice_id);
    if !seen {
        synapse.print_log();
    }
    assert!(seen, "alice's new device is in bob's device_lists.changed on Synapse");
    assert!(eventually(|| has_device(&bob, &alice_id, &second)));
}

/// Uploads master, self-signing and user-signing keys for `client` (with password auth when the
/// server asks for it); returns the master key's public part.
fn upload_cross_signing(client: &Client, password: &str) -> String {
    use ruma::signatures::{Ed25519KeyPair, sign_json};
    let user = client.uid();
    let make = || {
        let doc = Ed25519KeyPair::generate();
        let probe = Ed25519KeyPair::from_der(&doc, "x".into()).unwrap();
        let public = ruma::serde::Base64::<ruma::serde::base64::Standard, _>::new(probe.public_key().to_vec()).encode();
        (Ed25519KeyPair::from_der(&doc, public.clone()).unwrap(), public)
    };
    let (master, master_public) = make();
    let (_, ssk_public) = make();
    let (_, usk_public) = make();
    let key = |public: &str, usage: &str| json!({"user_id": user, "usage": [usage], "keys": {format!("ed25519:{public}"): public}});
    let signed = |value: Value| {
        let mut object: ruma::CanonicalJsonObject = serde_json::from_value(value).unwrap();
        sign_json(&user, &master, &mut object).unwrap();
        serde_json::to_value(object).unwrap()
    };
    let mut body = json!({
        "master_key": key(&master_public, "master"),
        "self_signing_key": signed(key(&ssk_public, "self_signing")),
        "user_signing_key": signed(key(&usk_public, "user_signing")),
    });
    let path = "/_matrix/client/v3/keys/device_signing/upload";
    let first = client.post(path, body.clone());
    if first.status == 401 {
        let session = first.body["session"].as_str().map(str::to_owned);
        body["auth"] = client.password_auth(password, session.as_deref());
        client.post(path, body).ok();
    } else {
        first.ok();
    }
    master_public
}

fn master_key_of(c: &Client, user: &str) -> Option<String> {
    let answer = c
        .post("/_matrix/client/v3/keys/query", json!({"device_keys": {user: []}}))
        .ok()
        .clone();
    answer["master_keys"][user]["keys"]
        .as_object()
        .and_then(|k| k.values().next())
        .and_then(|v| v.as_str().map(str::to_owned))
}

#[test]
fn cross_signing_keys_cross_both_ways_with_synapse() {
    let Some((_ca, hearth, synapse)) = servers("127.0.0.233") else {
        return;
    };
    let (alice, bob) = shared_room(&hearth, &synapse);
    let (alice_id, bob_id) = (alice.uid(), bob.uid());
    upload_device_keys(&alice);
    upload_device_keys(&bob);
    // Each side has fetched the other's list once.
    assert!(eventually(|| has_device(
        &alice,
        &bob_id,
        bob.device_id.as_deref().unwrap()
    )));
    assert!(eventually(|| has_device(
        &bob,
        &alice_id,
        alice.device_id.as_deref().unwrap()
    )));

    let since = next_batch(&bob);
    let alice_master = upload_cross_signing(&alice, "secret-password");
    assert!(sees_change(&bob, &since, &alice_id));
    assert!(eventually(
        || master_key_of(&bob, &alice_id).as_deref() == Some(alice_master.as_str())
    ));

    let since = next_batch(&alice);
    let bob_master = upload_cross_signing(&bob, "secret-password");
    let seen = sees_change(&alice, &since, &bob_id);
    if !seen {
        synapse.print_log();
    }
    assert!(seen, "bob's cross-signing keys are in alice's device_lists.changed");
    assert!(eventually(
        || master_key_of(&alice, &bob_id).as_deref() == Some(bob_master.as_str())
    ));
}
