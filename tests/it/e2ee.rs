//! End-to-end encryption over HTTP: device keys signed with real ed25519 keys, one-time and
//! fallback keys (claimed exactly once, also concurrently), device-list changes in `/sync` and
//! `keys/changes`, to-device messages, cross-signing with forged signatures, key backup, and
//! the refusals of bad input.

use ruma::{
    CanonicalJsonObject,
    serde::{Base64, base64::Standard},
    signatures::{Ed25519KeyPair, sign_json},
};
use serde_json::{Value, json};

use crate::{
    rooms::create_room,
    support::{Client, TestServer, enc},
};

/// An ed25519 key pair whose key id is `ed25519:{version}`.
struct Signer {
    pair: Ed25519KeyPair,
    public: String,
}

impl Signer {
    /// A device key (`ed25519:{device_id}`).
    fn device(device_id: &str) -> Signer {
        let doc = Ed25519KeyPair::generate();
        let pair = Ed25519KeyPair::from_der(&doc, device_id.to_owned()).unwrap();
        let public = Base64::<Standard, _>::new(pair.public_key().to_vec()).encode();
        Signer { pair, public }
    }

    /// A cross-signing key (`ed25519:{public key}`).
    fn cross_signing() -> Signer {
        let doc = Ed25519KeyPair::generate();
        let probe = Ed25519KeyPair::from_der(&doc, "x".into()).unwrap();
        let public = Base64::<Standard, _>::new(probe.public_key().to_vec()).encode();
        let pair = Ed25519KeyPair::from_der(&doc, public.clone()).unwrap();
        Signer { pair, public }
    }

    fn key_id(&self) -> String {
        format!("ed25519:{}", self.pair.version())
    }

    /// Signs `value` as `user`.
    fn sign(&self, user: &str, value: &Value) -> Value {
        let mut object: CanonicalJsonObject = serde_json::from_value(value.clone()).unwrap();
        sign_json(user, &self.pair, &mut object).unwrap();
        serde_json::to_value(object).unwrap()
    }
}

/// Self-signed device keys of the client's device.
fn device_keys(c: &Client, signer: &Signer) -> Value {
    let device = c.device_id.clone().unwrap();
    let keys = json!({
        "user_id": c.uid(),
        "device_id": device,
        "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
        "keys": {
            format!("curve25519:{device}"): "Y3VydmUyNTUxOWtleWN1cnZlMjU1MTlrZXljdXJ2ZTI1",
            format!("ed25519:{device}"): signer.public,
        },
    });
    signer.sign(&c.uid(), &keys)
}

fn otk(c: &Client, signer: &Signer, n: u32) -> Value {
    signer.sign(&c.uid(), &json!({"key": format!("b3RrZXk{n}")}))
}

fn upload(c: &Client, body: Value) -> crate::support::Resp {
    c.post("/_matrix/client/v3/keys/upload", body)
}

fn query(c: &Client, users: Value) -> Value {
    c.post("/_matrix/client/v3/keys/query", json!({"device_keys": users}))
        .ok()
        .clone()
}

fn claim(c: &Client, user: &str, device: &str) -> Value {
    c.post(
        "/_matrix/client/v3/keys/claim",
        json!({"one_time_keys": {user: {device: "signed_curve25519"}}}),
    )
    .ok()
    .clone()
}

fn sync(c: &Client, since: Option<&str>) -> Value {
    let mut path = "/_matrix/client/v3/sync?timeout=0".to_owned();
    if let Some(since) = since {
        path.push_str(&format!("&since={}", enc(since)));
    }
    c.get(&path).ok().clone()
}

fn next(body: &Value) -> String {
    body["next_batch"].as_str().unwrap().to_owned()
}

/// A user with self-signed device keys uploaded.
fn with_keys(server: &TestServer, name: &str) -> (Client, Signer) {
    let c = server.user(name, "pw");
    let signer = Signer::device(c.device_id.as_deref().unwrap());
    upload(&c, json!({"device_keys": device_keys(&c, &signer)})).ok();
    (c, signer)
}

#[test]
fn upload_query_claim_round_trip() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    let bob = server.user("bob", "pw");
    let device = alice.device_id.clone().unwrap();
    let signer = Signer::device(&device);
    let keys = device_keys(&alice, &signer);
    let r = upload(
        &alice,
        json!({
            "device_keys": keys,
            "one_time_keys": {
                "signed_curve25519:AAAAAQ": otk(&alice, &signer, 1),
                "signed_curve25519:AAAAAg": otk(&alice, &signer, 2),
            },
        }),
    );
    assert_eq!(r.ok()["one_time_key_counts"]["signed_curve25519"], 2, "{}", r.text);

    let found = query(
        &bob,
        json!({alice.uid(): [], "@nobody:hearth.test": [], "@x:elsewhere.example": []}),
    );
    let stored = &found["device_keys"][alice.uid()][&device];
    assert_eq!(stored["keys"], keys["keys"]);
    assert_eq!(stored["signatures"], keys["signatures"]);
    assert!(
        found["device_keys"]["@nobody:hearth.test"]
            .as_object()
            .is_none_or(|o| o.is_empty())
    );
    assert!(found["failures"]["elsewhere.example"].is_object(), "{found}");
    // Asking for one unknown device gives nothing for it.
    let found = query(&bob, json!({alice.uid(): ["NOPE"]}));
    assert!(found["device_keys"][alice.uid()]["NOPE"].is_null());

    let first = claim(&bob, &alice.uid(), &device);
    let got = first["one_time_keys"][alice.uid()][&device].as_object().unwrap();
    assert_eq!(got.len(), 1);
    assert!(got.keys().next().unwrap().starts_with("signed_curve25519:"));
    let second = claim(&bob, &alice.uid(), &device);
    let third = claim(&bob, &alice.uid(), &device);
    assert_ne!(
        first["one_time_keys"][alice.uid()][&device],
        second["one_time_keys"][alice.uid()][&device]
    );
    assert!(third["one_time_keys"][alice.uid()].is_null(), "{third}");
    let counts = upload(&alice, json!({})).ok().clone();
    assert!(counts["one_time_key_counts"]["signed_curve25519"].as_u64().unwrap_or(0) == 0);

    // A claim for an unknown device or user is just absent.
    let unknown = bob
        .post(
            "/_matrix/client/v3/keys/claim",
            json!({"one_time_keys": {alice.uid(): {"NOPE": "signed_curve25519"}, "@nobody:hearth.test": {"X": "signed_curve25519"}}}),
        )
        .ok()
        .clone();
    assert_eq!(unknown["one_time_keys"], json!({}), "{unknown}");
}

#[test]
fn device_keys_are_checked_and_never_replaced() {
    let server = TestServer::start();
    let (alice, signer) = with_keys(&server, "alice");
    let device = alice.device_id.clone().unwrap();
    // The same keys again are fine.
    upload(&alice, json!({"device_keys": device_keys(&alice, &signer)})).ok();
    // Different keys are refused.
    let other = Signer::device(&device);
    upload(&alice, json!({"device_keys": device_keys(&alice, &other)})).expect_err(400, "M_INVALID_PARAM");
    let found = query(&alice, json!({alice.uid(): []}));
    assert_eq!(
        found["device_keys"][alice.uid()][&device]["keys"][format!("ed25519:{device}")],
        signer.public
    );

    // A fresh device: every bad upload is refused and nothing is stored.
    let mut bob = server.client();
    bob.register("bob", "pw");
    let bob_signer = Signer::device(bob.device_id.as_deref().unwrap());
    let good = device_keys(&bob, &bob_signer);
    let mut unsigned = good.clone();
    unsigned.as_object_mut().unwrap().remove("signatures");
    upload(&bob, json!({"device_keys": unsigned})).expect_err(400, "M_INVALID_PARAM");
    let mut forged = good.clone();
    forged["algorithms"] = json!(["m.olm.v1.curve25519-aes-sha2"]);
    upload(&bob, json!({"device_keys": forged})).expect_err(400, "M_INVALID_PARAM");
    let mut wrong_user = good.clone();
    wrong_user["user_id"] = json!(alice.uid());
    upload(&bob, json!({"device_keys": wrong_user})).expect_err(400, "M_INVALID_PARAM");
    let mut malformed = good.clone();
    malformed["keys"] = json!("not an object");
    upload(&bob, json!({"device_keys": malformed})).expect_err(400, "M_BAD_JSON");
    upload(&bob, json!({"device_keys": "not an object"})).expect_err(400, "M_BAD_JSON");
    // A bad one-time key makes the whole upload fail, device keys included.
    upload(
        &bob,
        json!({"device_keys": good, "one_time_keys": {"signed_curve25519:A": 42}}),
    )
    .expect_err(400, "M_BAD_JSON");
    upload(&bob, json!({"one_time_keys": {"no_colon": {"key": "abc"}}})).expect_err(400, "M_BAD_JSON");
    let found = query(&alice, json!({bob.uid(): []}));
    assert_eq!(found["device_keys"][bob.uid()], json!({}), "{found}");
    let counts = upload(&bob, json!({})).ok().clone();
    assert_eq!(counts["one_time_key_counts"], json!({"signed_curve25519": 0}));
}

#[test]
fn concurrent_claims_hand_out_a_key_once() {
    let server = TestServer::start();
    let (alice, signer) = with_keys(&server, "alice");
    let device = alice.device_id.clone().unwrap();
    upload(
        &alice,
        json!({"one_time_keys": {"signed_curve25519:ONLY": otk(&alice, &signer, 0)}}),
    )
    .ok();
    let claimers: Vec<Client> = (0..8).map(|i| server.user(&format!("c{i}"), "pw")).collect();
    let handles: Vec<_> = claimers
        .into_iter()
        .map(|c| {
            let (user, device) = (alice.uid(), device.clone());
            std::thread::spawn(move || {
                let r = claim(&c, &user, &device);
                r["one_time_keys"][&user][&device].as_object().map_or(0, |o| o.len())
            })
        })
        .collect();
    let got: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
    assert_eq!(got, 1, "exactly one claim gets the only key");
}

#[test]
fn fallback_key_after_exhaustion_and_counts_in_sync() {
    let server = TestServer::start();
    let (alice, signer) = with_keys(&server, "alice");
    let bob = server.user("bob", "pw");
    let device = alice.device_id.clone().unwrap();
    upload(
        &alice,
        json!({
            "one_time_keys": {"signed_curve25519:ONE": otk(&alice, &signer, 1)},
            "fallback_keys": {"signed_curve25519:FB": signer.sign(&alice.uid(), &json!({"key": "ZmFsbGJhY2s", "fallback": true}))},
        }),
    )
    .ok();
    let s = sync(&alice, None);
    assert_eq!(s["device_one_time_keys_count"]["signed_curve25519"], 1, "{s}");
    assert_eq!(s["device_unused_fallback_key_types"], json!(["signed_curve25519"]));

    let one = claim(&bob, &alice.uid(), &device);
    assert!(one["one_time_keys"][alice.uid()][&device]["signed_curve25519:ONE"].is_object());
    for _ in 0..2 {
        let fb = claim(&bob, &alice.uid(), &device);
        assert_eq!(
            fb["one_time_keys"][alice.uid()][&device]["signed_curve25519:FB"]["key"],
            "ZmFsbGJhY2s",
            "{fb}"
        );
    }
    let s2 = sync(&alice, Some(&next(&s)));
    assert!(
        s2["device_one_time_keys_count"]["signed_curve25519"]
            .as_u64()
            .unwrap_or(0)
            == 0
    );
    assert_eq!(s2["device_unused_fallback_key_types"], json!([]));
    // A new upload shows in the next sync (the counts are not served stale).
    upload(
        &alice,
        json!({"one_time_keys": {"signed_curve25519:TWO": otk(&alice, &signer, 2)}}),
    )
    .ok();
    let s3 = sync(&alice, Some(&next(&s2)));
    assert_eq!(s3["device_one_time_keys_count"]["signed_curve25519"], 1, "{s3}");
}

#[test]
fn device_list_changes_reach_users_sharing_a_room() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    let bob = server.user("bob", "pw");
    let carol = server.user("carol", "pw");
    let room = create_room(&alice, json!({"preset": "public_chat"}));
    bob.post(&format!("/_matrix/client/v3/join/{}", enc(&room)), json!({}))
        .ok();
    let b0 = next(&sync(&bob, None));
    let c0 = next(&sync(&carol, None));

    // A long-poll of Bob is woken by Alice's key upload.
    let waiter = {
        let bob = bob.clone();
        let since = b0.clone();
        std::thread::spawn(move || {
            let started = std::time::Instant::now();
            let body = bob
                .get(&format!("/_matrix/client/v3/sync?timeout=20000&since={}", enc(&since)))
                .ok()
                .clone();
            (body, started.elapsed())
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(300));
    let signer = Signer::device(alice.device_id.as_deref().unwrap());
    upload(&alice, json!({"device_keys": device_keys(&alice, &signer)})).ok();
    let (woken, waited) = waiter.join().unwrap();
    assert!(waited < std::time::Duration::from_secs(15), "woken by the upload");
    assert_eq!(woken["device_lists"]["changed"], json!([alice.uid()]), "{woken}");

    // Carol shares no room: nothing.
    let c1 = sync(&carol, Some(&c0));
    assert!(c1["device_lists"]["changed"].is_null(), "{c1}");
    let b1 = next(&woken);
    let changes = bob
        .get(&format!(
            "/_matrix/client/v3/keys/changes?from={}&to={}",
            enc(&b0),
            enc(&b1)
        ))
        .ok()
        .clone();
    assert_eq!(changes["changed"], json!([alice.uid()]));

    // A new device counts at login (as Synapse reports it), again once it uploads its keys
    // (spec: "updated their device identity keys"); a deleted one (logout) at once.
    let mut alice2 = server.client();
    alice2.login("alice", "pw");
    let at_login = sync(&bob, Some(&b1));
    assert_eq!(at_login["device_lists"]["changed"], json!([alice.uid()]), "{at_login}");
    let b2 = next(&at_login);
    let signer2 = Signer::device(alice2.device_id.as_deref().unwrap());
    upload(&alice2, json!({"device_keys": device_keys(&alice2, &signer2)})).ok();
    let after_upload = sync(&bob, Some(&b2));
    assert_eq!(
        after_upload["device_lists"]["changed"],
        json!([alice.uid()]),
        "{after_upload}"
    );
    let b2 = next(&after_upload);
    alice2.post("/_matrix/client/v3/logout", json!({})).ok();
    let s = sync(&bob, Some(&b2));
    assert_eq!(s["device_lists"]["changed"], json!([alice.uid()]), "{s}");
    // The deleted device's keys are gone.
    let found = query(&bob, json!({alice.uid(): []}));
    let devices: Vec<&String> = found["device_keys"][alice.uid()].as_object().unwrap().keys().collect();
    assert_eq!(devices, vec![alice.device_id.as_ref().unwrap()]);

    // Bob leaves: Alice sees him in `left`.
    let a0 = next(&sync(&alice, None));
    bob.post(&format!("/_matrix/client/v3/rooms/{}/leave", enc(&room)), json!({}))
        .ok();
    let a1 = sync(&alice, Some(&a0));
    assert_eq!(a1["device_lists"]["left"], json!([bob.uid()]), "{a1}");
}

#[test]
fn to_device_messages_are_delivered_once() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    let bob = server.user("bob", "pw");
    let bob_device = bob.device_id.clone().unwrap();
    let mut bob2 = server.client();
    bob2.login("bob", "pw");
    let b0 = next(&sync(&bob, None));
    let b2_0 = next(&sync(&bob2, None));

    let path = |txn: &str| format!("/_matrix/client/v3/sendToDevice/m.room_key_request/{txn}");
    let body = json!({"messages": {bob.uid(): {bob_device.clone(): {"n": 1}}}});
    alice.put(&path("t1"), body.clone()).ok();
    alice.put(&path("t1"), body).ok(); // retried: done once
    alice
        .put(&path("t2"), json!({"messages": {bob.uid(): {"*": {"n": 2}}}}))
        .ok();

    let s1 = sync(&bob, Some(&b0));
    let events = s1["to_device"]["events"].as_array().cloned().unwrap_or_default();
    let ns: Vec<i64> = events.iter().map(|e| e["content"]["n"].as_i64().unwrap()).collect();
    assert_eq!(ns, vec![1, 2], "{s1}");
    assert_eq!(events[0]["sender"], alice.uid());
    assert_eq!(events[0]["type"], "m.room_key_request");
    // The same token again (the answer was lost) gives them again; a later one does not.
    let again = sync(&bob, Some(&b0));
    assert_eq!(again["to_device"]["events"].as_array().map(Vec::len), Some(2));
    let s2 = sync(&bob, Some(&next(&s1)));
    assert!(s2["to_device"]["events"].is_null(), "{s2}");
    let s3 = sync(&bob, Some(&next(&s2)));
    assert!(s3["to_device"]["events"].is_null());
    // The other device got only the `*` one.
    let o = sync(&bob2, Some(&b2_0));
    let ns: Vec<i64> = o["to_device"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["content"]["n"].as_i64().unwrap())
        .collect();
    assert_eq!(ns, vec![2]);

    // Unknown users and devices are skipped; malformed content is refused.
    alice
        .put(
            &path("t3"),
            json!({"messages": {"@nobody:hearth.test": {"*": {"n": 3}}, bob.uid(): {"NOPE": {"n": 3}}}}),
        )
        .ok();
    alice
        .put(&path("t4"), json!({"messages": {bob.uid(): {"*": "not an object"}}}))
        .expect_err(400, "M_BAD_JSON");
    let s4 = sync(&bob, Some(&next(&s3)));
    assert!(s4["to_device"]["events"].is_null(), "{s4}");

    // A message after syncs that found the inbox empty is still delivered, and deleted once
    // a later token passes it: the token before it no longer brings it back.
    alice
        .put(
            &path("t5"),
            json!({"messages": {bob.uid(): {bob_device.clone(): {"n": 5}}}}),
        )
        .ok();
    let s5 = sync(&bob, Some(&next(&s4)));
    assert_eq!(s5["to_device"]["events"][0]["content"]["n"], 5, "{s5}");
    sync(&bob, Some(&next(&s5)));
    let replay = sync(&bob, Some(&next(&s4)));
    assert!(replay["to_device"]["events"].is_null(), "{replay}");
}

#[test]
fn to_device_backlogs_arrive_in_pages_without_loss() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    let bob = server.user("bob", "pw");
    let device = bob.device_id.clone().unwrap();
    let b0 = next(&sync(&bob, None));
    for n in 0..150 {
        alice
            .put(
                &format!("/_matrix/client/v3/sendToDevice/m.dummy/t{n}"),
                json!({"messages": {bob.uid(): {device.clone(): {"n": n}}}}),
            )
            .ok();
    }
    let mut since = b0;
    let (mut got, mut pages) = (Vec::new(), Vec::new());
    for _ in 0..4 {
        let s = sync(&bob, Some(&since));
        let events = s["to_device"]["events"].as_array().cloned().unwrap_or_default();
        pages.push(events.len());
        got.extend(events.iter().map(|e| e["content"]["n"].as_i64().unwrap()));
        since = next(&s);
    }
    assert_eq!(pages, vec![100, 50, 0, 0]);
    assert_eq!(got, (0..150).collect::<Vec<i64>>(), "every message once, in order");
}

#[test]
fn deactivation_removes_device_keys_and_bad_change_tokens_are_refused() {
    let server = TestServer::start();
    let (alice, signer) = with_keys(&server, "alice");
    let bob = server.user("bob", "pw");
    let device = alice.device_id.clone().unwrap();
    upload(
        &alice,
        json!({"one_time_keys": {"signed_curve25519:K": otk(&alice, &signer, 7)}}),
    )
    .ok();
    const PATH: &str = "/_matrix/client/v3/account/deactivate";
    let first = alice.uia_start("POST", PATH, json!({}));
    alice
        .post(
            PATH,
            json!({"auth": alice.password_auth("pw", first["session"].as_str())}),
        )
        .ok();
    let found = query(&bob, json!({alice.uid(): []}));
    assert_eq!(found["device_keys"][alice.uid()], json!({}), "{found}");
    let claimed = claim(&bob, &alice.uid(), &device);
    assert_eq!(claimed["one_time_keys"], json!({}), "{claimed}");

    bob.get("/_matrix/client/v3/keys/changes?from=nonsense&to=s1_e1")
        .expect_err(400, "M_INVALID_PARAM");
}

/// Uploads master, self-signing and user-signing keys for `c`.
fn cross_signing(c: &Client) -> (Signer, Signer, Signer) {
    let (master, ssk, usk) = (
        Signer::cross_signing(),
        Signer::cross_signing(),
        Signer::cross_signing(),
    );
    let key = |s: &Signer, usage: &str| json!({"user_id": c.uid(), "usage": [usage], "keys": {s.key_id(): s.public}});
    let body = json!({
        "master_key": key(&master, "master"),
        "self_signing_key": master.sign(&c.uid(), &key(&ssk, "self_signing")),
        "user_signing_key": master.sign(&c.uid(), &key(&usk, "user_signing")),
    });
    c.post("/_matrix/client/v3/keys/device_signing/upload", body).ok();
    (master, ssk, usk)
}

#[test]
fn cross_signing_and_signature_uploads() {
    let server = TestServer::start();
    let (alice, alice_signer) = with_keys(&server, "alice");
    let (bob, _) = with_keys(&server, "bob");
    let device = alice.device_id.clone().unwrap();
    let (master, ssk, _usk) = cross_signing(&alice);
    let _ = &master;
    let (_, _, bob_usk) = cross_signing(&bob);

    let seen_by_bob = query(&bob, json!({alice.uid(): []}));
    assert_eq!(
        seen_by_bob["master_keys"][alice.uid()]["keys"][master.key_id()],
        master.public
    );
    assert!(seen_by_bob["self_signing_keys"][alice.uid()].is_object());
    assert!(
        seen_by_bob["user_signing_keys"][alice.uid()].is_null(),
        "only for the owner"
    );
    let own = query(&alice, json!({alice.uid(): []}));
    assert!(own["user_signing_keys"][alice.uid()].is_object());

    // A self-signing key not signed by the master key is refused.
    let stray = Signer::cross_signing();
    alice
        .post(
            "/_matrix/client/v3/keys/device_signing/upload",
            json!({"self_signing_key": stray.sign(&alice.uid(), &json!({"user_id": alice.uid(), "usage": ["self_signing"], "keys": {stray.key_id(): stray.public}}))}),
        )
        .expect_err(400, "M_INVALID_PARAM");
    // Replacing the master key needs the password.
    let new_master = Signer::cross_signing();
    let body = json!({"master_key": {"user_id": alice.uid(), "usage": ["master"], "keys": {new_master.key_id(): new_master.public}}});
    let uia = alice.uia_start("POST", "/_matrix/client/v3/keys/device_signing/upload", body.clone());
    let mut authed = body;
    authed["auth"] = alice.password_auth("pw", uia["session"].as_str());
    alice.post("/_matrix/client/v3/keys/device_signing/upload", authed).ok();
    // The self-signing key stays; the master key is the new one.
    let master = new_master;

    // Alice signs her device with her self-signing key: accepted and visible.
    let stored = query(&alice, json!({alice.uid(): [device.clone()]}));
    let mut device_obj = stored["device_keys"][alice.uid()][&device].clone();
    device_obj.as_object_mut().unwrap().remove("unsigned");
    let signed = ssk.sign(&alice.uid(), &device_obj);
    let r = alice
        .post(
            "/_matrix/client/v3/keys/signatures/upload",
            json!({alice.uid(): {device.clone(): signed}}),
        )
        .ok()
        .clone();
    assert!(r["failures"].as_object().is_none_or(|f| f.is_empty()), "{r}");
    let after = query(&bob, json!({alice.uid(): []}));
    assert!(after["device_keys"][alice.uid()][&device]["signatures"][alice.uid()][ssk.key_id()].is_string());

    // Alice signs her (new) master key with her device: the master's own signature is in the
    // object too.
    let (alice_device_signer, mut alice_master) = (alice_signer, after["master_keys"][alice.uid()].clone());
    alice_master.as_object_mut().unwrap().remove("signatures");
    let self_signed = master.sign(&alice.uid(), &alice_master);
    let by_device = alice_device_signer.sign(&alice.uid(), &self_signed);
    let r = alice
        .post(
            "/_matrix/client/v3/keys/signatures/upload",
            json!({alice.uid(): {master.public.clone(): by_device}}),
        )
        .ok()
        .clone();
    assert!(r["failures"].as_object().is_none_or(|f| f.is_empty()), "{r}");
    let after = query(&bob, json!({alice.uid(): []}));
    assert!(after["master_keys"][alice.uid()]["signatures"][alice.uid()][alice_device_signer.key_id()].is_string());

    // Bob signs Alice's master key, once with a forged key: that one is a failure, not stored.
    let mut alice_master = after["master_keys"][alice.uid()].clone();
    alice_master.as_object_mut().unwrap().remove("signatures");
    let forger = Signer::cross_signing();
    let mut forged = forger.sign(&bob.uid(), &alice_master);
    let sig = forged["signatures"][bob.uid()][forger.key_id()].clone();
    forged["signatures"] = json!({bob.uid(): {bob_usk.key_id(): sig}});
    let r = bob
        .post(
            "/_matrix/client/v3/keys/signatures/upload",
            json!({alice.uid(): {master.public.clone(): forged}}),
        )
        .ok()
        .clone();
    assert_eq!(
        r["failures"][alice.uid()][&master.public]["errcode"],
        "M_INVALID_SIGNATURE",
        "{r}"
    );
    let after = query(&bob, json!({alice.uid(): []}));
    assert!(after["master_keys"][alice.uid()]["signatures"][bob.uid()].is_null());
    // The genuine one is stored.
    let good = bob_usk.sign(&bob.uid(), &alice_master);
    let r = bob
        .post(
            "/_matrix/client/v3/keys/signatures/upload",
            json!({alice.uid(): {master.public.clone(): good}}),
        )
        .ok()
        .clone();
    assert!(r["failures"].as_object().is_none_or(|f| f.is_empty()), "{r}");
    let after = query(&alice, json!({alice.uid(): []}));
    assert!(after["master_keys"][alice.uid()]["signatures"][bob.uid()][bob_usk.key_id()].is_string());
}

fn session_key(index: u64, forwarded: u64, verified: bool, tag: &str) -> Value {
    json!({
        "first_message_index": index,
        "forwarded_count": forwarded,
        "is_verified": verified,
        "session_data": {"ephemeral": tag, "ciphertext": tag, "mac": tag},
    })
}

#[test]
fn key_backup_versions_and_the_better_key_rule() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    let algorithm = json!({"algorithm": "m.megolm_backup.v1.curve25519-aes-sha2", "auth_data": {"public_key": "cHVi"}});
    alice
        .get("/_matrix/client/v3/room_keys/version")
        .expect_err(404, "M_NOT_FOUND");
    let v1 = alice
        .post("/_matrix/client/v3/room_keys/version", algorithm.clone())
        .ok()["version"]
        .as_str()
        .unwrap()
        .to_owned();
    let room = "!room:hearth.test";
    let key_path =
        |v: &str, session: &str| format!("/_matrix/client/v3/room_keys/keys/{}/{session}?version={v}", enc(room));
    let r = alice
        .put(&key_path(&v1, "s1"), session_key(5, 1, false, "first"))
        .ok()
        .clone();
    assert_eq!(r["count"], 1);
    let etag1 = r["etag"].clone();
    // Worse keys do not replace it; better ones do.
    let worse = alice
        .put(&key_path(&v1, "s1"), session_key(9, 0, false, "worse"))
        .ok()
        .clone();
    assert_eq!(worse["etag"], etag1, "nothing changed");
    let get = |s: &str| alice.get(&key_path(&v1, s)).ok()["session_data"]["ciphertext"].clone();
    assert_eq!(get("s1"), "first");
    alice
        .put(&key_path(&v1, "s1"), session_key(5, 0, false, "fewer-forwards"))
        .ok();
    assert_eq!(get("s1"), "fewer-forwards");
    alice
        .put(&key_path(&v1, "s1"), session_key(7, 3, true, "verified"))
        .ok();
    assert_eq!(get("s1"), "verified");
    alice
        .put(&key_path(&v1, "s1"), session_key(0, 0, false, "unverified"))
        .ok();
    assert_eq!(get("s1"), "verified");

    // Many at once; then the version's info.
    let all = format!("/_matrix/client/v3/room_keys/keys?version={v1}");
    let r = alice
        .put(
            &all,
            json!({"rooms": {room: {"sessions": {"s2": session_key(0, 0, false, "two")}}, "!other:hearth.test": {"sessions": {"s3": session_key(0, 0, false, "three")}}}}),
        )
        .ok()
        .clone();
    assert_eq!(r["count"], 3);
    let info = alice.get("/_matrix/client/v3/room_keys/version").ok().clone();
    assert_eq!(
        (info["version"].as_str(), info["count"].as_u64()),
        (Some(v1.as_str()), Some(3))
    );
    assert_eq!(info["auth_data"]["public_key"], "cHVi");
    let everything = alice.get(&all).ok().clone();
    assert_eq!(everything["rooms"][room]["sessions"].as_object().unwrap().len(), 2);

    // Malformed keys are refused and nothing is stored.
    alice
        .put(&key_path(&v1, "bad"), json!({"first_message_index": "x"}))
        .expect_err(400, "M_BAD_JSON");
    alice.get(&key_path(&v1, "bad")).expect_err(404, "M_NOT_FOUND");

    // A new version: the old one takes no more keys.
    let v2 = alice
        .post("/_matrix/client/v3/room_keys/version", algorithm.clone())
        .ok()["version"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(v1, v2);
    let r = alice.put(&key_path(&v1, "s9"), session_key(0, 0, false, "late"));
    r.expect_err(403, "M_WRONG_ROOM_KEYS_VERSION");
    assert_eq!(r.body["current_version"], v2.as_str());
    alice
        .put(&key_path("999", "s9"), session_key(0, 0, false, "x"))
        .expect_err(404, "M_NOT_FOUND");
    // Updating auth_data keeps the algorithm; changing it is refused.
    let mut updated = algorithm.clone();
    updated["auth_data"]["public_key"] = json!("bmV3");
    alice
        .put(&format!("/_matrix/client/v3/room_keys/version/{v2}"), updated)
        .ok();
    assert_eq!(
        alice.get(&format!("/_matrix/client/v3/room_keys/version/{v2}")).ok()["auth_data"]["public_key"],
        "bmV3"
    );
    alice
        .put(
            &format!("/_matrix/client/v3/room_keys/version/{v2}"),
            json!({"algorithm": "other", "auth_data": {}}),
        )
        .expect_err(400, "M_INVALID_PARAM");

    // Deleting keys and versions.
    let r = alice.delete(&all, json!({})).ok().clone();
    assert_eq!(r["count"], 0);
    alice
        .delete(&format!("/_matrix/client/v3/room_keys/version/{v2}"), json!({}))
        .ok();
    let info = alice.get("/_matrix/client/v3/room_keys/version").ok().clone();
    assert_eq!(info["version"], v1.as_str(), "the previous version is current again");
    alice
        .get(&format!("/_matrix/client/v3/room_keys/version/{v2}"))
        .expect_err(404, "M_NOT_FOUND");
}
