//! People and calls over HTTP: the user directory, the space hierarchy, OpenID tokens and
//! userinfo, TURN credentials (checked against a real coturn when it is installed) and the
//! MatrixRTC transports with their well-known entry.

use std::{
    io::Write as _,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use base64::Engine as _;
use serde_json::{Value, json};

use crate::support::{Client, TestServer, enc};

const SEARCH: &str = "/_matrix/client/v3/user_directory/search";

fn create_room(c: &Client, body: Value) -> String {
    c.post("/_matrix/client/v3/createRoom", body).ok()["room_id"]
        .as_str()
        .expect("room_id")
        .to_owned()
}

fn join(c: &Client, room: &str) {
    c.post(&format!("/_matrix/client/v3/join/{}", enc(room)), json!({}))
        .ok();
}

fn invite(c: &Client, room: &str, user: &str) {
    c.post(
        &format!("/_matrix/client/v3/rooms/{}/invite", enc(room)),
        json!({"user_id": user}),
    )
    .ok();
}

fn put_state(c: &Client, room: &str, kind: &str, key: &str, content: Value) {
    c.put(
        &format!("/_matrix/client/v3/rooms/{}/state/{kind}/{}", enc(room), enc(key)),
        content,
    )
    .ok();
}

fn set_name(c: &Client, name: &str) {
    c.put(
        &format!("/_matrix/client/v3/profile/{}/displayname", enc(&c.uid())),
        json!({"displayname": name}),
    )
    .ok();
}

/// The user ids a search finds, in order, and `limited`.
fn search(c: &Client, term: &str, limit: Option<u64>) -> (Vec<String>, bool) {
    let mut body = json!({"search_term": term});
    if let Some(limit) = limit {
        body["limit"] = json!(limit);
    }
    let r = c.post(SEARCH, body);
    let body = r.ok();
    let ids = body["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|u| u["user_id"].as_str().unwrap().to_owned())
        .collect();
    (ids, body["limited"].as_bool().expect("limited"))
}

fn found(c: &Client, term: &str) -> Vec<String> {
    search(c, term, None).0
}

fn deactivate(c: &Client, password: &str) {
    let path = "/_matrix/client/v3/account/deactivate";
    let first = c.uia_start("POST", path, json!({}));
    let session = first["session"].as_str().unwrap();
    c.post(path, json!({"auth": c.password_auth(password, Some(session))}))
        .ok();
}

#[test]
fn the_directory_finds_room_sharers_and_public_room_members_and_stays_current() {
    // Loopback with open registration: search_all_users defaults to false.
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    let bob = server.user("bob", "pw");
    let carol = server.user("carol", "pw");
    let dave = server.user("dave", "pw");
    let private = create_room(&alice, json!({"preset": "private_chat"}));
    invite(&alice, &private, &bob.uid());
    join(&bob, &private);
    let public = create_room(&dave, json!({"preset": "public_chat"}));
    join(&carol, &public);
    set_name(&bob, "Jöhn Smith");
    set_name(&carol, "Carol Jones");

    // Bob shares a room, Carol is in a public room (so is Dave, its creator); Erin is nowhere.
    let erin = server.user("erin", "pw");
    assert_eq!(found(&alice, "bob"), [bob.uid()]);
    assert_eq!(found(&alice, "carol"), [carol.uid()]);
    assert!(found(&alice, "erin").is_empty(), "a stranger is not found");
    assert!(found(&erin, "bob").is_empty(), "nor are strangers found by one");
    assert_eq!(found(&erin, "dave"), [dave.uid()], "a public room's members are");

    // Case- and accent-insensitive word prefixes of the display name and the localpart.
    assert_eq!(found(&alice, "jo"), [bob.uid(), carol.uid()], "the room-mate first");
    assert_eq!(found(&alice, "SMI"), [bob.uid()]);
    assert_eq!(found(&alice, "john smi"), [bob.uid()]);
    assert_eq!(found(&alice, "@bob:hearth.test"), [bob.uid()]);
    assert!(found(&alice, "mith").is_empty(), "prefixes of words, not substrings");
    let r = alice.post(SEARCH, json!({"search_term": "bob"}));
    assert_eq!(r.ok()["results"][0]["display_name"], "Jöhn Smith");

    // Profile changes show at once.
    set_name(&bob, "Robert");
    bob.put(
        &format!("/_matrix/client/v3/profile/{}/avatar_url", enc(&bob.uid())),
        json!({"avatar_url": "mxc://hearth.test/face"}),
    )
    .ok();
    assert!(found(&alice, "smi").is_empty());
    let r = alice.post(SEARCH, json!({"search_term": "rob"}));
    assert_eq!(r.ok()["results"][0]["user_id"], bob.uid());
    assert_eq!(r.ok()["results"][0]["avatar_url"], "mxc://hearth.test/face");

    // Leaving the only shared room hides Bob; Carol leaving the public room hides her.
    bob.post(&format!("/_matrix/client/v3/rooms/{}/leave", enc(&private)), json!({}))
        .ok();
    assert!(found(&alice, "rob").is_empty());
    // A room made public later exposes its members.
    let later = create_room(&bob, json!({"preset": "private_chat"}));
    assert!(found(&erin, "rob").is_empty());
    put_state(&bob, &later, "m.room.join_rules", "", json!({"join_rule": "public"}));
    assert_eq!(found(&erin, "rob"), [bob.uid()]);

    // Deactivated users are gone.
    deactivate(&carol, "pw");
    assert!(found(&alice, "carol").is_empty());

    // limit and limited; the search term is required.
    for name in ["zed1", "zed2", "zed3"] {
        let z = server.user(name, "pw");
        join(&z, &public);
    }
    assert_eq!(search(&alice, "zed", Some(2)).0.len(), 2);
    assert!(search(&alice, "zed", Some(2)).1);
    assert_eq!(
        search(&alice, "zed", None),
        (
            vec![
                "@zed1:hearth.test".to_owned(),
                "@zed2:hearth.test".to_owned(),
                "@zed3:hearth.test".to_owned()
            ],
            false
        )
    );
    alice.post(SEARCH, json!({})).expect_err(400, "M_BAD_JSON");
    server
        .client()
        .post(SEARCH, json!({"search_term": "zed"}))
        .expect_err(401, "M_MISSING_TOKEN");
}

#[test]
fn search_all_users_finds_everyone_but_the_searcher_and_survives_a_restart() {
    let mut server = TestServer::start_with(&[("HEARTH_USER_DIRECTORY__SEARCH_ALL_USERS", "true")]);
    let alice = server.user("alice", "pw");
    let stranger = server.user("stranger", "pw");
    set_name(&stranger, "Ängela Merkur");
    assert_eq!(found(&alice, "ange"), [stranger.uid()], "no shared room needed");
    assert!(found(&alice, "alice").is_empty(), "not yourself");
    server.stop();
    server.launch();
    let alice = alice.with_base(&server.base);
    assert_eq!(found(&alice, "merk"), [stranger.uid()], "rebuilt at start");
    let late = server.user("latecomer", "pw");
    assert_eq!(found(&alice, "late"), [late.uid()], "new accounts are found at once");
}

/// A space with `children` (room id, order, suggested) as `m.space.child` state.
fn add_children(c: &Client, space: &str, children: &[(&str, &str, bool)]) {
    for (room, order, suggested) in children {
        put_state(
            c,
            space,
            "m.space.child",
            room,
            json!({"via": ["hearth.test"], "order": order, "suggested": suggested}),
        );
    }
}

fn hierarchy(c: &Client, room: &str, query: &str) -> crate::support::Resp {
    c.get(&format!("/_matrix/client/v1/rooms/{}/hierarchy{query}", enc(room)))
}

fn ids(body: &Value) -> Vec<String> {
    body["rooms"]
        .as_array()
        .expect("rooms")
        .iter()
        .map(|r| r["room_id"].as_str().unwrap().to_owned())
        .collect()
}

fn v(rooms: &[&String]) -> Vec<String> {
    rooms.iter().map(|r| (*r).clone()).collect()
}

fn space(c: &Client, name: &str) -> String {
    create_room(
        c,
        json!({"preset": "public_chat", "name": name, "creation_content": {"type": "m.space"}}),
    )
}

#[test]
fn the_hierarchy_walks_depth_first_with_depth_limits_pages_and_suggestions() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    let root = space(&alice, "Root");
    let a = create_room(&alice, json!({"preset": "public_chat", "name": "A", "topic": "first"}));
    let b = create_room(&alice, json!({"preset": "public_chat", "name": "B"}));
    let sub = space(&alice, "Sub");
    let c = create_room(&alice, json!({"preset": "public_chat", "name": "C"}));
    add_children(&alice, &root, &[(&sub, "c", false), (&a, "a", false), (&b, "b", true)]);
    add_children(&alice, &sub, &[(&c, "a", false)]);
    // A child without a valid `via` does not count.
    let gone = create_room(&alice, json!({"preset": "public_chat"}));
    put_state(&alice, &root, "m.space.child", &gone, json!({"via": []}));

    let all = hierarchy(&alice, &root, "").ok().clone();
    assert_eq!(ids(&all), v(&[&root, &a, &b, &sub, &c]));
    assert!(all.get("next_batch").is_none());
    let first = &all["rooms"][0];
    assert_eq!(first["room_type"], "m.space");
    assert_eq!(first["name"], "Root");
    assert_eq!(first["join_rule"], "public");
    assert_eq!(first["num_joined_members"], 1);
    assert_eq!(first["world_readable"], false);
    assert_eq!(first["guest_can_join"], false);
    let children = first["children_state"].as_array().unwrap();
    assert_eq!(children.len(), 3, "{children:?}");
    assert_eq!(children[0]["type"], "m.space.child");
    assert_eq!(children[0]["state_key"], a.as_str());
    assert_eq!(children[0]["content"]["via"], json!(["hearth.test"]));
    assert!(children[0]["origin_server_ts"].is_u64() && children[0]["sender"] == alice.uid());
    assert_eq!(all["rooms"][1]["topic"], "first");
    assert_eq!(all["rooms"][1]["children_state"], json!([]), "not a space");

    let shallow = hierarchy(&alice, &root, "?max_depth=1").ok().clone();
    assert_eq!(ids(&shallow), v(&[&root, &a, &b, &sub]));
    assert_eq!(ids(hierarchy(&alice, &root, "?max_depth=0").ok()), v(&[&root]));
    assert_eq!(
        ids(hierarchy(&alice, &root, "?suggested_only=true").ok()),
        v(&[&root, &b])
    );

    // Pages of two.
    let mut seen = Vec::new();
    let mut query = "?limit=2".to_owned();
    for _ in 0..5 {
        let page = hierarchy(&alice, &root, &query).ok().clone();
        assert!(ids(&page).len() <= 2);
        seen.extend(ids(&page));
        match page["next_batch"].as_str() {
            Some(token) => query = format!("?limit=2&from={}", enc(token)),
            None => break,
        }
    }
    assert_eq!(seen, v(&[&root, &a, &b, &sub, &c]));

    // Bad and foreign tokens, bad limits.
    let page = hierarchy(&alice, &root, "?limit=2").ok().clone();
    let token = enc(page["next_batch"].as_str().unwrap());
    hierarchy(&alice, &root, "?from=nonsense").expect_err(400, "M_INVALID_PARAM");
    hierarchy(&alice, &root, &format!("?from={token}&max_depth=1")).expect_err(400, "M_INVALID_PARAM");
    hierarchy(&alice, &sub, &format!("?from={token}")).expect_err(400, "M_INVALID_PARAM");
    let bob = server.user("bob", "pw");
    hierarchy(&bob, &root, &format!("?from={token}")).expect_err(400, "M_INVALID_PARAM");
    hierarchy(&alice, &root, "?limit=0").expect_err(400, "M_INVALID_PARAM");
    hierarchy(&alice, &root, "?limit=x").expect_err(400, "M_INVALID_PARAM");
}

#[test]
fn the_hierarchy_shows_only_rooms_the_requester_may_see() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    let bob = server.user("bob", "pw");
    let root = space(&alice, "Team");
    let private = create_room(&alice, json!({"preset": "private_chat", "name": "Secret"}));
    let restricted = create_room(&alice, json!({"preset": "private_chat", "name": "Members"}));
    put_state(
        &alice,
        &restricted,
        "m.room.join_rules",
        "",
        json!({"join_rule": "restricted", "allow": [{"type": "m.room_membership", "room_id": root}]}),
    );
    let knock = create_room(&alice, json!({"preset": "private_chat", "name": "Knock"}));
    put_state(&alice, &knock, "m.room.join_rules", "", json!({"join_rule": "knock"}));
    add_children(
        &alice,
        &root,
        &[(&private, "a", false), (&restricted, "b", false), (&knock, "c", false)],
    );

    assert_eq!(
        ids(hierarchy(&alice, &root, "").ok()),
        v(&[&root, &private, &restricted, &knock])
    );
    // Bob is in no room: the public space and the knockable room only.
    assert_eq!(ids(hierarchy(&bob, &root, "").ok()), v(&[&root, &knock]));
    // Joined to the space, the restricted room admits him.
    join(&bob, &root);
    let page = hierarchy(&bob, &root, "").ok().clone();
    assert_eq!(ids(&page), v(&[&root, &restricted, &knock]));
    assert_eq!(page["rooms"][1]["join_rule"], "restricted");
    assert_eq!(page["rooms"][1]["allowed_room_ids"], json!([root]));
    // The private room is not a root he may walk either; an invite makes it visible.
    hierarchy(&bob, &private, "").expect_err(403, "M_FORBIDDEN");
    invite(&alice, &private, &bob.uid());
    assert_eq!(ids(hierarchy(&bob, &private, "").ok()), v(&[&private]));
    // Unknown rooms are refused like invisible ones (the spec's 403).
    hierarchy(&bob, "!nowhere:hearth.test", "").expect_err(403, "M_FORBIDDEN");
    server
        .client()
        .get(&format!("/_matrix/client/v1/rooms/{}/hierarchy", enc(&root)))
        .expect_err(401, "M_MISSING_TOKEN");
}

fn userinfo(server: &TestServer, token: Option<&str>) -> crate::support::Resp {
    let path = match token {
        Some(t) => format!("/_matrix/federation/v1/openid/userinfo?access_token={}", enc(t)),
        None => "/_matrix/federation/v1/openid/userinfo".to_owned(),
    };
    server.client().get(&path)
}

#[test]
fn openid_tokens_name_their_user_until_they_expire() {
    let mut server = TestServer::start();
    let alice = server.user("alice", "pw");
    let bob = server.user("bob", "pw");
    let path = |user: &str| format!("/_matrix/client/v3/user/{}/openid/request_token", enc(user));
    let r = alice.post(&path(&alice.uid()), json!({}));
    let body = r.ok().clone();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["matrix_server_name"], "hearth.test");
    assert_eq!(body["expires_in"], 3600);
    let token = body["access_token"].as_str().unwrap().to_owned();
    alice.post(&path(&bob.uid()), json!({})).expect_err(403, "M_FORBIDDEN");

    // Userinfo needs no access token of the client API, only the OpenID one.
    assert_eq!(userinfo(&server, Some(&token)).ok()["sub"], alice.uid());
    userinfo(&server, Some("not-a-token")).expect_err(401, "M_UNKNOWN_TOKEN");
    userinfo(&server, Some(alice.token.as_deref().unwrap())).expect_err(401, "M_UNKNOWN_TOKEN");
    userinfo(&server, None).expect_err(400, "M_MISSING_PARAM");

    // Tokens survive a restart; expired ones are refused.
    server.stop();
    {
        let services = server.open_services();
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let user = ruma::UserId::parse(alice.uid()).unwrap();
        rt.block_on(services.openid.insert_for_tests("expired-token", &user, 1_000))
            .unwrap();
    }
    server.launch();
    assert_eq!(userinfo(&server, Some(&token)).ok()["sub"], alice.uid());
    userinfo(&server, Some("expired-token")).expect_err(401, "M_UNKNOWN_TOKEN");

    // A deactivated user's tokens name nobody.
    let alice = alice.with_base(&server.base);
    deactivate(&alice, "pw");
    userinfo(&server, Some(&token)).expect_err(401, "M_UNKNOWN_TOKEN");
}

const TURN: &str = "/_matrix/client/v3/voip/turnServer";

#[test]
fn turn_server_answers_empty_without_configuration() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    assert_eq!(alice.get(TURN).ok(), &json!({}));
    server.client().get(TURN).expect_err(401, "M_MISSING_TOKEN");
}

#[test]
fn turn_server_hands_out_rest_api_or_static_credentials() {
    let uris = r#"["turn:turn.hearth.test:3478?transport=udp", "turn:turn.hearth.test:3478?transport=tcp"]"#;
    let server = TestServer::start_with(&[
        ("HEARTH_VOIP__TURN_URIS", uris),
        ("HEARTH_VOIP__TURN_SHARED_SECRET", "north"),
        ("HEARTH_VOIP__TURN_USER_LIFETIME_SECS", "600"),
    ]);
    let alice = server.user("alice", "pw");
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let body = alice.get(TURN).ok().clone();
    assert_eq!(body["ttl"], 600);
    assert_eq!(body["uris"].as_array().unwrap().len(), 2);
    let username = body["username"].as_str().unwrap();
    let (expiry, user) = username.split_once(':').unwrap();
    assert_eq!(user, alice.uid());
    let expiry: u64 = expiry.parse().unwrap();
    assert!((before + 600..=before + 602).contains(&expiry), "{expiry} vs {before}");
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, b"north");
    let expected = base64::engine::general_purpose::STANDARD.encode(ring::hmac::sign(&key, username.as_bytes()));
    assert_eq!(body["password"], expected);

    let server = TestServer::start_with(&[
        ("HEARTH_VOIP__TURN_URIS", uris),
        ("HEARTH_VOIP__TURN_USERNAME", "team"),
        ("HEARTH_VOIP__TURN_PASSWORD", "s3cret"),
    ]);
    let bob = server.user("bob", "pw");
    let body = bob.get(TURN).ok().clone();
    assert_eq!(
        (body["username"].as_str(), body["password"].as_str()),
        (Some("team"), Some("s3cret"))
    );
    assert_eq!(body["ttl"], 3600);
}

/// A free loopback port (TCP and UDP) at the time of asking.
fn free_port() -> u16 {
    for _ in 0..50 {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = tcp.local_addr().unwrap().port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port");
}

fn on_path(binary: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(binary).is_file()))
}

/// Runs `turnutils_uclient` against the TURN server with these credentials; true if it
/// allocated relays and exchanged packets through them.
fn uclient(port: u16, user: &str, password: &str) -> bool {
    let mut child = Command::new("turnutils_uclient")
        .args(["-y", "-n", "2", "-m", "1", "-u", user, "-w", password, "-p"])
        .arg(port.to_string())
        .arg("127.0.0.1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run turnutils_uclient");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.success();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Stops the TURN server when the test ends, however it ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn coturn_accepts_the_credentials_hearth_hands_out() {
    if !on_path("turnserver") || !on_path("turnutils_uclient") {
        assert!(
            std::env::var_os("HEARTH_TEST_REQUIRE_COTURN").is_none(),
            "coturn not installed, and HEARTH_TEST_REQUIRE_COTURN is set (packaging/deps.sh installs it)"
        );
        // Straight to stderr, past the test harness's capture, so the skip is seen.
        let _ = writeln!(
            std::io::stderr(),
            "coturn_accepts_the_credentials_hearth_hands_out: skipped: coturn not installed (packaging/deps.sh installs it)"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    // Relay ports from a range of their own near the listening port, so parallel runs differ.
    let relay_min = 20_000 + (port % 200) * 100;
    let conf = dir.path().join("turnserver.conf");
    std::fs::write(&conf, "").unwrap();
    let turn = Command::new("turnserver")
        .arg("-c")
        .arg(&conf)
        .args([
            "--listening-ip",
            "127.0.0.1",
            "--relay-ip",
            "127.0.0.1",
            "--listening-port",
        ])
        .arg(port.to_string())
        .args([
            "--min-port",
            &relay_min.to_string(),
            "--max-port",
            &(relay_min + 99).to_string(),
        ])
        .args([
            "--use-auth-secret",
            "--static-auth-secret=north",
            "--realm",
            "hearth.test",
        ])
        .args([
            "--no-tls",
            "--no-dtls",
            "--allow-loopback-peers",
            "--no-cli",
            "--simple-log",
        ])
        .arg("--log-file")
        .arg(dir.path().join("turn.log"))
        .arg("--pidfile")
        .arg(dir.path().join("turn.pid"))
        .arg("--userdb")
        .arg(dir.path().join("turndb"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start turnserver");
    let _turn = KillOnDrop(turn);
    // Wait until it listens.
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "turnserver did not start listening");
        std::thread::sleep(Duration::from_millis(50));
    }

    let uris = format!(r#"["turn:127.0.0.1:{port}?transport=udp"]"#);
    let server = TestServer::start_with(&[
        ("HEARTH_VOIP__TURN_URIS", &uris),
        ("HEARTH_VOIP__TURN_SHARED_SECRET", "north"),
    ]);
    let alice = server.user("alice", "pw");
    let body = alice.get(TURN).ok().clone();
    let (user, password) = (body["username"].as_str().unwrap(), body["password"].as_str().unwrap());
    assert!(uclient(port, user, password), "coturn refused Hearth's credentials");
    assert!(
        !uclient(port, user, "wrong-password"),
        "coturn accepted a wrong password"
    );
}

#[test]
fn rtc_transports_and_the_well_known_rtc_foci_follow_the_configuration() {
    let paths = [
        "/_matrix/client/v1/rtc/transports",
        "/_matrix/client/unstable/org.matrix.msc4143/rtc/transports",
    ];
    let server = TestServer::start_with(&[("HEARTH_WELL_KNOWN__CLIENT", "https://matrix.hearth.test")]);
    let alice = server.user("alice", "pw");
    for path in paths {
        assert_eq!(alice.get(path).ok(), &json!({"rtc_transports": []}));
        server.client().get(path).expect_err(401, "M_MISSING_TOKEN");
    }
    let well_known = server.client().get("/.well-known/matrix/client").ok().clone();
    assert!(well_known.get("org.matrix.msc4143.rtc_foci").is_none(), "{well_known}");

    let transports = r#"[{ type = "livekit", livekit_service_url = "https://livekit-jwt.hearth.test" }]"#;
    let server = TestServer::start_with(&[
        ("HEARTH_WELL_KNOWN__CLIENT", "https://matrix.hearth.test"),
        ("HEARTH_RTC__TRANSPORTS", transports),
    ]);
    let alice = server.user("alice", "pw");
    let expected = json!([{"type": "livekit", "livekit_service_url": "https://livekit-jwt.hearth.test"}]);
    for path in paths {
        assert_eq!(alice.get(path).ok()["rtc_transports"], expected);
    }
    let well_known = server.client().get("/.well-known/matrix/client").ok().clone();
    assert_eq!(well_known["org.matrix.msc4143.rtc_foci"], expected);
    assert_eq!(well_known["m.homeserver"]["base_url"], "https://matrix.hearth.test");
}
