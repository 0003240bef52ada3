//! The room directory over HTTP: aliases, canonical-alias validation, createRoom's
//! `room_alias_name` and `visibility`, joining by alias, the public room list and room
//! summaries.

use serde_json::{Value, json};

use crate::support::{Client, TestServer, enc};

fn create_room(c: &Client, body: Value) -> String {
    let r = c.post("/_matrix/client/v3/createRoom", body);
    r.ok()["room_id"].as_str().expect("room_id").to_owned()
}

fn alias_path(alias: &str) -> String {
    format!("/_matrix/client/v3/directory/room/{}", enc(alias))
}

fn join(c: &Client, target: &str) -> crate::support::Resp {
    c.post(&format!("/_matrix/client/v3/join/{}", enc(target)), json!({}))
}

fn invite(c: &Client, room: &str, user: &str) {
    c.post(
        &format!("/_matrix/client/v3/rooms/{}/invite", enc(room)),
        json!({"user_id": user}),
    )
    .ok();
}

fn put_state(c: &Client, room: &str, kind: &str, content: Value) -> crate::support::Resp {
    c.put(
        &format!("/_matrix/client/v3/rooms/{}/state/{kind}/", enc(room)),
        content,
    )
}

fn visibility_path(room: &str) -> String {
    format!("/_matrix/client/v3/directory/list/room/{}", enc(room))
}

#[test]
fn aliases_are_created_resolved_listed_and_deleted() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    let bob = server.user("bob", "pw");
    let room = create_room(&alice, json!({}));
    let alias = "#team:hearth.test";

    alice.put(&alias_path(alias), json!({"room_id": room})).ok();
    let got = server.client().get(&alias_path(alias));
    assert_eq!(got.ok()["room_id"], room, "resolving needs no token");
    assert_eq!(got.ok()["servers"], json!(["hearth.test"]));

    alice
        .put(&alias_path(alias), json!({"room_id": room}))
        .expect_err(409, "M_UNKNOWN");
    for bad in ["#team:elsewhere.test", "#two words:hearth.test", "team", "#team"] {
        alice
            .put(&alias_path(bad), json!({"room_id": room}))
            .expect_err(400, "M_INVALID_PARAM");
    }
    alice
        .put(&alias_path("#x:hearth.test"), json!({"room_id": "!nope:hearth.test"}))
        .expect_err(400, "M_UNKNOWN");
    alice
        .put(&alias_path("#x:hearth.test"), json!({}))
        .expect_err(400, "M_BAD_JSON");
    bob.put(&alias_path("#bobs:hearth.test"), json!({"room_id": room}))
        .expect_err(403, "M_FORBIDDEN");
    server
        .client()
        .get(&alias_path("#missing:hearth.test"))
        .expect_err(404, "M_NOT_FOUND");
    server
        .client()
        .get(&alias_path("#far:elsewhere.test"))
        .expect_err(502, "M_UNKNOWN");

    let aliases_path = format!("/_matrix/client/v3/rooms/{}/aliases", enc(&room));
    assert_eq!(alice.get(&aliases_path).ok()["aliases"], json!([alias]));
    bob.get(&aliases_path).expect_err(403, "M_FORBIDDEN");

    // Bob joins (power 0): he may add an alias and delete his own, not Alice's.
    invite(&alice, &room, &bob.uid());
    join(&bob, &room).ok();
    bob.put(&alias_path("#bobs:hearth.test"), json!({"room_id": room})).ok();
    let mut listed: Vec<String> = serde_json::from_value(bob.get(&aliases_path).ok()["aliases"].clone()).unwrap();
    listed.sort();
    assert_eq!(listed, vec!["#bobs:hearth.test", alias]);
    bob.delete(&alias_path(alias), json!({})).expect_err(403, "M_FORBIDDEN");
    bob.delete(&alias_path("#bobs:hearth.test"), json!({})).ok();
    // Alice may delete aliases of others in her room: she can send m.room.canonical_alias.
    bob.put(&alias_path("#bobs2:hearth.test"), json!({"room_id": room}))
        .ok();
    alice.delete(&alias_path("#bobs2:hearth.test"), json!({})).ok();
    alice
        .delete(&alias_path("#bobs2:hearth.test"), json!({}))
        .expect_err(404, "M_NOT_FOUND");
    alice.delete(&alias_path(alias), json!({})).ok();
    alice.get(&alias_path(alias)).expect_err(404, "M_NOT_FOUND");
    assert_eq!(alice.get(&aliases_path).ok()["aliases"], json!([]));
    // A deleted alias is free again.
    alice.put(&alias_path(alias), json!({"room_id": room})).ok();
}

#[test]
fn canonical_alias_content_is_checked_against_the_directory() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    let one = create_room(&alice, json!({}));
    let two = create_room(&alice, json!({}));
    alice.put(&alias_path("#one:hearth.test"), json!({"room_id": one})).ok();
    alice.put(&alias_path("#two:hearth.test"), json!({"room_id": two})).ok();
    alice.put(&alias_path("#uno:hearth.test"), json!({"room_id": one})).ok();

    let kind = "m.room.canonical_alias";
    put_state(
        &alice,
        &one,
        kind,
        json!({"alias": "#one:hearth.test", "alt_aliases": ["#uno:hearth.test"]}),
    )
    .ok();
    for bad in [
        json!({"alias": "#two:hearth.test"}),
        json!({"alias": "#missing:hearth.test"}),
        json!({"alias": "#one:hearth.test", "alt_aliases": ["#two:hearth.test"]}),
    ] {
        put_state(&alice, &one, kind, bad).expect_err(400, "M_BAD_ALIAS");
    }
    for bad in [
        json!({"alias": "not an alias"}),
        json!({"alias": 7}),
        json!({"alt_aliases": "#one:hearth.test"}),
        json!({"alt_aliases": [1]}),
        json!({"alt_aliases": ["one"]}),
    ] {
        put_state(&alice, &one, kind, bad).expect_err(400, "M_INVALID_PARAM");
    }
    // Remote aliases cannot be checked without federation; empty means none.
    put_state(
        &alice,
        &one,
        kind,
        json!({"alias": "", "alt_aliases": ["#far:elsewhere.test"]}),
    )
    .ok();
    put_state(
        &alice,
        &one,
        kind,
        json!({"alias": "#one:hearth.test", "alt_aliases": ["#uno:hearth.test"]}),
    )
    .ok();

    // createRoom's initial_state goes through the same check.
    alice
        .post(
            "/_matrix/client/v3/createRoom",
            json!({"initial_state": [{"type": kind, "content": {"alias": "#one:hearth.test"}}]}),
        )
        .expect_err(400, "M_BAD_ALIAS");

    // Deleting an alias takes it out of the canonical alias event; the rest stays valid.
    alice.delete(&alias_path("#uno:hearth.test"), json!({})).ok();
    let state = alice.get(&format!("/_matrix/client/v3/rooms/{}/state/{kind}/", enc(&one)));
    assert_eq!(state.ok(), &json!({"alias": "#one:hearth.test"}));
    alice.delete(&alias_path("#one:hearth.test"), json!({})).ok();
    let state = alice.get(&format!("/_matrix/client/v3/rooms/{}/state/{kind}/", enc(&one)));
    assert_eq!(state.ok(), &json!({}));
    // When the deleter may not edit the canonical alias (Bob, power 0, deletes the alias he
    // made), the alias is still deleted and stays in the event; since it was already there it
    // is not checked again when the event is edited.
    let bob = server.user("bob", "pw");
    alice
        .post(
            &format!("/_matrix/client/v3/rooms/{}/invite", enc(&two)),
            json!({"user_id": bob.uid()}),
        )
        .ok();
    bob.post(&format!("/_matrix/client/v3/join/{}", enc(&two)), json!({}))
        .ok();
    bob.put(&alias_path("#bobs:hearth.test"), json!({"room_id": two})).ok();
    put_state(
        &alice,
        &two,
        kind,
        json!({"alias": "#two:hearth.test", "alt_aliases": ["#bobs:hearth.test"]}),
    )
    .ok();
    bob.delete(&alias_path("#bobs:hearth.test"), json!({})).ok();
    alice
        .get(&alias_path("#bobs:hearth.test"))
        .expect_err(404, "M_NOT_FOUND");
    let state = alice.get(&format!("/_matrix/client/v3/rooms/{}/state/{kind}/", enc(&two)));
    assert_eq!(state.ok()["alt_aliases"], json!(["#bobs:hearth.test"]));
    put_state(&alice, &two, kind, json!({"alt_aliases": ["#bobs:hearth.test"]})).ok();
    put_state(&alice, &two, kind, json!({"alias": "#bobs:hearth.test"})).expect_err(400, "M_BAD_ALIAS");
}

#[test]
fn create_room_takes_an_alias_and_publishes() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    let bob = server.user("bob", "pw");
    let room = create_room(
        &alice,
        json!({"room_alias_name": "lounge", "visibility": "public", "name": "Lounge"}),
    );
    let alias = "#lounge:hearth.test";
    assert_eq!(alice.get(&alias_path(alias)).ok()["room_id"], room);
    let canonical = alice.get(&format!(
        "/_matrix/client/v3/rooms/{}/state/m.room.canonical_alias/",
        enc(&room)
    ));
    assert_eq!(canonical.ok()["alias"], alias);
    assert_eq!(
        server.client().get(&visibility_path(&room)).ok()["visibility"],
        "public"
    );
    let private = create_room(&alice, json!({}));
    assert_eq!(
        server.client().get(&visibility_path(&private)).ok()["visibility"],
        "private"
    );

    let joined = |c: &Client| {
        c.get("/_matrix/client/v3/joined_rooms").ok()["joined_rooms"]
            .as_array()
            .unwrap()
            .len()
    };
    let before = joined(&alice);
    alice
        .post("/_matrix/client/v3/createRoom", json!({"room_alias_name": "lounge"}))
        .expect_err(400, "M_ROOM_IN_USE");
    for bad in ["a:b", "two words", ""] {
        alice
            .post("/_matrix/client/v3/createRoom", json!({"room_alias_name": bad}))
            .expect_err(400, "M_INVALID_PARAM");
    }
    assert_eq!(joined(&alice), before, "a refused alias leaves no room behind");

    // Joining by alias: local aliases resolve, unknown ones are 404, remote ones need federation.
    assert_eq!(join(&bob, alias).ok()["room_id"], room);
    join(&bob, "#nowhere:hearth.test").expect_err(404, "M_NOT_FOUND");
    join(&bob, "#far:elsewhere.test").expect_err(502, "M_UNKNOWN");
}

#[test]
fn public_room_list_orders_pages_and_filters() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    let bob = server.user("bob", "pw");
    let carol = server.user("carol", "pw");
    // Three published public rooms with 3, 2 and 1 members; one space.
    let big = create_room(
        &alice,
        json!({"visibility": "public", "name": "Big Hall", "topic": "Everyone"}),
    );
    let mid = create_room(
        &alice,
        json!({"visibility": "public", "name": "Garden", "topic": "Plants and FLOWERS", "room_alias_name": "garden"}),
    );
    let space = create_room(
        &alice,
        json!({"visibility": "public", "name": "Space", "creation_content": {"type": "m.space"}}),
    );
    for (who, room) in [(&bob, &big), (&carol, &big), (&bob, &mid)] {
        join(who, room).ok();
    }
    // Not listed: unpublished public rooms, and published invite-only ones.
    create_room(&alice, json!({"preset": "public_chat", "name": "Unlisted"}));
    create_room(
        &alice,
        json!({"visibility": "public", "preset": "private_chat", "name": "Secret"}),
    );

    server
        .client()
        .get("/_matrix/client/v3/publicRooms")
        .expect_err(401, "M_MISSING_TOKEN");
    let all = bob.get("/_matrix/client/v3/publicRooms");
    let all = all.ok();
    let ids: Vec<&str> = all["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["room_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids[0], big);
    assert_eq!(ids[1], mid);
    assert_eq!(ids.len(), 3, "{all}");
    assert!(ids.contains(&space.as_str()));
    assert_eq!(all["total_room_count_estimate"], 3);
    assert!(all.get("next_batch").is_none() && all.get("prev_batch").is_none());
    let entry = &all["chunk"][1];
    assert_eq!(entry["name"], "Garden");
    assert_eq!(entry["topic"], "Plants and FLOWERS");
    assert_eq!(entry["canonical_alias"], "#garden:hearth.test");
    assert_eq!(entry["num_joined_members"], 2);
    assert_eq!(entry["world_readable"], false);
    assert_eq!(entry["guest_can_join"], false);
    // ruma leaves out `public`, the spec's default when the field is absent.
    assert!(entry.get("join_rule").is_none_or(|r| r == "public"), "{entry}");
    assert_eq!(all["chunk"][0]["num_joined_members"], 3);

    // Pages of one, forwards then back.
    let first = bob.get("/_matrix/client/v3/publicRooms?limit=1");
    let first = first.ok();
    assert_eq!(first["chunk"][0]["room_id"], big);
    assert!(first.get("prev_batch").is_none());
    let next = first["next_batch"].as_str().unwrap();
    let second = bob.get(&format!("/_matrix/client/v3/publicRooms?limit=1&since={}", enc(next)));
    let second = second.ok();
    assert_eq!(second["chunk"][0]["room_id"], mid);
    let prev = second["prev_batch"].as_str().unwrap();
    let back = bob.get(&format!("/_matrix/client/v3/publicRooms?limit=1&since={}", enc(prev)));
    assert_eq!(back.ok()["chunk"][0]["room_id"], big);
    let third = bob.post(
        "/_matrix/client/v3/publicRooms",
        json!({"limit": 1, "since": second["next_batch"]}),
    );
    let third = third.ok();
    assert_eq!(third["chunk"][0]["room_id"], space);
    assert!(third.get("next_batch").is_none());
    bob.get("/_matrix/client/v3/publicRooms?since=garbage")
        .expect_err(400, "M_INVALID_PARAM");

    // Filters: a case-insensitive term over name, topic and alias; room types.
    let search = |filter: Value| -> Vec<String> {
        let r = bob.post("/_matrix/client/v3/publicRooms", json!({"filter": filter}));
        r.ok()["chunk"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["room_id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(search(json!({"generic_search_term": "flowers"})), vec![mid.clone()]);
    assert_eq!(search(json!({"generic_search_term": "HALL"})), vec![big.clone()]);
    assert_eq!(search(json!({"generic_search_term": "#GARDEN"})), vec![mid.clone()]);
    assert_eq!(search(json!({"generic_search_term": "nothing"})), Vec::<String>::new());
    assert_eq!(search(json!({"room_types": ["m.space"]})), vec![space.clone()]);
    assert_eq!(search(json!({"room_types": [null]})), vec![big.clone(), mid.clone()]);
    let counted = bob.post(
        "/_matrix/client/v3/publicRooms",
        json!({"filter": {"generic_search_term": "garden"}}),
    );
    assert_eq!(counted.ok()["total_room_count_estimate"], 1);

    // Another server's list needs federation; our own name is fine.
    bob.get("/_matrix/client/v3/publicRooms?server=elsewhere.test")
        .expect_err(403, "M_FORBIDDEN");
    bob.post("/_matrix/client/v3/publicRooms?server=elsewhere.test", json!({}))
        .expect_err(403, "M_FORBIDDEN");
    assert_eq!(
        bob.get("/_matrix/client/v3/publicRooms?server=hearth.test").ok()["chunk"]
            .as_array()
            .unwrap()
            .len(),
        3
    );

    // Withdrawing a room: members without power may not, the room's moderators may.
    bob.put(&visibility_path(&mid), json!({"visibility": "private"}))
        .expect_err(403, "M_FORBIDDEN");
    carol
        .put(&visibility_path(&mid), json!({"visibility": "private"}))
        .expect_err(403, "M_FORBIDDEN");
    alice.put(&visibility_path(&mid), json!({"visibility": "private"})).ok();
    assert_eq!(search(json!({})), vec![big.clone(), space.clone()]);
    alice
        .put(
            &visibility_path("!unknown:hearth.test"),
            json!({"visibility": "public"}),
        )
        .expect_err(404, "M_NOT_FOUND");
    server
        .client()
        .get(&visibility_path("!unknown:hearth.test"))
        .expect_err(404, "M_NOT_FOUND");
    alice
        .put(&visibility_path(&mid), json!({"visibility": "hidden"}))
        .expect_err(400, "M_INVALID_PARAM");
}

#[test]
fn server_admins_manage_any_alias_and_listing() {
    let mut server = TestServer::unstarted(&[]);
    let out = server.admin(&["user", "create", "root", "--admin"], Some("rootpw\n"));
    assert!(out.status.success(), "{out:?}");
    server.launch();
    let alice = server.user("alice", "pw");
    let mut root = server.client();
    root.login("root", "rootpw");
    let room = create_room(&alice, json!({}));
    alice
        .put(&alias_path("#mine:hearth.test"), json!({"room_id": room}))
        .ok();
    let aliases_path = format!("/_matrix/client/v3/rooms/{}/aliases", enc(&room));
    assert_eq!(root.get(&aliases_path).ok()["aliases"], json!(["#mine:hearth.test"]));
    root.put(&alias_path("#root:hearth.test"), json!({"room_id": room}))
        .ok();
    root.put(&visibility_path(&room), json!({"visibility": "public"})).ok();
    root.delete(&alias_path("#mine:hearth.test"), json!({})).ok();
}

#[test]
fn room_summaries_follow_visibility() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    let bob = server.user("bob", "pw");
    let summary_path = |target: &str| format!("/_matrix/client/v1/room_summary/{}", enc(target));

    let public = create_room(
        &alice,
        json!({"preset": "public_chat", "name": "Hall", "topic": "Talk", "room_alias_name": "hall",
               "initial_state": [{"type": "m.room.encryption", "content": {"algorithm": "m.megolm.v1.aes-sha2"}}]}),
    );
    let anonymous = server.client().get(&summary_path(&public));
    let anonymous = anonymous.ok();
    assert_eq!(anonymous["room_id"], public);
    assert_eq!(anonymous["name"], "Hall");
    assert_eq!(anonymous["topic"], "Talk");
    assert_eq!(anonymous["canonical_alias"], "#hall:hearth.test");
    assert_eq!(anonymous["num_joined_members"], 1);
    assert_eq!(anonymous["world_readable"], false);
    assert_eq!(anonymous["guest_can_join"], false);
    assert_eq!(anonymous["room_version"], "12");
    assert_eq!(anonymous["encryption"], "m.megolm.v1.aes-sha2");
    assert_eq!(
        anonymous["join_rule"], "public",
        "always sent, as Synapse does: {anonymous}"
    );
    assert!(anonymous.get("membership").is_none(), "no membership without a token");
    let by_alias = bob.get(&summary_path("#hall:hearth.test"));
    assert_eq!(by_alias.ok()["room_id"], public);
    assert_eq!(by_alias.ok()["membership"], "leave");
    assert_eq!(alice.get(&summary_path(&public)).ok()["membership"], "join");

    // A private room: hidden from outsiders, visible to the invited.
    let private = create_room(&alice, json!({"name": "Den"}));
    bob.get(&summary_path(&private)).expect_err(404, "M_NOT_FOUND");
    server
        .client()
        .get(&summary_path(&private))
        .expect_err(404, "M_NOT_FOUND");
    invite(&alice, &private, &bob.uid());
    let invited = bob.get(&summary_path(&private));
    assert_eq!(invited.ok()["membership"], "invite");
    assert_eq!(invited.ok()["join_rule"], "invite");

    // A restricted room: visible to members of an allowed room.
    let restricted = create_room(
        &alice,
        json!({"initial_state": [{"type": "m.room.join_rules", "content": {
            "join_rule": "restricted",
            "allow": [{"type": "m.room_membership", "room_id": public}]}}]}),
    );
    bob.get(&summary_path(&restricted)).expect_err(404, "M_NOT_FOUND");
    join(&bob, &public).ok();
    let seen = bob.get(&summary_path(&restricted));
    assert_eq!(seen.ok()["join_rule"], "restricted");
    assert_eq!(seen.ok()["allowed_room_ids"], json!([public]));

    // A world-readable room is visible to all.
    let readable = create_room(
        &alice,
        json!({"initial_state": [{"type": "m.room.history_visibility", "content": {"history_visibility": "world_readable"}}]}),
    );
    let r = server.client().get(&summary_path(&readable));
    assert_eq!(r.ok()["world_readable"], true);
    // …and so are its local aliases, to outsiders too.
    alice
        .put(&alias_path("#readable:hearth.test"), json!({"room_id": readable}))
        .ok();
    let aliases = bob.get(&format!("/_matrix/client/v3/rooms/{}/aliases", enc(&readable)));
    assert_eq!(aliases.ok()["aliases"], json!(["#readable:hearth.test"]));

    for missing in ["!nowhere:hearth.test", "#nowhere:hearth.test"] {
        bob.get(&summary_path(missing)).expect_err(404, "M_NOT_FOUND");
    }
    bob.get(&summary_path("nonsense")).expect_err(400, "M_INVALID_PARAM");
}
