//! Federation, part 1: the switch, the TLS listener and its reload, server keys (rotation, the
//! notary), and `X-Matrix` request signing both ways, between real Hearth servers on loopback
//! addresses with certificates from a test CA.

use std::time::Duration;

use base64::{Engine, engine::general_purpose::STANDARD_NO_PAD};
use ruma::{CanonicalJsonObject, CanonicalJsonValue};
use serde_json::{Value, json};

use crate::support::{
    TestServer,
    federation::{TestCa, TlsAnswer, federated_server, signing_key_of, tls_request, x_matrix},
    out_text, run_plain,
};

fn get_tls(ca: &TestCa, server: &TestServer, path: &str) -> TlsAnswer {
    let ip = server.server_name.split(':').next().unwrap();
    tls_request(
        ca.client_config(),
        &server.server_name,
        ip,
        &server.server_name,
        "GET",
        path,
        &[],
        None,
    )
    .unwrap()
}

/// Checks a key answer's signature by `server` with the keys it lists itself.
fn assert_self_signed(answer: &Value, server: &str) {
    let mut keys = std::collections::BTreeMap::new();
    for (id, key) in answer["verify_keys"].as_object().unwrap() {
        let bytes = STANDARD_NO_PAD.decode(key["key"].as_str().unwrap()).unwrap();
        keys.insert(id.clone(), ruma::serde::Base64::new(bytes));
    }
    let mut object: CanonicalJsonObject = serde_json::from_value(answer.clone()).unwrap();
    let own = object["signatures"].as_object().unwrap()[server].clone();
    object.insert(
        "signatures".into(),
        CanonicalJsonValue::Object([(server.to_owned(), own)].into()),
    );
    ruma::signatures::verify_json(&[(server.to_owned(), keys)].into(), &object).expect("a valid self-signature");
}

fn key_ids(answer: &Value, field: &str) -> Vec<String> {
    answer[field].as_object().unwrap().keys().cloned().collect()
}

#[test]
fn federation_routes_answer_unrecognized_while_federation_is_off() {
    let server = TestServer::start();
    let c = server.client();
    for path in [
        "/_matrix/key/v2/server",
        "/_matrix/federation/v1/version",
        "/_matrix/key/v2/query/example.org",
        "/_matrix/federation/v1/query/profile?user_id=@a:hearth.test",
    ] {
        c.get(path).expect_err(404, "M_UNRECOGNIZED");
    }
    c.raw(
        "POST",
        "/_matrix/key/v2/query",
        Some(b"{\"server_keys\":{}}"),
        Some("application/json"),
    )
    .expect_err(404, "M_UNRECOGNIZED");
}

#[test]
fn a_listener_without_its_certificate_does_not_start_and_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data").display().to_string();
    let out = run_plain(
        &["serve", "--listen", "127.0.0.1:0", "--data-dir", &data],
        &[
            ("HEARTH_FEDERATION__ENABLED", "true"),
            ("HEARTH_FEDERATION__LISTEN", "127.0.0.1:0"),
            ("HEARTH_FEDERATION__TLS_CERT_FILE", "/nonexistent/cert.pem"),
            ("HEARTH_FEDERATION__TLS_KEY_FILE", "/nonexistent/key.pem"),
        ],
    );
    let (_, stderr) = out_text(&out);
    assert!(!out.status.success());
    assert!(stderr.contains("federation.tls_cert_file"), "{stderr}");
}

#[test]
fn keys_are_served_signed_over_tls_and_sighup_reloads_the_certificate() {
    let ca = TestCa::new();
    let mut server = federated_server(&ca, "127.0.0.31", &[]);
    server.launch();
    let name = server.server_name.clone();

    let answer = get_tls(&ca, &server, "/_matrix/key/v2/server");
    assert_eq!(answer.status, 200, "{}", answer.body);
    let keys = answer.body;
    assert_eq!(keys["server_name"], name.as_str());
    assert_eq!(key_ids(&keys, "verify_keys").len(), 1);
    assert!(key_ids(&keys, "old_verify_keys").is_empty());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(keys["valid_until_ts"].as_u64().unwrap() > now);
    assert_self_signed(&keys, &name);

    let version = get_tls(&ca, &server, "/_matrix/federation/v1/version");
    assert_eq!(version.body["server"]["name"], "Hearth");
    // The plain listener serves the same, for a reverse proxy that terminates TLS.
    let plain = server.client().get("/_matrix/key/v2/server");
    assert_eq!(plain.ok()["verify_keys"], keys["verify_keys"]);

    // A renewed certificate copied over the files is presented after SIGHUP.
    let (cert_file, key_file) = ca.files(&name);
    let (new_cert, new_key, new_der) = ca.issue("127.0.0.31", "renewed");
    let first = get_tls(&ca, &server, "/_matrix/federation/v1/version").peer_cert;
    assert_ne!(first, new_der);
    std::fs::copy(&new_cert, &cert_file).unwrap();
    std::fs::copy(&new_key, &key_file).unwrap();
    let hup = |server: &TestServer| {
        std::process::Command::new("kill")
            .args(["-HUP", &server.pid().to_string()])
            .status()
            .unwrap();
    };
    hup(&server);
    let mut shown = first.clone();
    for _ in 0..100 {
        shown = get_tls(&ca, &server, "/_matrix/federation/v1/version").peer_cert;
        if shown == new_der {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(shown, new_der, "the renewed certificate is presented");

    // A broken file is refused and the renewed certificate stays.
    std::fs::write(&cert_file, "not a certificate").unwrap();
    hup(&server);
    let mut logged = false;
    for _ in 0..100 {
        if server
            .logged_errors()
            .iter()
            .any(|l| l.contains("federation.tls_cert_file"))
        {
            logged = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(logged, "{:?}", server.logged_errors());
    assert_eq!(
        get_tls(&ca, &server, "/_matrix/federation/v1/version").peer_cert,
        new_der
    );
}

#[test]
fn a_rotated_key_is_listed_as_old_with_its_expiry() {
    let ca = TestCa::new();
    let mut server = federated_server(&ca, "127.0.0.35", &[]);
    server.launch();
    let name = server.server_name.clone();
    let before = server.client().get("/_matrix/key/v2/server").ok().clone();
    let old_id = key_ids(&before, "verify_keys").remove(0);
    server.stop();

    let out = server.admin(&["signing-key", "rotate"], None);
    let (stdout, stderr) = out_text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains(&old_id), "{stdout}");

    server.launch();
    let after = get_tls(&ca, &server, "/_matrix/key/v2/server").body;
    let new_id = key_ids(&after, "verify_keys").remove(0);
    assert_ne!(new_id, old_id);
    assert_eq!(key_ids(&after, "old_verify_keys"), std::slice::from_ref(&old_id));
    let old = &after["old_verify_keys"][&old_id];
    assert_eq!(old["key"], before["verify_keys"][&old_id]["key"]);
    assert!(old["expired_ts"].as_u64().unwrap() > 0);
    assert_self_signed(&after, &name);
}

#[test]
fn two_servers_fetch_each_others_keys_and_sign_their_requests() {
    let ca = TestCa::new();
    let mut a = federated_server(&ca, "127.0.0.32", &[]);
    let mut b = federated_server(&ca, "127.0.0.33", &[]);
    a.launch();
    b.launch();
    let (a_name, b_name) = (a.server_name.clone(), b.server_name.clone());

    let bob = b.user("bob", "secret-password");
    bob.put(
        &format!("/_matrix/client/v3/profile/@bob:{b_name}/displayname"),
        json!({"displayname": "Bob of B"}),
    )
    .ok();
    let alice = a.user("alice", "secret-password");

    // A asks B (signed); B checks the signature with A's key, fetched from A.
    let profile = alice.get(&format!("/_matrix/client/v3/profile/@bob:{b_name}"));
    assert_eq!(profile.ok()["displayname"], "Bob of B");
    let field = alice.get(&format!("/_matrix/client/v3/profile/@bob:{b_name}/displayname"));
    assert_eq!(field.ok()["displayname"], "Bob of B");
    alice
        .get(&format!("/_matrix/client/v3/profile/@nobody:{b_name}"))
        .expect_err(404, "M_NOT_FOUND");

    // A as a notary: B's own answer, countersigned by A.
    let relayed = a.client().get(&format!("/_matrix/key/v2/query/{b_name}"));
    let relayed = relayed.ok()["server_keys"][0].clone();
    assert_eq!(relayed["server_name"], b_name.as_str());
    assert_self_signed(&relayed, &b_name);
    let signers: Vec<&String> = relayed["signatures"].as_object().unwrap().keys().collect();
    assert_eq!(signers.len(), 2, "{signers:?}");
    assert!(signers.contains(&&a_name));
    let batch = a.client().post(
        "/_matrix/key/v2/query",
        json!({"server_keys": {b_name.clone(): {}, a_name.clone(): {}}}),
    );
    let names: Vec<Value> = batch.ok()["server_keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["server_name"].clone())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
}

#[test]
fn forged_and_misdirected_federation_requests_are_refused() {
    let ca = TestCa::new();
    let mut a = federated_server(&ca, "127.0.0.36", &[]);
    a.launch();
    let mut c = federated_server(&ca, "127.0.0.38", &[]);
    c.launch();
    let c_name = c.server_name.clone();
    let denied = format!("[\"{c_name}\"]");
    let mut b = federated_server(
        &ca,
        "127.0.0.37",
        &[("HEARTH_FEDERATION__DENIED_SERVERS", denied.as_str())],
    );
    b.launch();
    let (a_name, b_name) = (a.server_name.clone(), b.server_name.clone());
    b.user("bob", "secret-password");
    let a_key = signing_key_of(&a);
    let uri = format!(
        "/_matrix/federation/v1/query/profile?user_id=%40bob%3A{}",
        b_name.replace(':', "%3A")
    );
    let ask = |auth: Option<&str>| {
        let headers: Vec<(&str, &str)> = auth.map(|a| ("Authorization", a)).into_iter().collect();
        tls_request(
            ca.client_config(),
            &b_name,
            "127.0.0.37",
            &b_name,
            "GET",
            &uri,
            &headers,
            None,
        )
        .unwrap()
    };
    let errcode = |answer: &TlsAnswer| (answer.status, answer.body["errcode"].as_str().unwrap_or("").to_owned());

    // Correctly signed by A: answered.
    let good = ask(Some(&x_matrix(&a_key, &a_name, &b_name, "GET", &uri, None)));
    assert_eq!(good.status, 200, "{}", good.body);

    let unauthorized = (401, "M_UNAUTHORIZED".to_owned());
    assert_eq!(errcode(&ask(None)), unauthorized);
    assert_eq!(errcode(&ask(Some("X-Matrix nonsense"))), unauthorized);
    // Signed for another URI, or for another destination.
    let other_uri = x_matrix(&a_key, &a_name, &b_name, "GET", "/_matrix/federation/v1/version", None);
    assert_eq!(errcode(&ask(Some(&other_uri))), unauthorized);
    let other_destination = x_matrix(&a_key, &a_name, "elsewhere.example", "GET", &uri, None);
    assert_eq!(errcode(&ask(Some(&other_destination))), unauthorized);
    // A's key id with a key that is not A's.
    let impostor = hearth::services::server_keys::ServerKeys::parse(&format!(
        "ed25519 {} {}",
        a_key.version,
        STANDARD_NO_PAD.encode([7u8; 32])
    ))
    .unwrap();
    assert_eq!(
        errcode(&ask(Some(&x_matrix(&impostor, &a_name, &b_name, "GET", &uri, None)))),
        unauthorized
    );
    // Claiming to be B itself, or a server that does not answer.
    let as_b = x_matrix(&impostor, &b_name, &b_name, "GET", &uri, None);
    assert_eq!(errcode(&ask(Some(&as_b))), unauthorized);
    let ghost = x_matrix(&impostor, "127.0.0.39:9", &b_name, "GET", &uri, None);
    assert_eq!(errcode(&ask(Some(&ghost))), unauthorized);
    // A denied server, however well it signs.
    let c_key = signing_key_of(&c);
    let from_c = ask(Some(&x_matrix(&c_key, &c_name, &b_name, "GET", &uri, None)));
    assert_eq!(errcode(&from_c), (403, "M_FORBIDDEN".to_owned()));
    // And B does not talk to C either.
    let bob = b.user("bob2", "secret-password");
    bob.get(&format!("/_matrix/client/v3/profile/@carol:{c_name}"))
        .expect_err(403, "M_FORBIDDEN");
}

/// Two servers with a user each: `(a, b, alice on a, bob on b)`.
fn pair(
    ca: &TestCa,
    ip_a: &str,
    ip_b: &str,
) -> (TestServer, TestServer, crate::support::Client, crate::support::Client) {
    let mut a = federated_server(ca, ip_a, &[]);
    let mut b = federated_server(ca, ip_b, &[]);
    a.launch();
    b.launch();
    let alice = a.user("alice", "secret-password");
    let bob = b.user("bob", "secret-password");
    (a, b, alice, bob)
}

#[test]
fn a_user_joins_a_room_of_another_server_by_id_and_by_alias() {
    let ca = TestCa::new();
    let (a, b, alice, bob) = pair(&ca, "127.0.0.41", "127.0.0.42");
    let (a_name, b_name) = (a.server_name.clone(), b.server_name.clone());
    let room = alice.post(
        "/_matrix/client/v3/createRoom",
        json!({"preset": "public_chat", "name": "Shared", "room_alias_name": "shared"}),
    );
    let room_id = room.ok()["room_id"].as_str().unwrap().to_owned();

    // By id, through the server named in `via`.
    let joined = bob.post(&format!("/_matrix/client/v3/join/{room_id}?via={a_name}"), json!({}));
    assert_eq!(joined.ok()["room_id"], room_id.as_str(), "{}", joined.ok());
    let name = bob.get(&format!("/_matrix/client/v3/rooms/{room_id}/state/m.room.name"));
    assert_eq!(name.ok()["name"], "Shared");
    let rooms = bob.get("/_matrix/client/v3/joined_rooms");
    assert_eq!(rooms.ok()["joined_rooms"][0], room_id.as_str());
    let members = alice.get(&format!("/_matrix/client/v3/rooms/{room_id}/joined_members"));
    assert!(
        members.ok()["joined"].get(format!("@bob:{b_name}")).is_some(),
        "{}",
        members.ok()
    );

    // By alias: the alias's server is asked which room it names.
    let carol = b.user("carol", "secret-password");
    let by_alias = carol.post(&format!("/_matrix/client/v3/join/%23shared:{a_name}"), json!({}));
    assert_eq!(by_alias.ok()["room_id"], room_id.as_str());
    let members = carol.get(&format!("/_matrix/client/v3/rooms/{room_id}/joined_members"));
    let joined = members.ok()["joined"].as_object().unwrap().len();
    assert_eq!(joined, 3, "{}", members.ok());

    // An invite-only room refuses a user without an invite.
    let private = alice.post("/_matrix/client/v3/createRoom", json!({"preset": "private_chat"}));
    let private_id = private.ok()["room_id"].as_str().unwrap().to_owned();
    bob.post(&format!("/_matrix/client/v3/join/{private_id}?via={a_name}"), json!({}))
        .expect_err(403, "M_FORBIDDEN");
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

/// The bodies of the latest messages of a room as `client` sees them.
fn bodies(client: &crate::support::Client, room_id: &str) -> Vec<String> {
    crate::support::federation::message_bodies(client, room_id, 50)
}

fn membership_of(client: &crate::support::Client, room_id: &str, user: &str) -> Option<String> {
    let answer = client.get(&format!(
        "/_matrix/client/v3/rooms/{room_id}/state/m.room.member/{user}"
    ));
    (answer.status == 200).then(|| answer.body["membership"].as_str().unwrap_or("").to_owned())
}

#[test]
fn two_servers_chat_both_ways_and_apply_each_others_state_changes() {
    let ca = TestCa::new();
    let (a, b, alice, bob) = pair(&ca, "127.0.0.43", "127.0.0.44");
    let (a_name, b_name) = (a.server_name.clone(), b.server_name.clone());
    let room = alice.post("/_matrix/client/v3/createRoom", json!({"preset": "public_chat"}));
    let room_id = room.ok()["room_id"].as_str().unwrap().to_owned();
    bob.post(&format!("/_matrix/client/v3/join/{room_id}?via={a_name}"), json!({}))
        .ok();

    let send = |client: &crate::support::Client, txn: &str, body: &str| {
        client
            .put(
                &format!("/_matrix/client/v3/rooms/{room_id}/send/m.room.message/{txn}"),
                json!({"msgtype": "m.text", "body": body}),
            )
            .ok()
            .clone()
    };
    send(&alice, "a1", "hello from A");
    assert!(eventually(
        || bodies(&bob, &room_id).contains(&"hello from A".to_owned())
    ));
    send(&bob, "b1", "hello from B");
    assert!(eventually(
        || bodies(&alice, &room_id).contains(&"hello from B".to_owned())
    ));

    // State set on one side is the state on the other.
    alice
        .put(
            &format!("/_matrix/client/v3/rooms/{room_id}/state/m.room.topic"),
            json!({"topic": "federated"}),
        )
        .ok();
    assert!(eventually(|| {
        let topic = bob.get(&format!("/_matrix/client/v3/rooms/{room_id}/state/m.room.topic"));
        topic.status == 200 && topic.body["topic"] == "federated"
    }));

    // A kick on A reaches B; bob can no longer send there.
    let bob_id = format!("@bob:{b_name}");
    alice
        .post(
            &format!("/_matrix/client/v3/rooms/{room_id}/kick"),
            json!({"user_id": bob_id, "reason": "testing"}),
        )
        .ok();
    assert!(eventually(|| membership_of(&bob, &room_id, &bob_id).is_none()
        || membership_of(&alice, &room_id, &bob_id).as_deref() == Some("leave")));
    assert!(eventually(|| {
        let rooms = bob.get("/_matrix/client/v3/joined_rooms");
        rooms.ok()["joined_rooms"].as_array().unwrap().is_empty()
    }));
    bob.put(
        &format!("/_matrix/client/v3/rooms/{room_id}/send/m.room.message/b2"),
        json!({"msgtype": "m.text", "body": "after the kick"}),
    )
    .expect_err(403, "M_FORBIDDEN");
}

#[test]
fn a_server_that_was_down_gets_everything_queued_even_after_the_sender_restarts() {
    let ca = TestCa::new();
    let (mut a, mut b, alice, bob) = pair(&ca, "127.0.0.45", "127.0.0.46");
    let a_name = a.server_name.clone();
    let room = alice.post("/_matrix/client/v3/createRoom", json!({"preset": "public_chat"}));
    let room_id = room.ok()["room_id"].as_str().unwrap().to_owned();
    bob.post(&format!("/_matrix/client/v3/join/{room_id}?via={a_name}"), json!({}))
        .ok();

    b.stop();
    for n in 0..3 {
        alice
            .put(
                &format!("/_matrix/client/v3/rooms/{room_id}/send/m.room.message/down{n}"),
                json!({"msgtype": "m.text", "body": format!("while down {n}")}),
            )
            .ok();
    }
    // The sender restarts too, with the messages still queued.
    a.stop();
    a.launch();
    b.launch();
    let bob = bob.with_base(&b.base);
    let expected: Vec<String> = (0..3).map(|n| format!("while down {n}")).collect();
    assert!(
        eventually(|| {
            let seen = bodies(&bob, &room_id);
            expected.iter().all(|e| seen.contains(e))
        }),
        "{:?}",
        bodies(&bob, &room_id)
    );
    let _ = &a;
}

#[test]
fn concurrent_state_changes_on_both_servers_converge() {
    let ca = TestCa::new();
    let (a, mut b, alice, bob) = pair(&ca, "127.0.0.47", "127.0.0.48");
    let a_name = a.server_name.clone();
    let room = alice.post("/_matrix/client/v3/createRoom", json!({"preset": "public_chat"}));
    let room_id = room.ok()["room_id"].as_str().unwrap().to_owned();
    bob.post(&format!("/_matrix/client/v3/join/{room_id}?via={a_name}"), json!({}))
        .ok();
    let topic = |client: &crate::support::Client| {
        let answer = client.get(&format!("/_matrix/client/v3/rooms/{room_id}/state/m.room.topic"));
        (answer.status == 200).then(|| answer.body["topic"].as_str().unwrap_or("").to_owned())
    };
    let set_topic = |client: &crate::support::Client, text: &str| {
        client
            .put(
                &format!("/_matrix/client/v3/rooms/{room_id}/state/m.room.topic"),
                json!({"topic": text}),
            )
            .ok();
    };
    // Bob may change the topic too.
    let bob_id = format!("@bob:{}", b.server_name);
    let levels_path = format!("/_matrix/client/v3/rooms/{room_id}/state/m.room.power_levels");
    let mut levels = alice.get(&levels_path).ok().clone();
    levels["users"][&bob_id] = json!(50);
    alice.put(&levels_path, levels).ok();
    assert!(eventually(|| {
        let seen = bob.get(&levels_path);
        seen.status == 200 && seen.body["users"][&bob_id] == 50
    }));
    // Each side changes the topic without having seen the other's change: a fork.
    b.stop();
    set_topic(&alice, "from A");
    b.launch();
    let bob = bob.with_base(&b.base);
    set_topic(&bob, "from B");
    bob.put(
        &format!("/_matrix/client/v3/rooms/{room_id}/state/m.room.member/{bob_id}"),
        json!({"membership": "join", "displayname": "Bob after the fork"}),
    )
    .ok();
    assert!(
        eventually(|| {
            let (on_a, on_b) = (topic(&alice), topic(&bob));
            on_a.is_some() && on_a == on_b
        }),
        "A: {:?}, B: {:?}",
        topic(&alice),
        topic(&bob)
    );
    // Both servers hold the same current state, event for event.
    let state = |client: &crate::support::Client| {
        let mut ids: Vec<String> = client
            .get(&format!("/_matrix/client/v3/rooms/{room_id}/state"))
            .ok()
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["event_id"].as_str().unwrap().to_owned())
            .collect();
        ids.sort();
        ids
    };
    let described = |client: &crate::support::Client| {
        client
            .get(&format!("/_matrix/client/v3/rooms/{room_id}/state"))
            .ok()
            .as_array()
            .unwrap()
            .iter()
            .map(|e| format!("{} {} {} {}", e["type"], e["state_key"], e["event_id"], e["content"]))
            .collect::<Vec<_>>()
    };
    assert!(
        eventually(|| state(&alice) == state(&bob)),
        "{:#?}\n{:#?}",
        described(&alice),
        described(&bob)
    );
}

#[test]
fn invites_cross_servers_and_are_accepted_or_declined() {
    let ca = TestCa::new();
    let (a, b, alice, bob) = pair(&ca, "127.0.0.49", "127.0.0.50");
    let b_name = b.server_name.clone();
    let room = alice.post(
        "/_matrix/client/v3/createRoom",
        json!({"preset": "private_chat", "name": "Invitation only"}),
    );
    let room_id = room.ok()["room_id"].as_str().unwrap().to_owned();
    let invite = |user: &str| {
        alice.post(
            &format!("/_matrix/client/v3/rooms/{room_id}/invite"),
            json!({"user_id": format!("@{user}:{b_name}")}),
        )
    };
    invite("bob").ok();

    // Bob sees the invite with the room's name, and accepts it.
    let sync = bob.get("/_matrix/client/v3/sync?timeout=0");
    let invited = &sync.ok()["rooms"]["invite"][&room_id]["invite_state"]["events"];
    let events = invited.as_array().unwrap_or_else(|| panic!("{}", sync.ok()));
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "m.room.name" && e["content"]["name"] == "Invitation only")
    );
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "m.room.member" && e["content"]["membership"] == "invite")
    );
    bob.post(&format!("/_matrix/client/v3/join/{room_id}"), json!({})).ok();
    let members = alice.get(&format!("/_matrix/client/v3/rooms/{room_id}/joined_members"));
    assert!(members.ok()["joined"].get(format!("@bob:{b_name}")).is_some());

    // Carol declines hers: gone from her invites.
    let carol = b.user("carol", "secret-password");
    invite("carol").ok();
    carol
        .post(&format!("/_matrix/client/v3/rooms/{room_id}/leave"), json!({}))
        .ok();
    let sync = carol.get("/_matrix/client/v3/sync?timeout=0");
    assert!(sync.ok()["rooms"]["invite"].get(&room_id).is_none(), "{}", sync.ok());
    // ... and the inviting server hears of it (make_leave/send_leave).
    let carol_id = format!("@carol:{b_name}");
    assert!(eventually(
        || membership_of(&alice, &room_id, &carol_id).as_deref() == Some("leave")
    ));

    // A user their server does not know: the invite is refused and withdrawn.
    let refused = invite("nobody");
    assert_eq!(refused.status, 404, "{}", refused.text);
    let member = alice.get(&format!(
        "/_matrix/client/v3/rooms/{room_id}/state/m.room.member/@nobody:{b_name}"
    ));
    assert_eq!(member.ok()["membership"], "leave");
    let _ = a;
}

#[test]
fn typing_and_read_receipts_cross_servers() {
    let ca = TestCa::new();
    let (a, b, alice, bob) = pair(&ca, "127.0.0.51", "127.0.0.52");
    let (a_name, b_name) = (a.server_name.clone(), b.server_name.clone());
    let room = alice.post("/_matrix/client/v3/createRoom", json!({"preset": "public_chat"}));
    let room_id = room.ok()["room_id"].as_str().unwrap().to_owned();
    bob.post(&format!("/_matrix/client/v3/join/{room_id}?via={a_name}"), json!({}))
        .ok();
    let sent = alice
        .put(
            &format!("/_matrix/client/v3/rooms/{room_id}/send/m.room.message/r1"),
            json!({"msgtype": "m.text", "body": "read me"}),
        )
        .ok()
        .clone();
    let event_id = sent["event_id"].as_str().unwrap().to_owned();
    assert!(eventually(|| bodies(&bob, &room_id).contains(&"read me".to_owned())));
    let bob_id = format!("@bob:{b_name}");
    bob.put(
        &format!("/_matrix/client/v3/rooms/{room_id}/typing/{bob_id}"),
        json!({"typing": true, "timeout": 20000}),
    )
    .ok();
    bob.post(
        &format!("/_matrix/client/v3/rooms/{room_id}/receipt/m.read/{event_id}"),
        json!({}),
    )
    .ok();
    let (mut typing_seen, mut receipt_seen) = (false, false);
    let mut since: Option<String> = None;
    assert!(
        eventually(|| {
            let path = match &since {
                Some(token) => format!("/_matrix/client/v3/sync?timeout=0&since={token}"),
                None => "/_matrix/client/v3/sync?timeout=0".to_owned(),
            };
            let sync = alice.get(&path);
            let body = sync.ok().clone();
            since = body["next_batch"].as_str().map(str::to_owned);
            for event in body["rooms"]["join"][&room_id]["ephemeral"]["events"]
                .as_array()
                .into_iter()
                .flatten()
            {
                if event["type"] == "m.typing"
                    && event["content"]["user_ids"]
                        .as_array()
                        .is_some_and(|u| u.contains(&json!(bob_id)))
                {
                    typing_seen = true;
                }
                if event["type"] == "m.receipt" && event["content"][&event_id]["m.read"].get(&bob_id).is_some() {
                    receipt_seen = true;
                }
            }
            typing_seen && receipt_seen
        }),
        "typing {typing_seen}, receipt {receipt_seen}"
    );
}

#[test]
fn history_from_before_a_join_is_fetched_from_the_other_server() {
    let ca = TestCa::new();
    let (a, _b, alice, bob) = pair(&ca, "127.0.0.53", "127.0.0.54");
    let room = alice.post("/_matrix/client/v3/createRoom", json!({"preset": "public_chat"}));
    let room_id = room.ok()["room_id"].as_str().unwrap().to_owned();
    for n in 0..5 {
        alice
            .put(
                &format!("/_matrix/client/v3/rooms/{room_id}/send/m.room.message/early{n}"),
                json!({"msgtype": "m.text", "body": format!("early {n}")}),
            )
            .ok();
    }
    bob.post(
        &format!("/_matrix/client/v3/join/{room_id}?via={}", a.server_name),
        json!({}),
    )
    .ok();
    // Shared history: paging back from the join reaches the messages sent before it, in order,
    // down to the room's creation.
    let page = bob.get(&format!("/_matrix/client/v3/rooms/{room_id}/messages?dir=b&limit=50"));
    let chunk = page.ok()["chunk"].as_array().unwrap().clone();
    let early: Vec<&str> = chunk.iter().filter_map(|e| e["content"]["body"].as_str()).collect();
    assert_eq!(
        early,
        ["early 4", "early 3", "early 2", "early 1", "early 0"],
        "{}",
        page.ok()
    );
    assert!(chunk.iter().any(|e| e["type"] == "m.room.create"), "{}", page.ok());
    // Nothing new for an incremental sync: history is not news.
    let since = bob.get("/_matrix/client/v3/sync?timeout=0").ok()["next_batch"].clone();
    let later = bob.get(&format!(
        "/_matrix/client/v3/sync?timeout=0&since={}",
        since.as_str().unwrap()
    ));
    assert!(
        later.ok()["rooms"]["join"]
            .get(&room_id)
            .is_none_or(|r| r["timeline"]["events"].as_array().is_none_or(|e| e.is_empty()))
    );
}

#[test]
fn an_invite_to_a_room_this_server_lacks_is_declined_through_the_inviting_server() {
    let ca = TestCa::new();
    let (_a, b, alice, bob) = pair(&ca, "127.0.0.55", "127.0.0.56");
    let room = alice.post("/_matrix/client/v3/createRoom", json!({"preset": "private_chat"}));
    let room_id = room.ok()["room_id"].as_str().unwrap().to_owned();
    let bob_id = format!("@bob:{}", b.server_name);
    alice
        .post(
            &format!("/_matrix/client/v3/rooms/{room_id}/invite"),
            json!({"user_id": bob_id}),
        )
        .ok();
    bob.post(&format!("/_matrix/client/v3/rooms/{room_id}/leave"), json!({}))
        .ok();
    // make_leave/send_leave reached the inviting server at once.
    assert_eq!(membership_of(&alice, &room_id, &bob_id).as_deref(), Some("leave"));
    let sync = bob.get("/_matrix/client/v3/sync?timeout=0");
    assert!(sync.ok()["rooms"]["invite"].get(&room_id).is_none(), "{}", sync.ok());
}
