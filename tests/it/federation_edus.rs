//! Federation, part 2, between Hearth servers on loopback: server ACLs applied to inbound
//! PDUs, EDUs, joins and reads; presence both ways (only for the sending server's users who
//! share a room with ours); threaded receipts crossing with their thread id and private ones
//! staying home; remote profiles cached and remote display names shown from member events; and
//! another server's public room list with `server=`, a filter and paging.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{
    Client, TestServer, enc,
    federation::{TestCa, TlsAnswer, federated_server, signing_key_of, tls_request, x_matrix},
};

/// `method path` (with `body`) to `to`, signed as `from`.
fn signed(ca: &TestCa, from: &TestServer, to: &TestServer, method: &str, path: &str, body: Option<Value>) -> TlsAnswer {
    let key = signing_key_of(from);
    let auth = x_matrix(&key, &from.server_name, &to.server_name, method, path, body.as_ref());
    let ip = to.server_name.split(':').next().unwrap();
    let bytes = body.map(|b| serde_json::to_vec(&b).unwrap());
    tls_request(
        ca.client_config(),
        &to.server_name,
        ip,
        &to.server_name,
        method,
        path,
        &[("Authorization", &auth), ("Content-Type", "application/json")],
        bytes.as_deref(),
    )
    .unwrap()
}

/// A transaction of `from` to `to` holding `pdus` and `edus`; the answer.
fn transaction(
    ca: &TestCa,
    from: &TestServer,
    to: &TestServer,
    txn: &str,
    pdus: Vec<Value>,
    edus: Vec<Value>,
) -> TlsAnswer {
    let body = json!({
        "origin": from.server_name,
        "origin_server_ts": 1_700_000_000_000u64,
        "pdus": pdus,
        "edus": edus,
    });
    signed(
        ca,
        from,
        to,
        "PUT",
        &format!("/_matrix/federation/v1/send/{txn}"),
        Some(body),
    )
}

/// Started servers on `ips`, with a user of each (`user{n}` named as given).
fn servers(ca: &TestCa, ips: &[&str], users: &[&str]) -> (Vec<TestServer>, Vec<Client>) {
    let mut started = Vec::new();
    let mut clients = Vec::new();
    for (ip, user) in ips.iter().zip(users) {
        let mut server = federated_server(ca, ip, &[]);
        server.launch();
        clients.push(server.user(user, "secret-password"));
        started.push(server);
    }
    (started, clients)
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

fn create_room(client: &Client, body: Value) -> String {
    client.post("/_matrix/client/v3/createRoom", body).ok()["room_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn join(client: &Client, room_id: &str, via: &str) {
    let joined = client.post(&format!("/_matrix/client/v3/join/{room_id}?via={via}"), json!({}));
    assert_eq!(joined.ok()["room_id"], room_id, "{}", joined.body);
}

fn send(client: &Client, room_id: &str, txn: &str, content: Value) -> String {
    client
        .put(
            &format!("/_matrix/client/v3/rooms/{room_id}/send/m.room.message/{txn}"),
            content,
        )
        .ok()["event_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn text(body: &str) -> Value {
    json!({"msgtype": "m.text", "body": body})
}

/// The bodies of the latest messages of a room as `client` sees them.
fn bodies(client: &Client, room_id: &str) -> Vec<String> {
    let page = client.get(&format!("/_matrix/client/v3/rooms/{room_id}/messages?dir=b&limit=50"));
    page.ok()["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
        .collect()
}

/// Incremental syncs of one client that never change its presence; every answer is kept.
struct Syncer<'a> {
    client: &'a Client,
    since: Option<String>,
    seen: Vec<Value>,
}

impl<'a> Syncer<'a> {
    fn new(client: &'a Client) -> Self {
        Syncer {
            client,
            since: None,
            seen: Vec::new(),
        }
    }

    fn once(&mut self) -> &Value {
        let path = match &self.since {
            Some(token) => format!("/_matrix/client/v3/sync?timeout=0&set_presence=offline&since={token}"),
            None => "/_matrix/client/v3/sync?timeout=0&set_presence=offline".to_owned(),
        };
        let body = self.client.get(&path).ok().clone();
        self.since = body["next_batch"].as_str().map(str::to_owned);
        self.seen.push(body);
        self.seen.last().unwrap()
    }

    /// Every ephemeral event of `room_id` seen so far.
    fn ephemeral(&self, room_id: &str) -> Vec<Value> {
        self.seen
            .iter()
            .flat_map(|s| {
                s["rooms"]["join"][room_id]["ephemeral"]["events"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .collect()
    }

    /// Every presence event seen so far.
    fn presence(&self) -> Vec<Value> {
        self.seen
            .iter()
            .flat_map(|s| s["presence"]["events"].as_array().cloned().unwrap_or_default())
            .collect()
    }
}

fn typing_of(events: &[Value], user: &str) -> bool {
    events.iter().any(|e| {
        e["type"] == "m.typing"
            && e["content"]["user_ids"]
                .as_array()
                .is_some_and(|u| u.contains(&json!(user)))
    })
}

/// The receipt data of `user` for `event_id` of `kind`, if one was seen.
fn receipt_of(events: &[Value], event_id: &str, kind: &str, user: &str) -> Option<Value> {
    events
        .iter()
        .filter(|e| e["type"] == "m.receipt")
        .find_map(|e| e["content"][event_id][kind].get(user).cloned())
}

/// Three servers in one room of A; A's room then bars C by its server ACL: C's PDUs (its own
/// user's real message, resent in a transaction) are refused with the ACL as the reason, its
/// typing and receipt EDUs dropped, its joins and reads refused, while B's message, typing
/// and receipt arrive.
#[test]
fn a_server_barred_by_the_room_acl_is_refused_while_another_is_heard() {
    let ca = TestCa::new();
    let (servers, clients) = servers(
        &ca,
        &["127.0.0.201", "127.0.0.202", "127.0.0.203"],
        &["alice", "bob", "carol"],
    );
    let (a, b, c) = (&servers[0], &servers[1], &servers[2]);
    let (alice, bob, carol) = (&clients[0], &clients[1], &clients[2]);
    let room_id = create_room(alice, json!({"preset": "public_chat"}));
    join(bob, &room_id, &a.server_name);
    join(carol, &room_id, &a.server_name);
    let m0 = send(alice, &room_id, "m0", text("hello all"));
    assert!(eventually(|| bodies(bob, &room_id).contains(&"hello all".to_owned())
        && bodies(carol, &room_id).contains(&"hello all".to_owned())));

    // Before the ACL, C's typing reaches A.
    let carol_id = format!("@carol:{}", c.server_name);
    let bob_id = format!("@bob:{}", b.server_name);
    let typing = |user: &str, room: &str| json!({"edu_type": "m.typing", "content": {"room_id": room, "user_id": user, "typing": true}});
    let answer = transaction(&ca, c, a, "t0", vec![], vec![typing(&carol_id, &room_id)]);
    assert_eq!(answer.status, 200, "{}", answer.body);
    let mut alice_sync = Syncer::new(alice);
    assert!(eventually(|| {
        alice_sync.once();
        typing_of(&alice_sync.ephemeral(&room_id), &carol_id)
    }));
    carol
        .put(
            &format!("/_matrix/client/v3/rooms/{room_id}/typing/{carol_id}"),
            json!({"typing": false}),
        )
        .ok();
    let answer = transaction(
        &ca,
        c,
        a,
        "t1",
        vec![],
        vec![json!({"edu_type": "m.typing", "content": {"room_id": room_id, "user_id": carol_id, "typing": false}})],
    );
    assert_eq!(answer.status, 200);

    let c_host = c.server_name.split(':').next().unwrap().to_owned();
    alice
        .put(
            &format!("/_matrix/client/v3/rooms/{room_id}/state/m.room.server_acl"),
            json!({"allow": ["*"], "deny": [c_host], "allow_ip_literals": true}),
        )
        .ok();
    let has_acl = |client: &Client| {
        client
            .get(&format!("/_matrix/client/v3/rooms/{room_id}/state/m.room.server_acl"))
            .status
            == 200
    };
    assert!(
        eventually(|| has_acl(bob) && has_acl(carol)),
        "the ACL reaches every server"
    );

    // Carol's message: refused by A (and B), the ACL named as the reason.
    let carol_msg = send(carol, &room_id, "c1", text("from carol"));
    let fetched = signed(
        &ca,
        b,
        c,
        "GET",
        &format!("/_matrix/federation/v1/event/{}", enc(&carol_msg)),
        None,
    );
    assert_eq!(fetched.status, 200, "{}", fetched.body);
    let pdu = fetched.body["pdus"][0].clone();
    let receipt = |user: &str, event: &str| json!({"edu_type": "m.receipt", "content": {room_id.as_str(): {"m.read": {user: {"event_ids": [event], "data": {"ts": 1}}}}}});
    let answer = transaction(
        &ca,
        c,
        a,
        "t2",
        vec![pdu],
        vec![typing(&carol_id, &room_id), receipt(&carol_id, &m0)],
    );
    assert_eq!(answer.status, 200, "{}", answer.body);
    let error = answer.body["pdus"][&carol_msg]["error"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(error.contains("server ACL"), "{}", answer.body);

    let dave = c.user("dave", "secret-password");
    join(&dave, &room_id, &a.server_name);

    // Bob's are heard.
    send(bob, &room_id, "b1", text("from bob"));
    bob.put(
        &format!("/_matrix/client/v3/rooms/{room_id}/typing/{bob_id}"),
        json!({"typing": true, "timeout": 20000}),
    )
    .ok();
    bob.post(
        &format!("/_matrix/client/v3/rooms/{room_id}/receipt/m.read/{m0}"),
        json!({}),
    )
    .ok();
    assert!(eventually(|| {
        alice_sync.once();
        let events = alice_sync.ephemeral(&room_id);
        typing_of(&events, &bob_id) && receipt_of(&events, &m0, "m.read", &bob_id).is_some()
    }));
    assert!(eventually(|| bodies(alice, &room_id).contains(&"from bob".to_owned())));
    assert!(!bodies(alice, &room_id).contains(&"from carol".to_owned()));
    let events = alice_sync.ephemeral(&room_id);
    assert!(
        receipt_of(&events, &m0, "m.read", &carol_id).is_none(),
        "C's receipt dropped"
    );
    // A full sync shows who is typing now: not carol (her typing was dropped; the typing
    // stopped before the ACL was the last that counted).
    let now = alice.get("/_matrix/client/v3/sync?timeout=0&set_presence=offline");
    let ephemeral = now.ok()["rooms"]["join"][&room_id]["ephemeral"]["events"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(typing_of(&ephemeral, &bob_id), "{ephemeral:?}");
    assert!(!typing_of(&ephemeral, &carol_id), "C's typing dropped");

    // A join on C (which has the room) is refused by A; C's join templates and reads too,
    // while B still gets a join template and reads.
    let dave_id = format!("@dave:{}", c.server_name);
    assert_eq!(
        alice
            .get(&format!(
                "/_matrix/client/v3/rooms/{room_id}/state/m.room.member/{dave_id}"
            ))
            .status,
        404,
        "C's join never reached A"
    );
    let make_join = |from: &TestServer, user: &str| {
        signed(
            &ca,
            from,
            a,
            "GET",
            &format!(
                "/_matrix/federation/v1/make_join/{room_id}/{}?ver=10&ver=11&ver=12",
                enc(user)
            ),
            None,
        )
    };
    let answer = make_join(c, &format!("@dave:{}", c.server_name));
    assert_eq!(
        (answer.status, answer.body["errcode"].clone()),
        (403, json!("M_FORBIDDEN"))
    );
    let answer = make_join(b, &format!("@erin:{}", b.server_name));
    assert_eq!(answer.status, 200, "{}", answer.body);
    let answer = make_join(c, &format!("@dave:{}", c.server_name));
    assert_eq!(answer.status, 403);
    let answer = signed(
        &ca,
        c,
        a,
        "GET",
        &format!("/_matrix/federation/v1/make_leave/{room_id}/{}", enc(&carol_id)),
        None,
    );
    assert_eq!(answer.status, 403, "{}", answer.body);
    let answer = signed(
        &ca,
        c,
        a,
        "GET",
        &format!("/_matrix/federation/v1/state_ids/{room_id}?event_id={}", enc(&m0)),
        None,
    );
    assert_eq!(answer.status, 403, "{}", answer.body);
    let answer = signed(
        &ca,
        b,
        a,
        "GET",
        &format!("/_matrix/federation/v1/state_ids/{room_id}?event_id={}", enc(&m0)),
        None,
    );
    assert_eq!(answer.status, 200, "{}", answer.body);
}

/// Presence crosses both ways between servers sharing a room; an `m.presence` EDU about a
/// user of another server than the sender, or about a user sharing no room with ours, is
/// ignored.
#[test]
fn presence_crosses_between_servers_sharing_a_room_and_nothing_else_counts() {
    let ca = TestCa::new();
    let (servers, clients) = servers(
        &ca,
        &["127.0.0.204", "127.0.0.205", "127.0.0.206"],
        &["alice", "bob", "carol"],
    );
    let (a, b, c) = (&servers[0], &servers[1], &servers[2]);
    let (alice, bob, carol) = (&clients[0], &clients[1], &clients[2]);
    let alice_id = format!("@alice:{}", a.server_name);
    let bob_id = format!("@bob:{}", b.server_name);
    let carol_id = format!("@carol:{}", c.server_name);
    let room_id = create_room(alice, json!({"preset": "public_chat"}));
    join(bob, &room_id, &a.server_name);

    let presence_of = |events: &[Value], user: &str, status: &str| {
        events
            .iter()
            .any(|e| e["sender"] == user && e["content"]["status_msg"] == status)
    };
    alice
        .put(
            &format!("/_matrix/client/v3/presence/{alice_id}/status"),
            json!({"presence": "online", "status_msg": "at lunch"}),
        )
        .ok();
    let mut bob_sync = Syncer::new(bob);
    assert!(
        eventually(|| {
            bob_sync.once();
            presence_of(&bob_sync.presence(), &alice_id, "at lunch")
        }),
        "A's presence reaches B"
    );
    let seen = bob.get(&format!("/_matrix/client/v3/presence/{alice_id}/status"));
    assert_eq!(seen.ok()["presence"], "online");
    assert_eq!(seen.ok()["status_msg"], "at lunch");

    bob.put(
        &format!("/_matrix/client/v3/presence/{bob_id}/status"),
        json!({"presence": "unavailable", "status_msg": "away"}),
    )
    .ok();
    let mut alice_sync = Syncer::new(alice);
    assert!(
        eventually(|| {
            alice_sync.once();
            presence_of(&alice_sync.presence(), &bob_id, "away")
        }),
        "B's presence reaches A"
    );
    assert_eq!(
        alice.get(&format!("/_matrix/client/v3/presence/{bob_id}/status")).ok()["presence"],
        "unavailable"
    );

    // C speaks for B's user, and for its own user who shares no room with A's: both ignored.
    let push =
        |user: &str, msg: &str| json!({"user_id": user, "presence": "online", "status_msg": msg, "last_active_ago": 5});
    let answer = transaction(
        &ca,
        c,
        a,
        "p1",
        vec![],
        vec![
            json!({"edu_type": "m.presence", "content": {"push": [push(&bob_id, "forged"), push(&carol_id, "lonely")]}}),
        ],
    );
    assert_eq!(answer.status, 200, "{}", answer.body);
    let bob_now = alice.get(&format!("/_matrix/client/v3/presence/{bob_id}/status"));
    assert_eq!(bob_now.ok()["status_msg"], "away");
    join(carol, &room_id, &a.server_name);
    let carol_now = alice.get(&format!("/_matrix/client/v3/presence/{carol_id}/status"));
    assert_ne!(carol_now.ok()["status_msg"], "lonely", "{}", carol_now.body);
    alice_sync.once();
    assert!(!presence_of(&alice_sync.presence(), &carol_id, "lonely"));
    assert!(!presence_of(&alice_sync.presence(), &bob_id, "forged"));

    // Now that they share a room, C's own user's presence counts.
    let answer = transaction(
        &ca,
        c,
        a,
        "p2",
        vec![],
        vec![json!({"edu_type": "m.presence", "content": {"push": [push(&carol_id, "here now")]}})],
    );
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(eventually(|| {
        alice_sync.once();
        presence_of(&alice_sync.presence(), &carol_id, "here now")
    }));

    // A join sends presence both ways: B's new member's to A, A's joined users' to B.
    let dave = a.user("dave", "secret-password");
    let dave_id = format!("@dave:{}", a.server_name);
    dave.put(
        &format!("/_matrix/client/v3/presence/{dave_id}/status"),
        json!({"presence": "online", "status_msg": "early bird"}),
    )
    .ok();
    let erin = b.user("erin", "secret-password");
    let erin_id = format!("@erin:{}", b.server_name);
    erin.put(
        &format!("/_matrix/client/v3/presence/{erin_id}/status"),
        json!({"presence": "online", "status_msg": "erin here"}),
    )
    .ok();
    let dave_room = create_room(&dave, json!({"preset": "public_chat"}));
    join(&erin, &dave_room, &a.server_name);
    let mut dave_sync = Syncer::new(&dave);
    assert!(
        eventually(|| {
            dave_sync.once();
            presence_of(&dave_sync.presence(), &erin_id, "erin here")
        }),
        "the joiner's presence reaches the room's server"
    );
    let mut erin_sync = Syncer::new(&erin);
    assert!(
        eventually(|| {
            erin_sync.once();
            presence_of(&erin_sync.presence(), &dave_id, "early bird")
        }),
        "the room's users' presence reaches the joiner's server"
    );
}

/// A threaded receipt crosses both ways with its thread id; a private receipt stays on its
/// server.
#[test]
fn threaded_receipts_cross_with_their_thread_and_private_ones_do_not() {
    let ca = TestCa::new();
    let (servers, clients) = servers(&ca, &["127.0.0.207", "127.0.0.208"], &["alice", "bob"]);
    let (a, b) = (&servers[0], &servers[1]);
    let (alice, bob) = (&clients[0], &clients[1]);
    let alice_id = format!("@alice:{}", a.server_name);
    let bob_id = format!("@bob:{}", b.server_name);
    let room_id = create_room(alice, json!({"preset": "public_chat"}));
    join(bob, &room_id, &a.server_name);
    let root = send(alice, &room_id, "r", text("root"));
    let reply = send(
        alice,
        &room_id,
        "t",
        json!({"msgtype": "m.text", "body": "in thread",
               "m.relates_to": {"rel_type": "m.thread", "event_id": root}}),
    );
    let later = send(alice, &room_id, "l", text("later"));
    assert!(eventually(|| bodies(bob, &room_id).contains(&"later".to_owned())));

    bob.post(
        &format!("/_matrix/client/v3/rooms/{room_id}/receipt/m.read.private/{later}"),
        json!({}),
    )
    .ok();
    bob.post(
        &format!("/_matrix/client/v3/rooms/{room_id}/receipt/m.read/{reply}"),
        json!({"thread_id": root}),
    )
    .ok();
    let mut alice_sync = Syncer::new(alice);
    assert!(
        eventually(|| {
            alice_sync.once();
            receipt_of(&alice_sync.ephemeral(&room_id), &reply, "m.read", &bob_id)
                .is_some_and(|r| r["thread_id"] == root.as_str())
        }),
        "B's threaded receipt reaches A with its thread"
    );
    let events = alice_sync.ephemeral(&room_id);
    assert!(receipt_of(&events, &later, "m.read.private", &bob_id).is_none());
    assert!(receipt_of(&events, &later, "m.read", &bob_id).is_none());
    // Bob's own server has the private receipt.
    let mut bob_sync = Syncer::new(bob);
    bob_sync.once();
    assert!(receipt_of(&bob_sync.ephemeral(&room_id), &later, "m.read.private", &bob_id).is_some());

    // The other way.
    alice
        .post(
            &format!("/_matrix/client/v3/rooms/{room_id}/receipt/m.read/{reply}"),
            json!({"thread_id": root}),
        )
        .ok();
    assert!(eventually(|| {
        bob_sync.once();
        receipt_of(&bob_sync.ephemeral(&room_id), &reply, "m.read", &alice_id)
            .is_some_and(|r| r["thread_id"] == root.as_str())
    }));
}

/// A remote user's profile is fetched once and then answered from the cache (a rename on its
/// server is not asked for again), while the rename shows at once in the member events both
/// servers serve (`joined_members`, `/members`, the member state).
#[test]
fn remote_profiles_are_cached_and_member_events_carry_remote_names() {
    let ca = TestCa::new();
    let (servers, clients) = servers(&ca, &["127.0.0.209", "127.0.0.210"], &["alice", "bob"]);
    let (a, b) = (&servers[0], &servers[1]);
    let (alice, bob) = (&clients[0], &clients[1]);
    let alice_id = format!("@alice:{}", a.server_name);
    let bob_id = format!("@bob:{}", b.server_name);
    alice
        .put(
            &format!("/_matrix/client/v3/profile/{alice_id}/displayname"),
            json!({"displayname": "Alice of A"}),
        )
        .ok();
    bob.put(
        &format!("/_matrix/client/v3/profile/{bob_id}/displayname"),
        json!({"displayname": "Bob of B"}),
    )
    .ok();
    bob.put(
        &format!("/_matrix/client/v3/profile/{bob_id}/avatar_url"),
        json!({"avatar_url": "mxc://example.org/bob"}),
    )
    .ok();

    let profile = bob.get(&format!("/_matrix/client/v3/profile/{alice_id}"));
    assert_eq!(profile.ok()["displayname"], "Alice of A");
    let room_id = create_room(alice, json!({"preset": "public_chat"}));
    join(bob, &room_id, &a.server_name);

    // B's user as A shows it, from the member event B's server made.
    let joined = alice.get(&format!("/_matrix/client/v3/rooms/{room_id}/joined_members"));
    assert_eq!(
        joined.ok()["joined"][&bob_id]["display_name"],
        "Bob of B",
        "{}",
        joined.body
    );
    assert_eq!(joined.ok()["joined"][&bob_id]["avatar_url"], "mxc://example.org/bob");
    let members = alice.get(&format!("/_matrix/client/v3/rooms/{room_id}/members"));
    let bob_member = members.ok()["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["state_key"] == bob_id.as_str())
        .cloned()
        .unwrap();
    assert_eq!(bob_member["content"]["displayname"], "Bob of B");

    // Each side's user directory finds the other's user by the name of their member event.
    let found = alice.post(
        "/_matrix/client/v3/user_directory/search",
        json!({"search_term": "bob of"}),
    );
    let results = found.ok()["results"].as_array().unwrap().clone();
    assert!(
        results
            .iter()
            .any(|r| r["user_id"] == bob_id.as_str() && r["display_name"] == "Bob of B"),
        "{}",
        found.body
    );
    let found = bob.post(
        "/_matrix/client/v3/user_directory/search",
        json!({"search_term": "alice"}),
    );
    assert!(
        found.ok()["results"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["user_id"] == alice_id.as_str() && r["display_name"] == "Alice of A"),
        "{}",
        found.body
    );

    // Alice renames herself: her member event carries it to B ...
    alice
        .put(
            &format!("/_matrix/client/v3/profile/{alice_id}/displayname"),
            json!({"displayname": "Alice Renamed"}),
        )
        .ok();
    assert!(eventually(|| {
        let joined = bob.get(&format!("/_matrix/client/v3/rooms/{room_id}/joined_members"));
        joined.ok()["joined"][&alice_id]["display_name"] == "Alice Renamed"
    }));
    let state = bob.get(&format!(
        "/_matrix/client/v3/rooms/{room_id}/state/m.room.member/{alice_id}"
    ));
    assert_eq!(state.ok()["displayname"], "Alice Renamed");
    let found = bob.post(
        "/_matrix/client/v3/user_directory/search",
        json!({"search_term": "renamed"}),
    );
    assert_eq!(found.ok()["results"][0]["user_id"], alice_id.as_str(), "{}", found.body);
    // ... while B's profile look-up is answered from its cache without asking A again.
    let profile = bob.get(&format!("/_matrix/client/v3/profile/{alice_id}"));
    assert_eq!(profile.ok()["displayname"], "Alice of A");
    let field = bob.get(&format!("/_matrix/client/v3/profile/{alice_id}/displayname"));
    assert_eq!(field.ok()["displayname"], "Alice of A");
    bob.get(&format!("/_matrix/client/v3/profile/{alice_id}/avatar_url"))
        .expect_err(404, "M_NOT_FOUND");
    // An unknown remote user is asked for (and not found).
    bob.get(&format!("/_matrix/client/v3/profile/@nobody:{}", a.server_name))
        .expect_err(404, "M_NOT_FOUND");
}

/// A client's `publicRooms?server=` goes to that server, filter, `limit` and `since` passed
/// through; a room whose ACL bars the asking server is not listed to it.
#[test]
fn another_servers_public_rooms_are_listed_filtered_and_paged() {
    let ca = TestCa::new();
    let (servers, clients) = servers(&ca, &["127.0.0.211", "127.0.0.212"], &["alice", "bob"]);
    let (a, b) = (&servers[0], &servers[1]);
    let (alice, bob) = (&clients[0], &clients[1]);
    let b_host = b.server_name.split(':').next().unwrap().to_owned();
    for name in ["Gardening club", "Cooking club"] {
        create_room(
            alice,
            json!({"preset": "public_chat", "visibility": "public", "name": name}),
        );
    }
    create_room(
        alice,
        json!({"preset": "public_chat", "visibility": "public", "name": "Secret garden",
               "initial_state": [{"type": "m.room.server_acl", "state_key": "",
                                  "content": {"allow": ["*"], "deny": [b_host], "allow_ip_literals": true}}]}),
    );
    let names = |answer: &Value| -> Vec<String> {
        let mut names: Vec<String> = answer["chunk"]
            .as_array()
            .unwrap_or_else(|| panic!("{answer}"))
            .iter()
            .map(|r| r["name"].as_str().unwrap_or_default().to_owned())
            .collect();
        names.sort();
        names
    };
    let local = alice.get("/_matrix/client/v3/publicRooms");
    assert_eq!(names(local.ok()).len(), 3);

    let a_name = &a.server_name;
    let all = bob.get(&format!("/_matrix/client/v3/publicRooms?server={a_name}"));
    assert_eq!(names(all.ok()), vec!["Cooking club", "Gardening club"], "{}", all.body);
    let filtered = bob.post(
        &format!("/_matrix/client/v3/publicRooms?server={a_name}"),
        json!({"filter": {"generic_search_term": "garden"}}),
    );
    assert_eq!(names(filtered.ok()), vec!["Gardening club"]);

    // Paging one room at a time (a page may come out empty where the barred room was).
    let mut seen = Vec::new();
    let mut since: Option<String> = None;
    for _ in 0..5 {
        let path = match &since {
            Some(token) => format!(
                "/_matrix/client/v3/publicRooms?server={a_name}&limit=1&since={}",
                enc(token)
            ),
            None => format!("/_matrix/client/v3/publicRooms?server={a_name}&limit=1"),
        };
        let page = bob.get(&path).ok().clone();
        assert!(page["chunk"].as_array().unwrap().len() <= 1, "{page}");
        seen.extend(names(&page));
        match page["next_batch"].as_str() {
            Some(next) => since = Some(next.to_owned()),
            None => break,
        }
    }
    seen.sort();
    assert_eq!(seen, vec!["Cooking club", "Gardening club"]);
    assert!(!seen.contains(&"Secret garden".to_owned()));
}
