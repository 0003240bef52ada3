//! Federation reads served to other servers: `/event` by server-level history visibility,
//! `/state`, `/state_ids`, `/event_auth`, `/backfill`, `/get_missing_events` and
//! `/timestamp_to_event` refused to a server with no member in the room, unknown rooms and
//! events, `query/directory` and `publicRooms`; between real Hearth servers on loopback,
//! requests signed with `X-Matrix` as the asking server.

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

fn status(answer: &TlsAnswer) -> (u16, String) {
    (answer.status, answer.body["errcode"].as_str().unwrap_or("").to_owned())
}

fn create_room(alice: &Client, body: Value) -> String {
    alice.post("/_matrix/client/v3/createRoom", body).ok()["room_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn send(alice: &Client, room: &str, txn: &str, body: &str) -> String {
    alice
        .put(
            &format!("/_matrix/client/v3/rooms/{}/send/m.room.message/{txn}", enc(room)),
            json!({"msgtype": "m.text", "body": body}),
        )
        .ok()["event_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn visibility_state(visibility: &str) -> Value {
    json!([{"type": "m.room.history_visibility", "state_key": "", "content": {"history_visibility": visibility}}])
}

/// A server with no member in a room: a `world_readable` room's events are served as PDUs,
/// a `joined` room's are 404 as unknown ones; every room read (state, state ids, auth chain,
/// backfill, missing events, timestamp lookup) is 403 in both rooms; unknown rooms are 404;
/// an unsigned request is 401.
#[test]
fn a_server_outside_a_room_reads_only_what_is_world_readable() {
    let ca = TestCa::new();
    let mut a = federated_server(&ca, "127.0.0.71", &[]);
    a.launch();
    let mut b = federated_server(&ca, "127.0.0.72", &[]);
    b.launch();
    let alice = b.user("alice", "secret-password");
    let open = create_room(
        &alice,
        json!({"preset": "public_chat", "initial_state": visibility_state("world_readable")}),
    );
    let closed = create_room(
        &alice,
        json!({"preset": "private_chat", "initial_state": visibility_state("joined")}),
    );
    let open_msg = send(&alice, &open, "t1", "hello world");
    let closed_msg = send(&alice, &closed, "t2", "secret");
    let ask = |method: &str, path: &str, body: Option<Value>| signed(&ca, &a, &b, method, path, body);

    // /event: the world-readable event, as the stored PDU (no client fields).
    let got = ask("GET", &format!("/_matrix/federation/v1/event/{}", enc(&open_msg)), None);
    assert_eq!(got.status, 200, "{}", got.body);
    assert_eq!(got.body["origin"], b.server_name.as_str());
    assert!(got.body["origin_server_ts"].is_u64());
    let pdus = got.body["pdus"].as_array().unwrap();
    assert_eq!(pdus.len(), 1);
    let pdu = &pdus[0];
    assert_eq!(pdu["content"]["body"], "hello world");
    assert_eq!(pdu["room_id"], open.as_str());
    assert!(
        pdu["hashes"]["sha256"].is_string() && pdu["signatures"].is_object(),
        "{pdu}"
    );
    assert!(pdu["auth_events"].is_array() && pdu["prev_events"].is_array() && pdu["depth"].is_u64());
    assert!(
        pdu.get("event_id").is_none() && pdu.get("unsigned").is_none(),
        "a PDU, not the client format: {pdu}"
    );

    // The `joined` room's event is as unknown as an event that does not exist.
    let hidden = ask(
        "GET",
        &format!("/_matrix/federation/v1/event/{}", enc(&closed_msg)),
        None,
    );
    assert_eq!(status(&hidden), (404, "M_NOT_FOUND".into()), "{}", hidden.body);
    let unknown = ask(
        "GET",
        &format!("/_matrix/federation/v1/event/{}", enc("$nosuchevent")),
        None,
    );
    assert_eq!(status(&unknown), (404, "M_NOT_FOUND".into()));

    // Room reads: 403 to a server with no member, whatever the room's history visibility.
    let forbidden = (403, "M_FORBIDDEN".to_owned());
    for (room, msg) in [(&open, &open_msg), (&closed, &closed_msg)] {
        let (r, e) = (enc(room), enc(msg));
        for path in [
            format!("/_matrix/federation/v1/state/{r}?event_id={e}"),
            format!("/_matrix/federation/v1/state_ids/{r}?event_id={e}"),
            format!("/_matrix/federation/v1/event_auth/{r}/{e}"),
            format!("/_matrix/federation/v1/backfill/{r}?v={e}&limit=10"),
            format!("/_matrix/federation/v1/timestamp_to_event/{r}?ts=0&dir=f"),
            // An unknown event of the room: still 403, nothing learnt about the room.
            format!("/_matrix/federation/v1/state_ids/{r}?event_id={}", enc("$nosuchevent")),
        ] {
            assert_eq!(status(&ask("GET", &path, None)), forbidden, "{path}");
        }
        let body = json!({"earliest_events": [], "latest_events": [msg], "limit": 10});
        let missing = ask(
            "POST",
            &format!("/_matrix/federation/v1/get_missing_events/{r}"),
            Some(body),
        );
        assert_eq!(status(&missing), forbidden);
    }

    // Unknown rooms are 404.
    let nowhere = enc(&format!("!nosuchroom:{}", b.server_name));
    let e = enc(&open_msg);
    for path in [
        format!("/_matrix/federation/v1/state/{nowhere}?event_id={e}"),
        format!("/_matrix/federation/v1/state_ids/{nowhere}?event_id={e}"),
        format!("/_matrix/federation/v1/event_auth/{nowhere}/{e}"),
        format!("/_matrix/federation/v1/backfill/{nowhere}?v={e}&limit=10"),
        format!("/_matrix/federation/v1/timestamp_to_event/{nowhere}?ts=0&dir=b"),
    ] {
        assert_eq!(status(&ask("GET", &path, None)), (404, "M_NOT_FOUND".into()), "{path}");
    }
    let body = json!({"earliest_events": [], "latest_events": [open_msg]});
    let missing = ask(
        "POST",
        &format!("/_matrix/federation/v1/get_missing_events/{nowhere}"),
        Some(body),
    );
    assert_eq!(status(&missing), (404, "M_NOT_FOUND".into()));

    // Bad ids are 400; an unsigned request is 401.
    let bad = ask("GET", "/_matrix/federation/v1/state_ids/not-a-room?event_id=x", None);
    assert_eq!(bad.status, 400, "{}", bad.body);
    let unsigned = tls_request(
        ca.client_config(),
        &b.server_name,
        "127.0.0.72",
        &b.server_name,
        "GET",
        &format!("/_matrix/federation/v1/event/{}", enc(&open_msg)),
        &[],
        None,
    )
    .unwrap();
    assert_eq!(status(&unsigned), (401, "M_UNAUTHORIZED".into()));
}

/// `query/directory` resolves a local alias (our server first) and 404s an unknown one;
/// `publicRooms` (GET and POST with a search term) lists a published room and not an
/// unpublished one.
#[test]
fn other_servers_resolve_aliases_and_list_public_rooms() {
    let ca = TestCa::new();
    let mut a = federated_server(&ca, "127.0.0.73", &[]);
    a.launch();
    let mut b = federated_server(&ca, "127.0.0.74", &[]);
    b.launch();
    let alice = b.user("alice", "secret-password");
    let listed = create_room(
        &alice,
        json!({"preset": "public_chat", "room_alias_name": "lounge", "visibility": "public", "name": "The Lounge"}),
    );
    let unlisted = create_room(&alice, json!({"preset": "public_chat", "name": "Back Office"}));
    let ask = |method: &str, path: &str, body: Option<Value>| signed(&ca, &a, &b, method, path, body);

    let alias = enc(&format!("#lounge:{}", b.server_name));
    let found = ask(
        "GET",
        &format!("/_matrix/federation/v1/query/directory?room_alias={alias}"),
        None,
    );
    assert_eq!(found.status, 200, "{}", found.body);
    assert_eq!(found.body["room_id"], listed.as_str());
    assert_eq!(found.body["servers"][0], b.server_name.as_str());
    let unknown = enc(&format!("#nosuchalias:{}", b.server_name));
    let missing = ask(
        "GET",
        &format!("/_matrix/federation/v1/query/directory?room_alias={unknown}"),
        None,
    );
    assert_eq!(status(&missing), (404, "M_NOT_FOUND".into()));

    let rooms_in = |answer: &TlsAnswer| -> Vec<String> {
        answer.body["chunk"]
            .as_array()
            .unwrap_or_else(|| panic!("{}", answer.body))
            .iter()
            .map(|r| r["room_id"].as_str().unwrap().to_owned())
            .collect()
    };
    let list = ask("GET", "/_matrix/federation/v1/publicRooms", None);
    assert_eq!(list.status, 200, "{}", list.body);
    assert_eq!(rooms_in(&list), vec![listed.clone()]);
    assert!(!rooms_in(&list).contains(&unlisted));
    let search = ask(
        "POST",
        "/_matrix/federation/v1/publicRooms",
        Some(json!({"filter": {"generic_search_term": "lounge"}, "limit": 5})),
    );
    assert_eq!(search.status, 200, "{}", search.body);
    assert_eq!(rooms_in(&search), vec![listed.clone()]);
    let none = ask(
        "POST",
        "/_matrix/federation/v1/publicRooms",
        Some(json!({"filter": {"generic_search_term": "no such room"}})),
    );
    assert!(rooms_in(&none).is_empty());
}
