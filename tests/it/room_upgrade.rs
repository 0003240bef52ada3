//! Room upgrades: the replacement room, what it inherits, the tombstone, and who may upgrade.

use serde_json::json;

use crate::{
    rooms::{create_room, send},
    support::{Client, TestServer, enc},
};

fn state(c: &Client, room: &str, kind: &str, key: &str) -> serde_json::Value {
    c.get(&format!(
        "/_matrix/client/v3/rooms/{}/state/{kind}/{}",
        enc(room),
        enc(key)
    ))
    .ok()
    .clone()
}

#[test]
fn upgrade_replaces_the_room() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    let bob = server.user("bob", "pw");
    let eve = server.user("eve", "pw");
    let old = create_room(
        &alice,
        json!({"preset": "public_chat", "room_version": "11", "name": "Old", "topic": "Plans",
               "room_alias_name": "team", "visibility": "public"}),
    );
    let r = |path: &str| format!("/_matrix/client/v3/rooms/{}/{path}", enc(&old));
    bob.post(&r("join"), json!({})).ok();
    eve.post(&r("join"), json!({})).ok();
    alice.post(&r("ban"), json!({"user_id": eve.uid()})).ok();

    bob.post(&r("upgrade"), json!({"new_version": "12"}))
        .expect_err(403, "M_FORBIDDEN");
    alice
        .post(&r("upgrade"), json!({"new_version": "99"}))
        .expect_err(400, "M_UNSUPPORTED_ROOM_VERSION");
    let new = alice.post(&r("upgrade"), json!({"new_version": "12"}));
    let new = new.ok()["replacement_room"].as_str().unwrap().to_owned();
    assert_ne!(new, old);

    let create = state(&alice, &new, "m.room.create", "");
    assert_eq!(create["room_version"], "12");
    assert_eq!(create["predecessor"]["room_id"], old.as_str());
    assert_eq!(state(&alice, &new, "m.room.name", "")["name"], "Old");
    assert_eq!(state(&alice, &new, "m.room.topic", "")["topic"], "Plans");
    assert_eq!(state(&alice, &new, "m.room.join_rules", "")["join_rule"], "public");
    assert_eq!(state(&alice, &new, "m.room.member", &eve.uid())["membership"], "ban");
    let levels = state(&alice, &new, "m.room.power_levels", "");
    assert!(
        levels["users"].get(alice.uid()).is_none(),
        "v12 creators are not listed: {levels}"
    );
    // Creators are above every listed level, so only they may replace the room again.
    assert_eq!(levels["events"]["m.room.tombstone"], 150, "{levels}");

    let tombstone = state(&bob, &old, "m.room.tombstone", "");
    assert_eq!(tombstone["replacement_room"], new.as_str());
    let old_levels = state(&bob, &old, "m.room.power_levels", "");
    assert!(old_levels["events_default"].as_i64().unwrap() >= 50);
    bob.put(
        &r("send/m.room.message/late"),
        json!({"msgtype": "m.text", "body": "hello?"}),
    )
    .expect_err(403, "M_FORBIDDEN");

    // The alias, the canonical alias and the directory listing moved with it.
    let alias = alice.get("/_matrix/client/v3/directory/room/%23team%3Ahearth.test");
    assert_eq!(alias.ok()["room_id"], new.as_str());
    assert_eq!(
        state(&alice, &new, "m.room.canonical_alias", "")["alias"],
        "#team:hearth.test"
    );
    let listed = alice.get(&format!("/_matrix/client/v3/directory/list/room/{}", enc(&new)));
    assert_eq!(listed.ok()["visibility"], "public");

    // Members follow by joining the new room; the banned stay out.
    bob.post(&format!("/_matrix/client/v3/rooms/{}/join", enc(&new)), json!({}))
        .ok();
    send(&bob, &new, "1", "moved");
    eve.post(&format!("/_matrix/client/v3/rooms/{}/join", enc(&new)), json!({}))
        .expect_err(403, "M_FORBIDDEN");
}
