//! Event relationships over HTTP: `/relations` with each parameter and paging both ways,
//! recursion, history visibility; bundled aggregations (`m.replace` validity, `m.thread`,
//! `m.reference`) on `/event`, `/messages`, `/context`, `/sync`; `/threads`; per-thread unread
//! counts with threaded receipts; bad tokens and parameters.

use serde_json::{Value, json};

use crate::{
    rooms::{create_room, send},
    support::{Client, TestServer, enc},
};

/// Sends an event of type `kind` with `content`; returns its id.
fn send_event(c: &Client, room: &str, kind: &str, txn: &str, content: Value) -> String {
    let path = format!("/_matrix/client/v3/rooms/{}/send/{kind}/{txn}", enc(room));
    c.put(&path, content).ok()["event_id"].as_str().unwrap().to_owned()
}

fn related(body: &str, rel_type: &str, parent: &str) -> Value {
    json!({"msgtype": "m.text", "body": body, "m.relates_to": {"rel_type": rel_type, "event_id": parent}})
}

fn thread_reply(c: &Client, room: &str, txn: &str, root: &str, body: &str) -> String {
    send_event(c, room, "m.room.message", txn, related(body, "m.thread", root))
}

fn edit(c: &Client, room: &str, txn: &str, target: &str, body: &str) -> String {
    let mut content = related(&format!("* {body}"), "m.replace", target);
    content["m.new_content"] = json!({"msgtype": "m.text", "body": body});
    send_event(c, room, "m.room.message", txn, content)
}

fn redact(c: &Client, room: &str, txn: &str, target: &str) {
    c.put(
        &format!("/_matrix/client/v3/rooms/{}/redact/{}/{txn}", enc(room), enc(target)),
        json!({}),
    )
    .ok();
}

fn relations_path(room: &str, parent: &str, rest: &str, query: &str) -> String {
    format!(
        "/_matrix/client/v1/rooms/{}/relations/{}{rest}?{query}",
        enc(room),
        enc(parent)
    )
}

fn ids(chunk: &Value) -> Vec<String> {
    chunk
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_id"].as_str().unwrap().to_owned())
        .collect()
}

fn event(c: &Client, room: &str, id: &str) -> Value {
    c.get(&format!("/_matrix/client/v3/rooms/{}/event/{}", enc(room), enc(id)))
        .ok()
        .clone()
}

fn join(c: &Client, room: &str) {
    c.post(&format!("/_matrix/client/v3/join/{}", enc(room)), json!({}))
        .ok();
}

fn set_visibility(c: &Client, room: &str, visibility: &str) {
    c.put(
        &format!(
            "/_matrix/client/v3/rooms/{}/state/m.room.history_visibility/",
            enc(room)
        ),
        json!({"history_visibility": visibility}),
    )
    .ok();
}

/// Every page of `/relations` from `query`, following `next_batch`; the ids in order and the
/// number of pages.
fn all_pages(c: &Client, room: &str, parent: &str, query: &str) -> (Vec<String>, usize) {
    let (mut out, mut from) = (Vec::new(), None::<String>);
    for pages in 1..=50 {
        let from_part = from.as_ref().map(|f| format!("&from={}", enc(f))).unwrap_or_default();
        let page = c.get(&relations_path(room, parent, "", &format!("{query}{from_part}")));
        let page = page.ok();
        if let Some(from) = &from {
            assert_eq!(page["prev_batch"], from.as_str());
        }
        out.extend(ids(&page["chunk"]));
        match page["next_batch"].as_str() {
            Some(next) => from = Some(next.to_owned()),
            None => return (out, pages),
        }
    }
    panic!("paging does not end");
}

#[test]
fn relations_are_listed_by_type_and_paged_both_ways() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    let room = create_room(&alice, json!({"preset": "public_chat"}));
    let root = send(&alice, &room, "root", "root");
    let t1 = thread_reply(&alice, &room, "t1", &root, "one");
    let r1 = send_event(
        &alice,
        &room,
        "m.room.message",
        "r1",
        related("ref", "m.reference", &root),
    );
    let t2 = thread_reply(&alice, &room, "t2", &root, "two");
    let custom = send_event(
        &alice,
        &room,
        "org.example.custom",
        "c1",
        related("custom", "m.thread", &root),
    );
    let e1 = edit(&alice, &room, "e1", &root, "root, edited");
    send(&alice, &room, "unrelated", "unrelated");
    let oldest_first = vec![t1.clone(), r1.clone(), t2.clone(), custom.clone(), e1.clone()];
    let newest_first: Vec<String> = oldest_first.iter().rev().cloned().collect();

    let all = alice.get(&relations_path(&room, &root, "", "limit=100"));
    assert_eq!(ids(&all.ok()["chunk"]), newest_first);
    assert!(all.ok().get("next_batch").is_none());
    assert!(all.ok().get("recursion_depth").is_none());
    let threads = alice.get(&relations_path(&room, &root, "/m.thread", ""));
    assert_eq!(ids(&threads.ok()["chunk"]), [custom.clone(), t2.clone(), t1.clone()]);
    let typed = alice.get(&relations_path(&room, &root, "/m.thread/org.example.custom", ""));
    assert_eq!(ids(&typed.ok()["chunk"]), std::slice::from_ref(&custom));
    let typed = alice.get(&relations_path(&room, &root, "/m.thread/m.room.message", "dir=f"));
    assert_eq!(ids(&typed.ok()["chunk"]), [t1.clone(), t2.clone()]);
    let none = alice.get(&relations_path(&room, &root, "/m.annotation", ""));
    assert_eq!(ids(&none.ok()["chunk"]), Vec::<String>::new());
    // The default limit is 5: one more child makes two pages.
    let (back, pages) = all_pages(&alice, &room, &root, "limit=2");
    assert_eq!((back, pages), (newest_first.clone(), 3));
    let (forwards, pages) = all_pages(&alice, &room, &root, "limit=2&dir=f");
    assert_eq!((forwards, pages), (oldest_first.clone(), 3));

    // `to` bounds a range: the first page's `next_batch` as `to` gives that page again.
    let first = alice.get(&relations_path(&room, &root, "", "limit=2"));
    let next = first.ok()["next_batch"].as_str().unwrap().to_owned();
    let again = alice.get(&relations_path(
        &room,
        &root,
        "",
        &format!("limit=10&to={}", enc(&next)),
    ));
    assert_eq!(ids(&again.ok()["chunk"]), newest_first[..2]);
    // ... and so does going forwards from it (oldest first).
    let forwards = alice.get(&relations_path(&room, &root, "", &format!("dir=f&from={}", enc(&next))));
    assert_eq!(
        ids(&forwards.ok()["chunk"]),
        [newest_first[1].clone(), newest_first[0].clone()]
    );

    // Bad input.
    for bad in ["from=garbage", "to=s1_x", "from=t1_r999999", "from=99999999999"] {
        alice
            .get(&relations_path(&room, &root, "", bad))
            .expect_err(400, "M_INVALID_PARAM");
    }
    for bad in ["limit=many", "limit=-1", "dir=sideways", "recurse=maybe"] {
        let r = alice.get(&relations_path(&room, &root, "", bad));
        assert_eq!(r.status, 400, "{bad}: {:?}", r.body);
        assert!(r.errcode().starts_with("M_"), "{bad}: {:?}", r.body);
    }
    alice
        .get(&relations_path(&room, "$nope:localhost", "", ""))
        .expect_err(404, "M_NOT_FOUND");
    let other = create_room(&alice, json!({}));
    alice
        .get(&relations_path(&other, &root, "", ""))
        .expect_err(404, "M_NOT_FOUND");
    let stranger = server.user("stranger", "pw");
    let private = create_room(&alice, json!({"preset": "private_chat"}));
    let secret = send(&alice, &private, "s", "secret");
    stranger
        .get(&relations_path(&private, &secret, "", ""))
        .expect_err(403, "M_FORBIDDEN");
}

#[test]
fn recursion_follows_relations_three_deep() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    let room = create_room(&alice, json!({}));
    let root = send(&alice, &room, "root", "root");
    let reply = thread_reply(&alice, &room, "t", &root, "reply");
    let edited = edit(&alice, &room, "e", &reply, "reply, edited");
    let reference = send_event(
        &alice,
        &room,
        "m.room.message",
        "r",
        related("ref", "m.reference", &edited),
    );
    let too_deep = send_event(
        &alice,
        &room,
        "m.room.message",
        "x",
        related("deep", "m.reference", &reference),
    );

    let flat = alice.get(&relations_path(&room, &root, "", ""));
    assert_eq!(ids(&flat.ok()["chunk"]), std::slice::from_ref(&reply));
    let deep = alice.get(&relations_path(&room, &root, "", "recurse=true"));
    assert_eq!(
        ids(&deep.ok()["chunk"]),
        [reference.clone(), edited.clone(), reply.clone()]
    );
    assert_eq!(deep.ok()["recursion_depth"], 3);
    assert!(!ids(&deep.ok()["chunk"]).contains(&too_deep));
    let refs = alice.get(&relations_path(&room, &root, "/m.reference", "recurse=true&dir=f"));
    assert_eq!(ids(&refs.ok()["chunk"]), [reference]);
}

#[test]
fn a_late_joiner_sees_only_the_thread_events_history_shows_them() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    let bob = server.user("bob", "pw");
    let room = create_room(&alice, json!({"preset": "public_chat"}));
    set_visibility(&alice, &room, "world_readable");
    let root = send(&alice, &room, "root", "root");
    set_visibility(&alice, &room, "joined");
    let early = thread_reply(&alice, &room, "t1", &root, "before bob");
    join(&bob, &room);
    let late = thread_reply(&alice, &room, "t2", &root, "after bob");

    let seen = bob.get(&relations_path(&room, &root, "", ""));
    assert_eq!(ids(&seen.ok()["chunk"]), std::slice::from_ref(&late));
    let all = alice.get(&relations_path(&room, &root, "", ""));
    assert_eq!(ids(&all.ok()["chunk"]), [late.clone(), early.clone()]);
    // An event he may not see is no parent for him.
    bob.get(&relations_path(&room, &early, "", ""))
        .expect_err(404, "M_NOT_FOUND");

    let thread = |c: &Client| event(c, &room, &root)["unsigned"]["m.relations"]["m.thread"].clone();
    assert_eq!(thread(&bob)["count"], 1);
    assert_eq!(thread(&bob)["latest_event"]["event_id"], late.as_str());
    assert_eq!(thread(&bob)["current_user_participated"], false);
    assert_eq!(thread(&alice)["count"], 2);
    assert_eq!(thread(&alice)["current_user_participated"], true);
}

#[test]
fn edits_bundle_the_latest_valid_replacement() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    let bob = server.user("bob", "pw");
    let room = create_room(&alice, json!({"preset": "public_chat"}));
    join(&bob, &room);
    let original = send(&alice, &room, "o", "original");
    let replace = |c: &Client| event(c, &room, &original)["unsigned"]["m.relations"]["m.replace"].clone();
    assert_eq!(replace(&alice), Value::Null);

    let first = edit(&alice, &room, "e1", &original, "first");
    let second = edit(&alice, &room, "e2", &original, "second");
    assert_eq!(replace(&alice)["event_id"], second.as_str());
    assert_eq!(replace(&bob)["content"]["m.new_content"]["body"], "second");
    // Not an edit: by another user, without `m.new_content`, of another type.
    edit(&bob, &room, "b1", &original, "bob's");
    send_event(
        &alice,
        &room,
        "m.room.message",
        "nc",
        related("no new content", "m.replace", &original),
    );
    let mut other_type = related("other type", "m.replace", &original);
    other_type["m.new_content"] = json!({"body": "x"});
    send_event(&alice, &room, "org.example.other", "ot", other_type);
    assert_eq!(replace(&alice)["event_id"], second.as_str());
    // An edit of an edit edits nothing.
    edit(&alice, &room, "ee", &second, "edit of an edit");
    assert_eq!(event(&alice, &room, &second)["unsigned"]["m.relations"], Value::Null);
    // A redacted edit is no longer bundled; a redacted original bundles none.
    redact(&alice, &room, "x1", &second);
    assert_eq!(replace(&alice)["event_id"], first.as_str());
    redact(&alice, &room, "x2", &original);
    let served = event(&alice, &room, &original);
    assert_eq!(served["content"], json!({}));
    assert_eq!(served["unsigned"]["m.relations"]["m.replace"], Value::Null);
}

#[test]
fn threads_and_references_are_summarised_and_checked() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    let bob = server.user("bob", "pw");
    let carol = server.user("carol", "pw");
    let room = create_room(&alice, json!({"preset": "public_chat"}));
    join(&bob, &room);
    join(&carol, &room);
    let root = send(&alice, &room, "root", "root");
    let r1 = send_event(
        &carol,
        &room,
        "m.room.message",
        "r1",
        related("see", "m.reference", &root),
    );
    thread_reply(&bob, &room, "t1", &root, "one");
    let latest = thread_reply(&bob, &room, "t2", &root, "two");
    edit(&bob, &room, "e", &latest, "two, edited");
    let r2 = send_event(
        &bob,
        &room,
        "m.room.message",
        "r2",
        related("see too", "m.reference", &root),
    );

    let relations = |c: &Client| event(c, &room, &root)["unsigned"]["m.relations"].clone();
    let bundled = relations(&carol);
    assert_eq!(
        bundled["m.reference"],
        json!({"chunk": [{"event_id": r1}, {"event_id": r2}]})
    );
    assert_eq!(bundled["m.thread"]["count"], 2);
    assert_eq!(bundled["m.thread"]["latest_event"]["event_id"], latest.as_str());
    assert_eq!(bundled["m.thread"]["latest_event"]["content"]["body"], "two");
    // The latest event carries its own aggregations.
    assert_eq!(
        bundled["m.thread"]["latest_event"]["unsigned"]["m.relations"]["m.replace"]["content"]["m.new_content"]["body"],
        "two, edited"
    );
    assert_eq!(bundled["m.thread"]["current_user_participated"], false);
    assert_eq!(relations(&bob)["m.thread"]["current_user_participated"], true);
    assert_eq!(relations(&alice)["m.thread"]["current_user_participated"], true);
    // A redacted child has lost its relation: not counted, not listed.
    let third = thread_reply(&bob, &room, "t3", &root, "three");
    assert_eq!(relations(&carol)["m.thread"]["count"], 3);
    redact(&bob, &room, "x3", &third);
    assert_eq!(relations(&carol)["m.thread"]["count"], 2);
    assert_eq!(
        relations(&carol)["m.thread"]["latest_event"]["event_id"],
        latest.as_str()
    );
    let listed = carol.get(&relations_path(&room, &root, "/m.thread", ""));
    assert!(!ids(&listed.ok()["chunk"]).contains(&third));
    // Ignoring bob hides his children from carol's aggregations.
    carol
        .put(
            &format!(
                "/_matrix/client/v3/user/{}/account_data/m.ignored_user_list",
                enc(&carol.uid())
            ),
            json!({"ignored_users": {bob.uid(): {}}}),
        )
        .ok();
    let ignoring = relations(&carol);
    assert_eq!(ignoring["m.thread"], Value::Null);
    assert_eq!(ignoring["m.reference"], json!({"chunk": [{"event_id": r1}]}));

    // A thread cannot start from a relation; relations need a known event of the room.
    let path = |txn: &str| format!("/_matrix/client/v3/rooms/{}/send/m.room.message/{txn}", enc(&room));
    alice
        .put(&path("bad1"), related("nested", "m.thread", &latest))
        .expect_err(400, "M_UNKNOWN");
    alice
        .put(&path("bad2"), related("unknown", "m.reference", "$unknown:localhost"))
        .expect_err(400, "M_UNKNOWN");
    let other = create_room(&alice, json!({}));
    let elsewhere = send(&alice, &other, "x", "elsewhere");
    alice
        .put(&path("bad3"), related("elsewhere", "m.reference", &elsewhere))
        .expect_err(400, "M_UNKNOWN");
}

#[test]
fn threads_are_listed_by_latest_activity() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    let bob = server.user("bob", "pw");
    let carol = server.user("carol", "pw");
    let room = create_room(&alice, json!({"preset": "public_chat"}));
    join(&bob, &room);
    join(&carol, &room);
    let a = send(&alice, &room, "a", "thread a");
    let b = send(&bob, &room, "b", "thread b");
    let c = send(&carol, &room, "c", "thread c");
    send(&alice, &room, "plain", "no thread");
    thread_reply(&bob, &room, "a1", &a, "in a");
    thread_reply(&alice, &room, "b1", &b, "in b");
    thread_reply(&alice, &room, "c1", &c, "in c");
    thread_reply(&bob, &room, "a2", &a, "in a again");

    let list = |c: &Client, query: &str| -> Value {
        c.get(&format!("/_matrix/client/v1/rooms/{}/threads?{query}", enc(&room)))
            .ok()
            .clone()
    };
    let all = list(&alice, "");
    assert_eq!(ids(&all["chunk"]), [a.clone(), c.clone(), b.clone()]);
    assert_eq!(all["chunk"][0]["unsigned"]["m.relations"]["m.thread"]["count"], 2);
    assert!(all.get("next_batch").is_none());
    // Bob took part in a (replies) and b (its root).
    assert_eq!(
        ids(&list(&bob, "include=participated")["chunk"]),
        [a.clone(), b.clone()]
    );
    assert_eq!(
        ids(&list(&carol, "include=participated")["chunk"]),
        std::slice::from_ref(&c)
    );
    // The thread of an ignored user is listed with its root redacted.
    carol
        .put(
            &format!(
                "/_matrix/client/v3/user/{}/account_data/m.ignored_user_list",
                enc(&carol.uid())
            ),
            json!({"ignored_users": {bob.uid(): {}}}),
        )
        .ok();
    let ignoring = list(&carol, "");
    assert_eq!(ids(&ignoring["chunk"]), [a.clone(), c.clone(), b.clone()]);
    assert_eq!(ignoring["chunk"][2]["content"], json!({}));
    assert_eq!(ignoring["chunk"][0]["content"]["body"], "thread a");
    // Paging.
    let (mut seen, mut from) = (Vec::new(), String::new());
    for _ in 0..10 {
        let page = list(&alice, &format!("limit=1{from}"));
        seen.extend(ids(&page["chunk"]));
        match page["next_batch"].as_str() {
            Some(next) => from = format!("&from={}", enc(next)),
            None => break,
        }
    }
    assert_eq!(seen, [a, c, b]);
    for bad in ["from=nope", "include=everything"] {
        alice
            .get(&format!("/_matrix/client/v1/rooms/{}/threads?{bad}", enc(&room)))
            .expect_err(400, "M_INVALID_PARAM");
    }
}

#[test]
fn aggregations_are_bundled_wherever_events_are_served() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    let room = create_room(&alice, json!({}));
    let root = send(&alice, &room, "root", "root");
    let reply = thread_reply(&alice, &room, "t", &root, "reply");
    let find = |events: &Value| -> Value {
        events
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["event_id"] == root.as_str())
            .expect("root served")["unsigned"]["m.relations"]["m.thread"]
            .clone()
    };
    let check = |thread: Value| {
        assert_eq!(thread["count"], 1, "{thread}");
        assert_eq!(thread["latest_event"]["event_id"], reply.as_str());
    };
    check(event(&alice, &room, &root)["unsigned"]["m.relations"]["m.thread"].clone());
    let messages = alice.get(&format!(
        "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=50",
        enc(&room)
    ));
    check(find(&messages.ok()["chunk"]));
    let context = alice.get(&format!(
        "/_matrix/client/v3/rooms/{}/context/{}?limit=4",
        enc(&room),
        enc(&root)
    ));
    check(context.ok()["event"]["unsigned"]["m.relations"]["m.thread"].clone());
    let context = alice.get(&format!(
        "/_matrix/client/v3/rooms/{}/context/{}?limit=4",
        enc(&room),
        enc(&reply)
    ));
    check(find(&context.ok()["events_before"]));
    let sync = alice.get("/_matrix/client/v3/sync?timeout=0").ok().clone();
    check(find(&sync["rooms"]["join"][&room]["timeline"]["events"]));
    let relations = alice.get(&relations_path(&room, &root, "", ""));
    assert_eq!(ids(&relations.ok()["chunk"]), std::slice::from_ref(&reply));
}

#[test]
fn thread_notifications_are_counted_per_thread_and_cleared_by_threaded_receipts() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    let bob = server.user("bob", "pw");
    let room = create_room(&alice, json!({"preset": "public_chat"}));
    join(&bob, &room);
    let root = send(&alice, &room, "root", "root");
    // Alice follows the thread (MSC4306: replies in unsubscribed threads do not notify).
    let subscription = format!(
        "/_matrix/client/unstable/io.element.msc4306/rooms/{}/thread/{}/subscription",
        enc(&room),
        enc(&root)
    );
    alice.put(&subscription, json!({})).ok();
    thread_reply(&bob, &room, "t1", &root, "one");
    let t2 = thread_reply(&bob, &room, "t2", &root, "two");
    let main = send(&bob, &room, "m", "main");
    // A reference to a thread event is in that thread.
    let about = send_event(
        &bob,
        &room,
        "m.room.message",
        "r",
        related("about two", "m.reference", &t2),
    );

    let threaded = enc(r#"{"room":{"timeline":{"unread_thread_notifications":true}}}"#);
    let counts = |filter: Option<&str>| -> Value {
        let query = filter.map(|f| format!("&filter={f}")).unwrap_or_default();
        let sync = alice
            .get(&format!("/_matrix/client/v3/sync?timeout=0{query}"))
            .ok()
            .clone();
        sync["rooms"]["join"][&room].clone()
    };
    let plain = counts(None);
    assert_eq!(plain["unread_notifications"]["notification_count"], 4);
    assert!(plain.get("unread_thread_notifications").is_none());
    let per_thread = counts(Some(&threaded));
    assert_eq!(per_thread["unread_notifications"]["notification_count"], 1);
    assert_eq!(
        per_thread["unread_thread_notifications"][&root]["notification_count"],
        3
    );
    assert_eq!(per_thread["unread_thread_notifications"][&root]["highlight_count"], 0);

    let receipt = |event: &str, thread: &str| {
        alice
            .post(
                &format!("/_matrix/client/v3/rooms/{}/receipt/m.read/{}", enc(&room), enc(event)),
                json!({"thread_id": thread}),
            )
            .ok();
    };
    // A threaded receipt must name an event of its thread.
    for (event, thread) in [(&main, root.as_str()), (&t2, "main")] {
        alice
            .post(
                &format!("/_matrix/client/v3/rooms/{}/receipt/m.read/{}", enc(&room), enc(event)),
                json!({"thread_id": thread}),
            )
            .expect_err(400, "M_INVALID_PARAM");
    }
    receipt(&t2, &root);
    let per_thread = counts(Some(&threaded));
    assert_eq!(per_thread["unread_notifications"]["notification_count"], 1);
    assert_eq!(
        per_thread["unread_thread_notifications"][&root]["notification_count"],
        1
    );
    receipt(&about, &root);
    let per_thread = counts(Some(&threaded));
    assert_eq!(per_thread["unread_notifications"]["notification_count"], 1);
    assert!(per_thread.get("unread_thread_notifications").is_none(), "{per_thread}");
    receipt(&main, "main");
    let per_thread = counts(Some(&threaded));
    assert_eq!(per_thread["unread_notifications"]["notification_count"], 0);
    // A new thread event counts again, in its thread only.
    let t3 = thread_reply(&bob, &room, "t3", &root, "three");
    let per_thread = counts(Some(&threaded));
    assert_eq!(per_thread["unread_notifications"]["notification_count"], 0);
    assert_eq!(
        per_thread["unread_thread_notifications"][&root]["notification_count"],
        1
    );
    // An unthreaded receipt reads every thread.
    alice
        .post(
            &format!("/_matrix/client/v3/rooms/{}/receipt/m.read/{}", enc(&room), enc(&t3)),
            json!({}),
        )
        .ok();
    let per_thread = counts(Some(&threaded));
    assert_eq!(per_thread["unread_notifications"]["notification_count"], 0);
    assert!(per_thread.get("unread_thread_notifications").is_none(), "{per_thread}");
}
