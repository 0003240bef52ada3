//! Every token Hearth hands out (`/sync` `next_batch`, a room's `prev_batch`, `/messages` and
//! `/context` `start`/`end`) is taken back wherever the spec takes a pagination token, the way
//! clients pass them: Element lists members with `members?at=<next_batch>` before it encrypts,
//! bots page back from `next_batch`. Tokens of another room, from the future, or garbage get a
//! clean 400 `M_INVALID_PARAM`.

use serde_json::{Value, json};

use crate::{
    rooms::{create_room, send},
    support::{Client, TestServer, enc},
};

/// An initial sync with a timeline of `limit` events: (next_batch, the room's prev_batch).
fn sync_tokens(c: &Client, room: &str, limit: u32) -> (String, String) {
    let filter = json!({"room": {"timeline": {"limit": limit}}}).to_string();
    let body = c
        .get(&format!("/_matrix/client/v3/sync?filter={}", enc(&filter)))
        .ok()
        .clone();
    let prev = body["rooms"]["join"][room]["timeline"]["prev_batch"]
        .as_str()
        .expect("prev_batch")
        .to_owned();
    (body["next_batch"].as_str().unwrap().to_owned(), prev)
}

fn messages(c: &Client, room: &str, query: &str) -> Value {
    c.get(&format!("/_matrix/client/v3/rooms/{}/messages?{query}", enc(room)))
        .ok()
        .clone()
}

fn bodies(page: &Value) -> Vec<String> {
    crate::room_access::bodies(&page["chunk"])
}

fn member_ids(page: &Value) -> Vec<String> {
    let mut ids: Vec<String> = page["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["state_key"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

fn members_path(room: &str, query: &str) -> String {
    format!("/_matrix/client/v3/rooms/{}/members?{query}", enc(room))
}

#[test]
fn sync_tokens_page_messages_and_list_members() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    let bob = server.user("bob", "pw");
    let room = create_room(&alice, json!({"preset": "public_chat"}));
    bob.post(&format!("/_matrix/client/v3/join/{}", enc(&room)), json!({}))
        .ok();
    for i in 1..=5 {
        send(&alice, &room, &format!("t{i}"), &format!("m{i}"));
    }
    let (next_batch, prev_batch) = sync_tokens(&alice, &room, 2);

    // What Element asks before sending into an encrypted room.
    let members = alice.get(&members_path(
        &room,
        &format!("not_membership=leave&at={}", enc(&next_batch)),
    ));
    assert_eq!(member_ids(members.ok()), {
        let mut v = vec![alice.uid(), bob.uid()];
        v.sort();
        v
    });
    alice
        .get(&members_path(&room, &format!("at={}", enc(&prev_batch))))
        .ok();

    // Paging back from the sync's end gives the newest events; from the timeline's
    // prev_batch, the ones before the timeline.
    let back = messages(&alice, &room, &format!("dir=b&limit=3&from={}", enc(&next_batch)));
    assert_eq!(bodies(&back), ["m5", "m4", "m3"]);
    let before = messages(&alice, &room, &format!("dir=b&limit=2&from={}", enc(&prev_batch)));
    assert_eq!(bodies(&before), ["m3", "m2"]);
    // `end` of one page starts the next; `to` takes a sync token too.
    let end = back["end"].as_str().unwrap();
    let next = messages(&alice, &room, &format!("dir=b&limit=2&from={}", enc(end)));
    assert_eq!(bodies(&next), ["m2", "m1"]);
    let bounded = messages(
        &alice,
        &room,
        &format!("dir=b&from={}&to={}", enc(&next_batch), enc(end)),
    );
    assert_eq!(bodies(&bounded), ["m5", "m4", "m3"]);

    // Forwards from the sync's end: nothing yet, then what was sent since.
    let ahead = messages(&alice, &room, &format!("dir=f&from={}", enc(&next_batch)));
    assert!(bodies(&ahead).is_empty(), "{ahead}");
    send(&alice, &room, "t6", "m6");
    let ahead = messages(&alice, &room, &format!("dir=f&from={}", enc(&next_batch)));
    assert_eq!(bodies(&ahead), ["m6"]);

    // `/context` tokens page on from either side of the event.
    let m3 = back["chunk"][2]["event_id"].as_str().unwrap().to_owned();
    let context = alice
        .get(&format!(
            "/_matrix/client/v3/rooms/{}/context/{}?limit=2",
            enc(&room),
            enc(&m3)
        ))
        .ok()
        .clone();
    let start = context["start"].as_str().unwrap();
    let older = messages(&alice, &room, &format!("dir=b&limit=1&from={}", enc(start)));
    assert_eq!(bodies(&older), ["m1"], "{context}");
    let end = context["end"].as_str().unwrap();
    let newer = messages(&alice, &room, &format!("dir=f&limit=1&from={}", enc(end)));
    assert_eq!(bodies(&newer), ["m5"], "{context}");
    alice.get(&members_path(&room, &format!("at={}", enc(start)))).ok();

    // /sync takes its own tokens, and a room pagination token there is a clean 400.
    alice
        .get(&format!("/_matrix/client/v3/sync?timeout=0&since={}", enc(&next_batch)))
        .ok();
    alice
        .get(&format!("/_matrix/client/v3/sync?timeout=0&since={}", enc(&prev_batch)))
        .expect_err(400, "M_INVALID_PARAM");
}

#[test]
fn foreign_future_and_malformed_tokens_are_refused() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    let room = create_room(&alice, json!({}));
    let other = create_room(&alice, json!({}));
    send(&alice, &room, "t1", "hello");
    let (next_batch, prev_batch) = sync_tokens(&alice, &room, 1);
    let page = messages(&alice, &room, "dir=b&limit=1");
    let end = page["end"].as_str().unwrap().to_owned();

    // A room token belongs to its room; a sync token names a point in every room.
    for token in [&prev_batch, &end] {
        let r = alice.get(&format!(
            "/_matrix/client/v3/rooms/{}/messages?dir=b&from={}",
            enc(&other),
            enc(token)
        ));
        r.expect_err(400, "M_INVALID_PARAM");
        assert!(r.body["error"].as_str().unwrap().contains("from"), "{}", r.text);
        alice
            .get(&members_path(&other, &format!("at={}", enc(token))))
            .expect_err(400, "M_INVALID_PARAM");
    }
    messages(&alice, &other, &format!("dir=b&from={}", enc(&next_batch)));
    alice
        .get(&members_path(&other, &format!("at={}", enc(&next_batch))))
        .ok();

    // Tokens this server never handed out: from the future, or not a token at all.
    let future = ["s999999999_e0", "t999999999_r1", "999999999"];
    let garbage = [
        "abc".to_owned(),
        "s1".to_owned(),
        "+5".to_owned(),
        "s-1_e2".to_owned(),
        "t1_r".to_owned(),
        "s18446744073709551616_e0".to_owned(),
        "%F0%9F%99%82".to_owned(),
        "x".repeat(20_000),
    ];
    let bad: Vec<String> = future.iter().map(|s| s.to_string()).chain(garbage).collect();
    for token in &bad {
        let token = if token.starts_with('%') {
            token.clone()
        } else {
            enc(token)
        };
        for path in [
            format!("/_matrix/client/v3/rooms/{}/messages?dir=b&from={token}", enc(&room)),
            format!("/_matrix/client/v3/rooms/{}/messages?dir=f&to={token}", enc(&room)),
            members_path(&room, &format!("at={token}")),
            format!("/_matrix/client/v3/sync?timeout=0&since={token}"),
            format!("/_matrix/client/v3/keys/changes?from={token}&to={}", enc(&next_batch)),
        ] {
            let r = alice.get(&path);
            assert_eq!(r.status, 400, "{path}: {}", r.text);
            assert_eq!(r.errcode(), "M_INVALID_PARAM", "{path}: {}", r.text);
            assert!(r.text.len() < 1000, "error echoes the whole token: {}", r.text.len());
        }
    }

    // A bare position, the shape Hearth handed out before, still reads.
    let legacy = messages(&alice, &room, "dir=b&limit=1&from=1");
    assert!(legacy["chunk"].is_array());
    assert!(server.is_running());
}

#[test]
fn members_at_a_point_the_reader_may_not_see_is_refused() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    let bob = server.user("bob", "pw");
    let room = create_room(&alice, json!({"preset": "public_chat"}));
    alice
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/state/m.room.history_visibility/",
                enc(&room)
            ),
            json!({"history_visibility": "joined"}),
        )
        .ok();
    send(&alice, &room, "t1", "before bob");
    let (before_bob, _) = sync_tokens(&alice, &room, 1);
    bob.post(&format!("/_matrix/client/v3/join/{}", enc(&room)), json!({}))
        .ok();
    let (after_bob, _) = sync_tokens(&bob, &room, 1);

    // Bob joined after that point and history is `joined`: the member list then is not his.
    bob.get(&members_path(&room, &format!("at={}", enc(&before_bob))))
        .expect_err(403, "M_FORBIDDEN");
    let now = bob.get(&members_path(&room, &format!("at={}", enc(&after_bob))));
    assert!(member_ids(now.ok()).contains(&bob.uid()));
    // Alice was there.
    let then = alice.get(&members_path(&room, &format!("at={}", enc(&before_bob))));
    assert_eq!(member_ids(then.ok()), [alice.uid()]);

    // A former member reads the list as it was when they left, whatever the token.
    bob.post(&format!("/_matrix/client/v3/rooms/{}/leave", enc(&room)), json!({}))
        .ok();
    let carol = server.user("carol", "pw");
    carol
        .post(&format!("/_matrix/client/v3/join/{}", enc(&room)), json!({}))
        .ok();
    let (latest, _) = sync_tokens(&alice, &room, 1);
    let left = bob.get(&members_path(&room, &format!("at={}", enc(&latest))));
    assert!(!member_ids(left.ok()).contains(&carol.uid()), "{}", left.text);
}
