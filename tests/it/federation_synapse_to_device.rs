//! To-device messages and one-time keys with a real Synapse (`support::synapse`) on loopback:
//! `m.direct_to_device` both ways (to one device and to `*`, in order, once), and a Synapse
//! user's one-time key claimed through Hearth handed out once. Skipped with a note when the
//! Synapse venv is missing, unless `HEARTH_TEST_REQUIRE_SYNAPSE=1`.
//!
//! As in `federation_to_device`, "nothing more arrived" is a marker message sent last: one
//! sender's messages arrive in order.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::{
    federation_synapse::signed_keys,
    support::{
        Client, TestServer,
        federation::{TestCa, federated_server},
        synapse::{self, Synapse},
    },
};

/// A Hearth server and a Synapse on `ip` (this file's addresses: 127.0.0.151 to 159).
fn servers(ip: &str) -> Option<(TestCa, TestServer, Synapse)> {
    let python = synapse::python()?;
    let ca = TestCa::new();
    let mut hearth = federated_server(&ca, ip, &[]);
    hearth.launch();
    let synapse = Synapse::start(&python, &ca, ip);
    Some((ca, hearth, synapse))
}

/// Syncs `client` (for up to 90 s, acknowledging as it goes) until a to-device message whose
/// content has `"marker": marker` arrived; the messages before it, marker included.
fn until_marker(client: &Client, since: &mut Option<String>, marker: &str) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut got: Vec<Value> = Vec::new();
    loop {
        if let Some(at) = got.iter().position(|e| e["content"]["marker"] == marker) {
            got.truncate(at + 1);
            return got;
        }
        assert!(Instant::now() < deadline, "no marker {marker}; got {got:?}");
        let path = match since {
            Some(token) => format!("/_matrix/client/v3/sync?timeout=1000&since={token}"),
            None => "/_matrix/client/v3/sync?timeout=0".to_owned(),
        };
        let body = client.get(&path).ok().clone();
        *since = body["next_batch"].as_str().map(str::to_owned);
        got.extend(body["to_device"]["events"].as_array().cloned().unwrap_or_default());
    }
}

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
fn to_device_messages_cross_to_synapse_and_back() {
    let Some((_ca, hearth, synapse)) = servers("127.0.0.151") else {
        return;
    };
    let alice = hearth.user("alice", "secret-password");
    let mut alice2 = hearth.client();
    alice2.login("alice", "secret-password");
    let bob = synapse.user("bob", "secret-password");
    let (alice_id, bob_id) = (alice.uid(), bob.uid());
    let (alice_device, bob_device) = (alice.device_id.clone().unwrap(), bob.device_id.clone().unwrap());
    let (mut alice_since, mut alice2_since, mut bob_since) = (None, None, None);
    start_sync(&alice, &mut alice_since);
    start_sync(&alice2, &mut alice2_since);
    start_sync(&bob, &mut bob_since);

    // Hearth → Synapse: to one device, then `*`, a retried transaction sent once.
    for n in 0..3 {
        send(&alice, &format!("h{n}"), json!({ &bob_id: { &bob_device: {"n": n} } }));
    }
    send(&alice, "h0", json!({ &bob_id: { &bob_device: {"n": 0} } }));
    send(&alice, "hall", json!({ &bob_id: { "*": {"n": 10} } }));
    send(&alice, "hend", json!({ &bob_id: { &bob_device: {"marker": "h"} } }));
    let got = until_marker(&bob, &mut bob_since, "h");
    assert_eq!(numbers(&got), vec![0, 1, 2, 10], "{got:?}");
    assert_eq!(got[0]["sender"], alice_id.as_str());
    assert_eq!(got[0]["type"], "m.test");

    // Synapse → Hearth: to one device, then `*` (both of alice's devices).
    for n in 0..3 {
        send(
            &bob,
            &format!("s{n}"),
            json!({ &alice_id: { &alice_device: {"n": n} } }),
        );
    }
    send(&bob, "sall", json!({ &alice_id: { "*": {"n": 10} } }));
    send(&bob, "send", json!({ &alice_id: { "*": {"marker": "s"} } }));
    let got = until_marker(&alice, &mut alice_since, "s");
    assert_eq!(numbers(&got), vec![0, 1, 2, 10], "{got:?}");
    assert_eq!(got[0]["sender"], bob_id.as_str());
    let got = until_marker(&alice2, &mut alice2_since, "s");
    assert_eq!(numbers(&got), vec![10], "only `*` reaches the second device: {got:?}");

    // Nothing arrives twice afterwards.
    send(
        &bob,
        "again",
        json!({ &alice_id: { &alice_device: {"marker": "again"} } }),
    );
    assert_eq!(
        numbers(&until_marker(&alice, &mut alice_since, "again")),
        Vec::<u64>::new()
    );
}

/// An initial sync, to start from a token.
fn start_sync(client: &Client, since: &mut Option<String>) {
    let body = client.get("/_matrix/client/v3/sync?timeout=0").ok().clone();
    *since = body["next_batch"].as_str().map(str::to_owned);
}

#[test]
fn a_synapse_users_one_time_key_claimed_through_hearth_is_handed_out_once() {
    let Some((_ca, hearth, synapse)) = servers("127.0.0.152") else {
        return;
    };
    let alice = hearth.user("alice", "secret-password");
    let bob = synapse.user("bob", "secret-password");
    let (bob_id, bob_device) = (bob.uid(), bob.device_id.clone().unwrap());
    let (keys, otk) = signed_keys(&bob);
    bob.post(
        "/_matrix/client/v3/keys/upload",
        json!({"device_keys": keys, "one_time_keys": {"signed_curve25519:AAAAAQ": otk}}),
    )
    .ok();
    let claim = |client: &Client| {
        client
            .post(
                "/_matrix/client/v3/keys/claim",
                json!({"one_time_keys": {bob_id.clone(): {bob_device.clone(): "signed_curve25519"}}}),
            )
            .ok()
            .clone()
    };
    let first = claim(&alice);
    assert_eq!(
        first["one_time_keys"][&bob_id][&bob_device]["signed_curve25519:AAAAAQ"], otk,
        "{first:#}"
    );
    assert!(first["failures"].as_object().is_none_or(|f| f.is_empty()), "{first:#}");
    // Claimed: neither a second claim through Hearth nor one on Synapse gets it again.
    let again = hearth.user("carol", "secret-password");
    for answer in [claim(&alice), claim(&again), claim(&bob)] {
        assert!(
            answer["one_time_keys"][&bob_id][&bob_device]
                .as_object()
                .is_none_or(|k| k.is_empty()),
            "{answer:#}"
        );
    }
}
