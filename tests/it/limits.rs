//! Hardening (issue 12): the client address behind reverse proxies, rate limits on sends,
//! to-device messages, key uploads and the public room list, the one-time key cap, and the
//! public room list's cache following the rooms it shows.

use serde_json::{Value, json};

use crate::{
    rooms::create_room,
    support::{Client, Resp, TestServer, enc},
};

fn login_from(c: &Client, forwarded_for: &str) -> Resp {
    let body =
        json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "nobody"}, "password": "pw"});
    c.raw_with(
        "POST",
        "/_matrix/client/v3/login",
        Some(body.to_string().as_bytes()),
        &[("Content-Type", "application/json"), ("X-Forwarded-For", forwarded_for)],
    )
}

const STRICT_LOGIN: [(&str, &str); 3] = [
    ("HEARTH_RATE_LIMITS__ENABLED", "true"),
    ("HEARTH_RATE_LIMITS__LOGIN__PER_SECOND", "0.01"),
    ("HEARTH_RATE_LIMITS__LOGIN__BURST", "2"),
];

/// Issue 12, item 6: a client that writes its own `X-Forwarded-For` is still counted by its
/// connection's address.
#[test]
fn rate_limits_ignore_forwarded_headers_from_untrusted_peers() {
    let server = TestServer::start_with(&STRICT_LOGIN);
    let c = server.client();
    login_from(&c, "198.51.100.1").expect_err(403, "M_FORBIDDEN");
    login_from(&c, "198.51.100.2").expect_err(403, "M_FORBIDDEN");
    login_from(&c, "198.51.100.3").expect_err(429, "M_LIMIT_EXCEEDED");
    let forwarded = c.raw_with(
        "POST",
        "/_matrix/client/v3/login",
        Some(br#"{"type":"m.login.password","identifier":{"type":"m.id.user","user":"x"},"password":"pw"}"#),
        &[("Content-Type", "application/json"), ("Forwarded", "for=198.51.100.4")],
    );
    forwarded.expect_err(429, "M_LIMIT_EXCEEDED");
}

/// Behind a configured proxy the forwarding header names the client: each client has its own
/// bucket, and what a client wrote before the proxy's own entry is not believed.
#[test]
fn forwarded_headers_name_the_client_behind_a_trusted_proxy() {
    let mut env = STRICT_LOGIN.to_vec();
    env.push(("HEARTH_TRUSTED_PROXIES", r#"["127.0.0.1", "::1"]"#));
    let server = TestServer::start_with(&env);
    let c = server.client();
    login_from(&c, "198.51.100.1").expect_err(403, "M_FORBIDDEN");
    login_from(&c, "198.51.100.1").expect_err(403, "M_FORBIDDEN");
    login_from(&c, "198.51.100.1").expect_err(429, "M_LIMIT_EXCEEDED");
    // Another client behind the proxy is not held back by the first.
    login_from(&c, "198.51.100.2").expect_err(403, "M_FORBIDDEN");
    // The first client prepending addresses of its own is still the first client.
    login_from(&c, "203.0.113.9, 198.51.100.1").expect_err(429, "M_LIMIT_EXCEEDED");
}

fn limited(name: &str) -> Vec<(String, String)> {
    let section = name.to_ascii_uppercase();
    vec![
        ("HEARTH_RATE_LIMITS__ENABLED".into(), "true".into()),
        (format!("HEARTH_RATE_LIMITS__{section}__PER_SECOND"), "0.01".into()),
        (format!("HEARTH_RATE_LIMITS__{section}__BURST"), "3".into()),
    ]
}

fn start_limited(name: &str) -> TestServer {
    let env = limited(name);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    TestServer::start_with(&env)
}

#[track_caller]
fn assert_limited(r: &Resp) {
    r.expect_err(429, "M_LIMIT_EXCEEDED");
    assert!(r.body["retry_after_ms"].as_u64().is_some_and(|ms| ms > 0), "{}", r.text);
}

/// Issue 12, item 6: sending room events (`/send`, state `PUT`, `/redact`) is limited per user,
/// as Synapse's `rc_message`; other users and other endpoints are not held back.
#[test]
fn sends_are_rate_limited_per_user() {
    let server = start_limited("message");
    let alice = server.user("alice", "pw");
    let bob = server.user("bob", "pw");
    let room = enc(&create_room(&alice, json!({"preset": "public_chat"})));
    let send = |c: &Client, txn: &str| {
        c.put(
            &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/{txn}"),
            json!({"msgtype": "m.text", "body": "hi"}),
        )
    };
    let first = send(&alice, "t1").ok()["event_id"].as_str().unwrap().to_owned();
    alice
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/state/m.room.topic/"),
            json!({"topic": "t"}),
        )
        .ok();
    alice
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/redact/{}/r1", enc(&first)),
            json!({}),
        )
        .ok();
    assert_limited(&send(&alice, "t2"));
    assert_limited(&alice.put(
        &format!("/_matrix/client/v3/rooms/{room}/state/m.room.topic/"),
        json!({"topic": "u"}),
    ));
    assert_limited(&alice.put(
        &format!("/_matrix/client/v3/rooms/{room}/redact/{}/r2", enc(&first)),
        json!({}),
    ));
    bob.post(&format!("/_matrix/client/v3/join/{room}"), json!({})).ok();
    send(&bob, "b1").ok();
    alice.get("/_matrix/client/v3/account/whoami").ok();
}

/// Issue 12, item 6: `/sendToDevice` and `/keys/upload` are limited per user.
#[test]
fn to_device_sends_and_key_uploads_are_rate_limited_per_user() {
    for (class, path, body) in [
        (
            "to_device",
            "/_matrix/client/v3/sendToDevice/m.test/{txn}",
            json!({"messages": {"@alice:hearth.test": {"*": {"n": 1}}}}),
        ),
        ("key_upload", "/_matrix/client/v3/keys/upload", json!({})),
    ] {
        let server = start_limited(class);
        let alice = server.user("alice", "pw");
        let bob = server.user("bob", "pw");
        let call = |c: &Client, n: u32| {
            let path = path.replace("{txn}", &format!("t{n}"));
            match class {
                "to_device" => c.put(&path, body.clone()),
                _ => c.post(&path, body.clone()),
            }
        };
        for n in 0..3 {
            call(&alice, n).ok();
        }
        assert_limited(&call(&alice, 3));
        call(&bob, 0).ok();
    }
}

/// Issue 12, item 8: the public room list is rate-limited.
#[test]
fn public_room_list_is_rate_limited() {
    let server = start_limited("public_rooms");
    let alice = server.user("alice", "pw");
    for _ in 0..2 {
        alice.get("/_matrix/client/v3/publicRooms").ok();
    }
    alice.post("/_matrix/client/v3/publicRooms", json!({})).ok();
    assert_limited(&alice.get("/_matrix/client/v3/publicRooms"));
    assert_limited(&alice.post("/_matrix/client/v3/publicRooms", json!({})));
}

fn one_time_keys(from: u32, to: u32) -> Value {
    let keys: serde_json::Map<String, Value> = (from..to)
        .map(|n| (format!("signed_curve25519:K{n:05}"), json!("a2V5")))
        .collect();
    json!({ "one_time_keys": keys })
}

/// Issue 12, item 7: a device holds at most 500 unclaimed one-time keys (as Synapse); an
/// upload past that is refused whole, and claims make room again.
#[test]
fn one_time_keys_are_capped_per_device() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    let upload = |body: Value| alice.post("/_matrix/client/v3/keys/upload", body);
    for (from, to) in [(0, 200), (200, 400), (400, 500)] {
        let r = upload(one_time_keys(from, to));
        assert_eq!(r.ok()["one_time_key_counts"]["signed_curve25519"], to, "{}", r.text);
    }
    upload(one_time_keys(500, 501)).expect_err(400, "M_INVALID_PARAM");
    // Keys already held may be uploaded again (a retried request), nothing new is stored.
    let again = upload(one_time_keys(0, 10));
    assert_eq!(again.ok()["one_time_key_counts"]["signed_curve25519"], 500);
    let device = alice.device_id.clone().unwrap();
    let claimed = alice.post(
        "/_matrix/client/v3/keys/claim",
        json!({"one_time_keys": {alice.uid(): {&device: "signed_curve25519"}}}),
    );
    let claimed = claimed.ok();
    assert_eq!(
        claimed["one_time_keys"][alice.uid()][&device]
            .as_object()
            .map(|keys| keys.keys().cloned().collect::<Vec<_>>()),
        Some(vec!["signed_curve25519:K00000".to_owned()]),
        "claims hand out keys in key-id order: {claimed}"
    );
    let r = upload(one_time_keys(500, 501));
    assert_eq!(r.ok()["one_time_key_counts"]["signed_curve25519"], 500);
}

fn public_rooms(c: &Client) -> Vec<Value> {
    c.get("/_matrix/client/v3/publicRooms").ok()["chunk"]
        .as_array()
        .unwrap()
        .clone()
}

/// Issue 12, item 8: the public room list is cached, and the cache follows every change of
/// what it shows: state, members, redactions, publishing.
#[test]
fn public_room_list_follows_changes_of_published_rooms() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    let bob = server.user("bob", "pw");
    let room = create_room(
        &alice,
        json!({"visibility": "public", "preset": "public_chat", "name": "First"}),
    );
    let r = enc(&room);
    let list = public_rooms(&bob);
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["name"], "First");
    assert_eq!(list[0]["num_joined_members"], 1);

    let name_event = alice
        .put(
            &format!("/_matrix/client/v3/rooms/{r}/state/m.room.name/"),
            json!({"name": "Second"}),
        )
        .ok()["event_id"]
        .as_str()
        .unwrap()
        .to_owned();
    alice
        .put(
            &format!("/_matrix/client/v3/rooms/{r}/state/m.room.topic/"),
            json!({"topic": "News"}),
        )
        .ok();
    let list = public_rooms(&bob);
    assert_eq!(
        (&list[0]["name"], &list[0]["topic"]),
        (&json!("Second"), &json!("News"))
    );

    bob.post(&format!("/_matrix/client/v3/join/{r}"), json!({})).ok();
    assert_eq!(public_rooms(&bob)[0]["num_joined_members"], 2);

    alice
        .put(
            &format!("/_matrix/client/v3/rooms/{r}/redact/{}/x", enc(&name_event)),
            json!({}),
        )
        .ok();
    assert!(
        public_rooms(&bob)[0].get("name").is_none(),
        "a redacted name is not shown"
    );

    // Invite-only: off the list. Public again: back on it.
    alice
        .put(
            &format!("/_matrix/client/v3/rooms/{r}/state/m.room.join_rules/"),
            json!({"join_rule": "invite"}),
        )
        .ok();
    assert!(public_rooms(&bob).is_empty());
    alice
        .put(
            &format!("/_matrix/client/v3/rooms/{r}/state/m.room.join_rules/"),
            json!({"join_rule": "public"}),
        )
        .ok();
    assert_eq!(public_rooms(&bob).len(), 1);

    let visibility = format!("/_matrix/client/v3/directory/list/room/{r}");
    alice.put(&visibility, json!({"visibility": "private"})).ok();
    assert!(public_rooms(&bob).is_empty());
    alice.put(&visibility, json!({"visibility": "public"})).ok();
    assert_eq!(public_rooms(&bob).len(), 1);

    bob.post(&format!("/_matrix/client/v3/rooms/{r}/leave"), json!({})).ok();
    assert_eq!(public_rooms(&bob)[0]["num_joined_members"], 1);
}
