//! Transactions to application services (spec, application service API, "Pushing events")
//! and the client-server ping: which events a service gets and which it never sees, ephemeral
//! data and to-device messages for services that ask, delivery in order that survives a
//! service down and a Hearth restart with the same transaction ids, and every ping answer.

use std::{path::Path, time::Duration};

use serde_json::{Value, json};

use crate::support::{
    Client, TestServer,
    appservice::{Mode, Registration, TestAppservice, registration_files},
    enc,
};

const WAIT: Duration = Duration::from_secs(30);

/// A server with the registrations given (files written in `dir`) and short waits.
fn server_with(dir: &Path, registrations: &[&Registration]) -> TestServer {
    let files: Vec<_> = registrations.iter().map(|r| r.write(dir)).collect();
    let files = registration_files(&files);
    TestServer::start_with(&[
        ("HEARTH_APPSERVICES__REGISTRATION_FILES", &files),
        ("HEARTH_TEST_APPSERVICE_TIMINGS_MS", "50,400,1500"),
    ])
}

fn bridge(id: &str, service: &TestAppservice, prefix: &str) -> Registration {
    let mut registration = Registration::new(id, Some(service.url()));
    registration.users = vec![format!("@{prefix}_.*:hearth\\.test")];
    registration
}

fn create_room(c: &Client, body: Value) -> String {
    c.post("/_matrix/client/v3/createRoom", body).ok()["room_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn join(c: &Client, room: &str) -> String {
    c.post(&format!("/_matrix/client/v3/join/{}", enc(room)), json!({}))
        .ok();
    last_event(c, room)
}

fn invite(c: &Client, room: &str, user: &str) {
    c.post(
        &format!("/_matrix/client/v3/rooms/{}/invite", enc(room)),
        json!({"user_id": user}),
    )
    .ok();
}

fn send(c: &Client, room: &str, txn: &str, body: &str) -> String {
    c.put(
        &format!("/_matrix/client/v3/rooms/{}/send/m.room.message/{txn}", enc(room)),
        json!({"msgtype": "m.text", "body": body}),
    )
    .ok()["event_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// The id of the newest event of `room` that `c` sees.
fn last_event(c: &Client, room: &str) -> String {
    let r = c.get(&format!(
        "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=1",
        enc(room)
    ));
    r.ok()["chunk"][0]["event_id"].as_str().unwrap().to_owned()
}

#[test]
fn a_service_gets_exactly_the_events_of_rooms_it_is_in_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let irc = TestAppservice::start();
    let other = TestAppservice::start();
    let mut irc_reg = bridge("irc", &irc, "irc");
    irc_reg.aliases = vec!["#irc_.*:hearth\\.test".into()];
    let other_reg = bridge("other", &other, "other");
    let server = server_with(dir.path(), &[&irc_reg, &other_reg]);
    let alice = server.user("alice", "pw");
    let irc_bob = server.user("irc_bob", "pw");
    let irc_carol = server.user("irc_carol", "pw");
    let other_dan = server.user("other_dan", "pw");

    // A room before and after a namespace user joins it.
    let bridged = create_room(&alice, json!({"preset": "public_chat"}));
    let before_join = send(&alice, &bridged, "b0", "before the bridge joined");
    let bob_join = join(&irc_bob, &bridged);
    let in_bridged = send(&alice, &bridged, "b1", "hello bridge");
    let from_bob = send(&irc_bob, &bridged, "b2", "hello from irc");
    // A room with no namespace user.
    let private = create_room(&alice, json!({}));
    let secret = send(&alice, &private, "p1", "not for bridges");
    // An invite to a namespace user, then what follows it while the user is only invited.
    let invited_room = create_room(&alice, json!({}));
    invite(&alice, &invited_room, "@irc_carol:hearth.test");
    let the_invite = last_event(&alice, &invited_room);
    let after_invite = send(&alice, &invited_room, "i1", "carol has not joined");
    // A room whose alias is in the aliases namespace.
    let aliased = create_room(&alice, json!({"room_alias_name": "irc_chan"}));
    let in_aliased = send(&alice, &aliased, "a1", "room with a bridged alias");
    // Carol joins: from then on the room is bridged.
    let carol_join = join(&irc_carol, &invited_room);
    let marker = send(&alice, &invited_room, "i2", "marker");
    // The other service's own room, for its marker.
    let others = create_room(&alice, json!({"preset": "public_chat"}));
    join(&other_dan, &others);
    let other_marker = send(&alice, &others, "o1", "other marker");

    let expected = [
        bob_join.as_str(),
        in_bridged.as_str(),
        from_bob.as_str(),
        the_invite.as_str(),
        in_aliased.as_str(),
        carol_join.as_str(),
        marker.as_str(),
    ];
    assert!(
        irc.wait_for_events(WAIT, &expected),
        "every event of the bridged rooms: {:?}",
        irc.accepted_event_ids()
    );
    assert!(other.wait_for_events(WAIT, &[&other_marker]));
    let got = irc.accepted_event_ids();
    for never in [&before_join, &secret, &after_invite, &other_marker] {
        assert!(!got.contains(never), "{never} leaked to the irc bridge: {got:?}");
    }
    // In stream order, each once.
    let positions: Vec<usize> = expected
        .iter()
        .map(|id| got.iter().position(|g| g == id).unwrap())
        .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "in order: {got:?}");
    let mut unique = got.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), got.len(), "no event twice: {got:?}");
    // The other service saw none of the irc rooms.
    let other_got = other.accepted_event_ids();
    for id in expected.iter().chain([&secret.as_str()]) {
        assert!(!other_got.iter().any(|g| g == id), "{id} leaked to the other service");
    }

    // The transactions: hs_token in the header, events in client format, no ephemeral fields
    // for a service that did not ask for them.
    for txn in irc.transactions() {
        assert_eq!(txn.authorization.as_deref(), Some("Bearer hs-irc"));
        assert!(txn.txn_id().is_some_and(|id| !id.is_empty()));
        assert!(txn.body.get("ephemeral").is_none(), "{}", txn.body);
        for event in txn.list("events") {
            for field in ["event_id", "room_id", "sender", "type", "content", "origin_server_ts"] {
                assert!(event.get(field).is_some(), "{field} in {event}");
            }
            assert!(
                event.get("signatures").is_none() && event.get("hashes").is_none(),
                "{event}"
            );
        }
    }
    let first_message = irc
        .accepted()
        .iter()
        .flat_map(|t| t.list("events"))
        .find(|e| e["event_id"] == json!(in_bridged))
        .unwrap();
    assert_eq!(first_message["content"]["body"], "hello bridge");
    assert_eq!(first_message["room_id"], json!(bridged));
}

#[test]
fn ephemeral_data_and_to_device_reach_only_services_that_ask() {
    let dir = tempfile::tempdir().unwrap();
    let eph = TestAppservice::start();
    let plain = TestAppservice::start();
    let mut eph_reg = bridge("eph", &eph, "eph");
    eph_reg.ephemeral = true;
    eph_reg.msc3202 = true;
    let plain_reg = bridge("plain", &plain, "plain");
    let server = server_with(dir.path(), &[&eph_reg, &plain_reg]);
    let alice = server.user("alice", "pw");
    let eph_user = server.user("eph_u", "pw");
    let plain_user = server.user("plain_u", "pw");
    let room = create_room(&alice, json!({"preset": "public_chat"}));
    join(&eph_user, &room);
    join(&plain_user, &room);
    // A room the ephemeral service is not in: its typing must not reach it.
    let elsewhere = create_room(&alice, json!({}));

    alice
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/typing/{}",
                enc(&elsewhere),
                enc("@alice:hearth.test")
            ),
            json!({"typing": true, "timeout": 30000}),
        )
        .ok();
    alice
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/typing/{}",
                enc(&room),
                enc("@alice:hearth.test")
            ),
            json!({"typing": true, "timeout": 30000}),
        )
        .ok();
    let message = send(&alice, &room, "m1", "read me");
    alice
        .post(
            &format!(
                "/_matrix/client/v3/rooms/{}/receipt/m.read/{}",
                enc(&room),
                enc(&message)
            ),
            json!({}),
        )
        .ok();
    let device = eph_user.device_id.clone().unwrap();
    alice
        .put(
            "/_matrix/client/v3/sendToDevice/m.test/td1",
            json!({"messages": {
                "@eph_u:hearth.test": {device.as_str(): {"secret": 1}},
                "@alice:hearth.test": {"*": {"secret": 2}},
            }}),
        )
        .ok();

    let ephemeral = |txns: &[crate::support::appservice::Request], field: &str| -> Vec<Value> {
        txns.iter().flat_map(|t| t.list(field)).collect()
    };
    let done = eph.wait_for(WAIT, |_| {
        let txns = eph.accepted();
        let e = ephemeral(&txns, "ephemeral");
        e.iter().any(|x| x["type"] == "m.receipt") && !ephemeral(&txns, "de.sorunome.msc2409.to_device").is_empty()
    });
    assert!(done, "ephemeral data delivered: {:?}", eph.accepted());
    let txns = eph.accepted();
    let events = ephemeral(&txns, "ephemeral");
    assert_eq!(
        events,
        ephemeral(&txns, "de.sorunome.msc2409.ephemeral"),
        "MSC2409's name carries the same"
    );
    let typing: Vec<&Value> = events.iter().filter(|e| e["type"] == "m.typing").collect();
    assert!(!typing.is_empty(), "{events:?}");
    assert!(
        typing.iter().all(|t| t["room_id"] == json!(room)),
        "no typing of other rooms: {typing:?}"
    );
    assert_eq!(typing[0]["content"]["user_ids"], json!(["@alice:hearth.test"]));
    let receipt = events.iter().find(|e| e["type"] == "m.receipt").unwrap();
    assert_eq!(receipt["room_id"], json!(room));
    assert!(
        receipt["content"][&message]["m.read"]["@alice:hearth.test"]["ts"].is_u64(),
        "{receipt}"
    );
    let to_device = ephemeral(&txns, "de.sorunome.msc2409.to_device");
    assert_eq!(to_device, ephemeral(&txns, "to_device"));
    assert_eq!(to_device.len(), 1, "only the namespace user's device: {to_device:?}");
    assert_eq!(to_device[0]["to_user_id"], "@eph_u:hearth.test");
    assert_eq!(to_device[0]["to_device_id"], json!(device));
    assert_eq!(to_device[0]["sender"], "@alice:hearth.test");
    assert_eq!(to_device[0]["type"], "m.test");
    assert_eq!(to_device[0]["content"], json!({"secret": 1}));
    // MSC3202: the key counts of the recipient's devices come with its to-device message.
    let with_message = txns
        .iter()
        .find(|t| !t.list("de.sorunome.msc2409.to_device").is_empty())
        .unwrap();
    let counts = &with_message.body["org.matrix.msc3202.device_one_time_keys_count"];
    assert_eq!(
        counts["@eph_u:hearth.test"][&device]["signed_curve25519"], 0,
        "{counts}"
    );
    let fallback = &with_message.body["org.matrix.msc3202.device_unused_fallback_key_types"];
    assert_eq!(fallback["@eph_u:hearth.test"][&device], json!([]), "{fallback}");

    // The service that did not ask gets the message and nothing ephemeral.
    assert!(plain.wait_for_events(WAIT, &[&message]));
    for txn in plain.transactions() {
        for field in [
            "ephemeral",
            "de.sorunome.msc2409.ephemeral",
            "de.sorunome.msc2409.to_device",
            "org.matrix.msc3202.device_one_time_keys_count",
        ] {
            assert!(txn.body.get(field).is_none(), "{field} sent: {}", txn.body);
        }
    }
}

#[test]
fn a_service_down_gets_every_transaction_afterwards_in_order_also_after_a_restart_and_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let irc = TestAppservice::start();
    let reg = bridge("irc", &irc, "irc");
    let mut server = server_with(dir.path(), &[&reg]);
    let alice = server.user("alice", "pw");
    let bob = server.user("irc_bob", "pw");
    let room = create_room(&alice, json!({"preset": "public_chat"}));
    let join_event = join(&bob, &room);
    assert!(irc.wait_for_events(WAIT, &[&join_event]));
    let delivered_before = irc.accepted().len();

    // The service fails: the same transaction comes back, same id, same body.
    irc.set_mode(Mode::Fail);
    let mut sent = Vec::new();
    for i in 0..5 {
        sent.push(send(&alice, &room, &format!("f{i}"), &format!("while failing {i}")));
    }
    assert!(
        irc.wait_for(WAIT, |r| r.iter().filter(|t| t.status == 503).count() >= 3),
        "retried"
    );
    let failed: Vec<_> = irc.transactions().into_iter().filter(|t| t.status == 503).collect();
    let first_failed = failed[0].clone();
    assert!(
        failed
            .iter()
            .all(|t| t.txn_id() == first_failed.txn_id() && t.body == first_failed.body),
        "a retry keeps its transaction id and body: {failed:?}"
    );

    // Then it is down altogether, and Hearth restarts meanwhile (stopped, then killed).
    irc.stop();
    for i in 0..5 {
        sent.push(send(&alice, &room, &format!("d{i}"), &format!("while down {i}")));
    }
    server.stop();
    server.launch();
    let alice = alice.with_base(&server.base);
    for i in 0..5 {
        sent.push(send(&alice, &room, &format!("r{i}"), &format!("after the restart {i}")));
    }
    // And a crash (SIGKILL) before the service is back.
    server.kill9();
    server.launch();
    let alice = alice.with_base(&server.base);
    for i in 0..3 {
        sent.push(send(&alice, &room, &format!("k{i}"), &format!("after the crash {i}")));
    }
    irc.set_mode(Mode::Answer);
    irc.restart();
    let ids: Vec<&str> = sent.iter().map(String::as_str).collect();
    assert!(
        irc.wait_for_events(Duration::from_secs(60), &ids),
        "every event after the service came back: {:?}",
        irc.accepted_event_ids()
    );
    let accepted = irc.accepted();
    let after: Vec<String> = accepted[delivered_before..]
        .iter()
        .flat_map(|t| t.event_ids())
        .collect();
    assert_eq!(after, sent, "every event once, in order");
    // The transaction that failed before the restart was sent again after it with its id.
    assert_eq!(accepted[delivered_before].txn_id(), first_failed.txn_id());
    assert_eq!(accepted[delivered_before].body, first_failed.body);
    let mut txn_ids: Vec<&str> = accepted.iter().filter_map(|t| t.txn_id()).collect();
    txn_ids.sort();
    txn_ids.dedup();
    assert_eq!(txn_ids.len(), accepted.len(), "a new id for each new transaction");
    assert_eq!(server.open_services_count_queued(), 0);
}

trait Queued {
    fn open_services_count_queued(&mut self) -> usize;
}

impl Queued for TestServer {
    /// The events still queued for `irc`, read from the stopped server's storage.
    fn open_services_count_queued(&mut self) -> usize {
        self.stop();
        let services = self.open_services();
        services.appservices.queued_events("irc").unwrap()
    }
}

#[test]
fn ping_reaches_the_service_and_answers_each_spec_error() {
    let dir = tempfile::tempdir().unwrap();
    let irc = TestAppservice::start();
    let reg = bridge("irc", &irc, "irc");
    let mut nourl = Registration::new("nourl", None);
    nourl.users = vec!["@nourl_.*:hearth\\.test".into()];
    let server = server_with(dir.path(), &[&reg, &nourl]);
    let path = |id: &str| format!("/_matrix/client/v1/appservice/{id}/ping");
    let service = server.client().with_token(Some("as-irc"));

    let r = service.post(&path("irc"), json!({"transaction_id": "t-1"}));
    assert!(r.ok()["duration_ms"].is_u64(), "{}", r.text);
    let pings: Vec<_> = irc
        .received()
        .into_iter()
        .filter(|r| r.path == "/_matrix/app/v1/ping")
        .collect();
    assert_eq!(pings.len(), 1);
    assert_eq!(pings[0].method, "POST");
    assert_eq!(pings[0].authorization.as_deref(), Some("Bearer hs-irc"));
    assert_eq!(pings[0].body, json!({"transaction_id": "t-1"}));
    // The unstable MSC2659 path too.
    service
        .post("/_matrix/client/unstable/fi.mau.msc2659/appservice/irc/ping", json!({}))
        .ok();

    // Only the service's own token.
    service.post(&path("nourl"), json!({})).expect_err(403, "M_FORBIDDEN");
    service.post(&path("nobody"), json!({})).expect_err(403, "M_FORBIDDEN");
    let alice = server.user("alice", "pw");
    alice.post(&path("irc"), json!({})).expect_err(403, "M_FORBIDDEN");
    server
        .client()
        .post(&path("irc"), json!({}))
        .expect_err(401, "M_MISSING_TOKEN");
    server
        .client()
        .with_token(Some("as-nourl"))
        .post(&path("nourl"), json!({}))
        .expect_err(400, "M_URL_NOT_SET");

    irc.set_mode(Mode::Fail);
    let r = service.post(&path("irc"), json!({}));
    r.expect_err(502, "M_BAD_STATUS");
    assert_eq!(r.body["status"], 503, "{}", r.text);
    assert!(
        r.body["body"].as_str().unwrap().contains("down for maintenance"),
        "{}",
        r.text
    );

    irc.set_mode(Mode::Hang);
    service
        .post(&path("irc"), json!({}))
        .expect_err(504, "M_CONNECTION_TIMEOUT");

    irc.stop();
    service
        .post(&path("irc"), json!({}))
        .expect_err(502, "M_CONNECTION_FAILED");
}

/// Events received over federation reach the service of a bridged room like local ones; a
/// remote user's events in a room without namespace users do not.
#[test]
fn events_from_other_servers_reach_the_service_of_a_bridged_room() {
    use crate::support::federation::{TestCa, federated_server};
    let dir = tempfile::tempdir().unwrap();
    let irc = TestAppservice::start();
    let mut reg = Registration::new("irc", Some(irc.url()));
    reg.users = vec!["@irc_.*".into()];
    let files = registration_files(&[reg.write(dir.path())]);
    let ca = TestCa::new();
    let mut a = federated_server(
        &ca,
        "127.0.0.195",
        &[
            ("HEARTH_APPSERVICES__REGISTRATION_FILES", &files),
            ("HEARTH_TEST_APPSERVICE_TIMINGS_MS", "50,400,1500"),
        ],
    );
    a.launch();
    let mut b = federated_server(&ca, "127.0.0.196", &[]);
    b.launch();
    let alice = a.user("alice", "pw");
    let irc_bob = a.user("irc_bob", "pw");
    let carol = b.user("carol", "pw");
    let bridged = create_room(&alice, json!({"preset": "public_chat"}));
    join(&irc_bob, &bridged);
    let plain = create_room(&alice, json!({"preset": "public_chat"}));
    for room in [&bridged, &plain] {
        carol
            .post(
                &format!("/_matrix/client/v3/join/{}?server_name={}", enc(room), a.server_name),
                json!({}),
            )
            .ok();
    }
    let hidden = send(&carol, &plain, "c0", "from afar, unbridged");
    let remote = send(&carol, &bridged, "c1", "from afar");
    let marker = send(&alice, &bridged, "a1", "local after remote");
    assert!(
        irc.wait_for_events(Duration::from_secs(60), &[&remote, &marker]),
        "the remote event reached the bridge: {:?}",
        irc.accepted_event_ids()
    );
    let got = irc.accepted_event_ids();
    assert!(!got.contains(&hidden), "a remote event of an unbridged room leaked");
    let event = irc
        .accepted()
        .iter()
        .flat_map(|t| t.list("events"))
        .find(|e| e["event_id"] == json!(remote))
        .unwrap();
    assert_eq!(event["sender"], json!(carol.user_id.clone().unwrap()));
    assert_eq!(event["content"]["body"], "from afar");
}

/// A room whose id matches the rooms namespace is the service's without any namespace user in
/// it; another room is not.
#[test]
fn a_room_in_the_rooms_namespace_is_bridged_without_members() {
    let dir = tempfile::tempdir().unwrap();
    let irc = TestAppservice::start();
    let mut server = TestServer::start();
    let alice = server.user("alice", "pw");
    let matched = create_room(&alice, json!({}));
    let other = create_room(&alice, json!({}));
    let mut reg = bridge("irc", &irc, "irc");
    reg.rooms = vec![regex_escape(&matched)];
    let files = registration_files(&[reg.write(dir.path())]);
    server.stop();
    server.set_env("HEARTH_APPSERVICES__REGISTRATION_FILES", &files);
    server.set_env("HEARTH_TEST_APPSERVICE_TIMINGS_MS", "50,400,1500");
    server.launch();
    let alice = alice.with_base(&server.base);
    let hidden = send(&alice, &other, "o1", "not bridged");
    let seen = send(&alice, &matched, "m1", "bridged by its id");
    assert!(irc.wait_for_events(WAIT, &[&seen]), "{:?}", irc.accepted_event_ids());
    assert!(!irc.accepted_event_ids().contains(&hidden));
}

fn regex_escape(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_string()
            } else {
                format!("\\{c}")
            }
        })
        .collect()
}
