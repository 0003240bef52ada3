//! Server-side search (`POST /search`, spec "Server Side Search"): matching (Unicode words,
//! case and accents folded, the last term as a prefix, every term required), keys, ordering,
//! paging, groupings, context with profiles, state, filters, and what a searcher must never
//! find: events hidden by history visibility, from after they left, redacted ones, rooms they
//! are not in.

use serde_json::{Value, json};

use crate::{
    rooms::{create_room, send},
    support::{Client, TestServer, enc},
};

fn search_with(c: &Client, criteria: Value, next_batch: Option<&str>) -> Value {
    let path = match next_batch {
        Some(token) => format!("/_matrix/client/v3/search?next_batch={}", enc(token)),
        None => "/_matrix/client/v3/search".to_owned(),
    };
    c.post(&path, json!({"search_categories": {"room_events": criteria}}))
        .ok()["search_categories"]["room_events"]
        .clone()
}

fn search(c: &Client, term: &str) -> Value {
    search_with(c, json!({"search_term": term}), None)
}

/// The bodies of the results, in order.
fn bodies(answer: &Value) -> Vec<String> {
    answer["results"]
        .as_array()
        .map(|r| {
            r.iter()
                .map(|r| r["result"]["content"]["body"].as_str().unwrap_or("").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn ids(answer: &Value) -> Vec<String> {
    answer["results"]
        .as_array()
        .map(|r| {
            r.iter()
                .map(|r| r["result"]["event_id"].as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn join(c: &Client, room: &str) {
    c.post(&format!("/_matrix/client/v3/rooms/{}/join", enc(room)), json!({}))
        .ok();
}

fn set_state(c: &Client, room: &str, kind: &str, content: Value) {
    c.put(
        &format!("/_matrix/client/v3/rooms/{}/state/{kind}/", enc(room)),
        content,
    )
    .ok();
}

#[test]
fn words_match_across_case_and_accents_and_the_last_term_as_a_prefix() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    let room = create_room(&alice, json!({}));
    send(&alice, &room, "t1", "Café au LAIT this morning");
    send(&alice, &room, "t2", "we deploy on Fridays");
    send(&alice, &room, "t3", "nothing to see");

    let answer = search(&alice, "CAFE");
    assert_eq!(bodies(&answer), ["Café au LAIT this morning"]);
    assert!(
        search(&alice, "absent")["results"].as_array().unwrap().is_empty(),
        "always a list"
    );
    assert_eq!(answer["count"], 1);
    assert_eq!(answer["highlights"], json!(["cafe"]));
    assert!(answer["results"][0]["rank"].as_f64().unwrap() > 0.0);
    assert_eq!(answer["results"][0]["result"]["room_id"], room.as_str());

    // Every term is required; the last one may be a prefix, and the word it matched is a
    // highlight.
    assert_eq!(bodies(&search(&alice, "café lait")), ["Café au LAIT this morning"]);
    assert!(bodies(&search(&alice, "café fridays")).is_empty());
    let answer = search(&alice, "we deplo");
    assert_eq!(bodies(&answer), ["we deploy on Fridays"]);
    assert_eq!(answer["highlights"], json!(["deplo", "deploy", "we"]));
    // Nothing to search for finds nothing.
    let answer = search(&alice, " ... ");
    assert_eq!(answer["count"], 0);
    assert!(bodies(&answer).is_empty());
}

#[test]
fn keys_choose_between_body_name_and_topic() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    let room = create_room(&alice, json!({"name": "Garden planning", "topic": "planning the beds"}));
    send(&alice, &room, "t1", "planning tomatoes");
    let kinds = |keys: Value| -> Vec<String> {
        let mut criteria = json!({"search_term": "planning", "order_by": "recent"});
        if !keys.is_null() {
            criteria["keys"] = keys;
        }
        let answer = search_with(&alice, criteria, None);
        answer["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["result"]["type"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(kinds(Value::Null), ["m.room.message", "m.room.topic", "m.room.name"]);
    assert_eq!(kinds(json!(["content.body"])), ["m.room.message"]);
    assert_eq!(kinds(json!(["content.name"])), ["m.room.name"]);
    assert_eq!(
        kinds(json!(["content.topic", "content.name"])),
        ["m.room.topic", "m.room.name"]
    );
    assert!(kinds(json!([])).is_empty());
}

#[test]
fn rank_orders_by_relevance_and_recent_by_time() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    let room = create_room(&alice, json!({}));
    send(
        &alice,
        &room,
        "t1",
        "apple pie with a long story about nothing much at all really",
    );
    send(&alice, &room, "t2", "apple apple apple");
    send(&alice, &room, "t3", "an apple");
    let rank = search_with(&alice, json!({"search_term": "apple", "order_by": "rank"}), None);
    assert_eq!(
        bodies(&rank),
        [
            "apple apple apple",
            "an apple",
            "apple pie with a long story about nothing much at all really"
        ]
    );
    let ranks: Vec<f64> = rank["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["rank"].as_f64().unwrap())
        .collect();
    assert!(ranks.windows(2).all(|w| w[0] >= w[1]), "{ranks:?}");
    // Rank is the default.
    assert_eq!(bodies(&search(&alice, "apple")), bodies(&rank));
    let recent = search_with(&alice, json!({"search_term": "apple", "order_by": "recent"}), None);
    assert_eq!(
        bodies(&recent),
        [
            "an apple",
            "apple apple apple",
            "apple pie with a long story about nothing much at all really"
        ]
    );
}

#[test]
fn next_batch_pages_until_exhausted_in_both_orders() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    let room = create_room(&alice, json!({}));
    let mut sent = Vec::new();
    for i in 0..23 {
        // Different lengths, so ranks differ and tie.
        let body = format!("needle {}", "hay ".repeat(i % 4));
        sent.push(send(&alice, &room, &format!("t{i}"), &body));
    }
    for order in ["rank", "recent"] {
        let criteria = json!({"search_term": "needle", "order_by": order, "filter": {"limit": 10}});
        let mut token: Option<String> = None;
        let mut seen = Vec::new();
        let mut pages = Vec::new();
        for _ in 0..10 {
            let answer = search_with(&alice, criteria.clone(), token.as_deref());
            assert_eq!(answer["count"], 23, "{order}");
            pages.push(ids(&answer).len());
            seen.extend(ids(&answer));
            match answer["next_batch"].as_str() {
                Some(next) => token = Some(next.to_owned()),
                None => break,
            }
        }
        assert_eq!(pages, [10, 10, 3], "{order}");
        let mut sorted = seen.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 23, "no result twice ({order})");
        if order == "recent" {
            let mut newest_first = sent.clone();
            newest_first.reverse();
            assert_eq!(seen, newest_first);
        }
        // A token handed out for one order is refused for the other.
        let first = search_with(&alice, criteria.clone(), None);
        let other = if order == "rank" { "recent" } else { "rank" };
        alice
            .post(
                &format!(
                    "/_matrix/client/v3/search?next_batch={}",
                    enc(first["next_batch"].as_str().unwrap())
                ),
                json!({"search_categories": {"room_events": {"search_term": "needle", "order_by": other}}}),
            )
            .expect_err(400, "M_INVALID_PARAM");
    }
}

#[test]
fn groupings_by_room_and_sender_with_a_room_token() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    let bob = server.user("bob", "pw");
    let one = create_room(&alice, json!({"preset": "public_chat"}));
    let two = create_room(&alice, json!({"preset": "public_chat"}));
    join(&bob, &one);
    let a1 = send(&alice, &one, "a1", "lunch at noon");
    let b1 = send(&bob, &one, "b1", "lunch sounds good");
    let a2 = send(&alice, &two, "a2", "lunch in room two");
    let a3 = send(&alice, &one, "a3", "lunch again");
    let criteria = json!({
        "search_term": "lunch",
        "order_by": "recent",
        "groupings": {"group_by": [{"key": "room_id"}, {"key": "sender"}]},
    });
    let answer = search_with(&alice, criteria.clone(), None);
    assert_eq!(ids(&answer), [a3.clone(), a2.clone(), b1.clone(), a1.clone()]);
    let rooms = &answer["groups"]["room_id"];
    assert_eq!(rooms[&one]["results"], json!([a3, b1, a1]));
    assert_eq!(rooms[&one]["order"], 1);
    assert_eq!(rooms[&two]["results"], json!([a2]));
    assert_eq!(rooms[&two]["order"], 2);
    let senders = &answer["groups"]["sender"];
    assert_eq!(senders[alice.uid()]["results"], json!([a3, a2, a1]));
    assert_eq!(senders[alice.uid()]["order"], 1);
    assert_eq!(senders[bob.uid()]["results"], json!([b1]));
    assert_eq!(senders[bob.uid()]["order"], 2);

    // With a page of 2, room one's group token continues in room one only.
    let mut small = criteria.clone();
    small["filter"] = json!({"limit": 2});
    let answer = search_with(&alice, small.clone(), None);
    assert_eq!(ids(&answer), [a3.clone(), a2.clone()]);
    let room_token = answer["groups"]["room_id"][&one]["next_batch"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        answer["groups"]["room_id"][&two]["next_batch"].is_null(),
        "room two has no more"
    );
    let more = search_with(&alice, small, Some(&room_token));
    assert_eq!(ids(&more), [b1, a1]);
    assert!(more["next_batch"].is_null());
}

#[test]
fn event_context_with_profiles_and_tokens() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    let bob = server.user("bob", "pw");
    alice
        .put(
            &format!("/_matrix/client/v3/profile/{}/displayname", enc(&alice.uid())),
            json!({"displayname": "Alice A."}),
        )
        .ok();
    let room = create_room(&alice, json!({"preset": "public_chat"}));
    join(&bob, &room);
    send(&alice, &room, "c1", "one");
    send(&bob, &room, "c2", "two");
    send(&alice, &room, "c3", "the target message");
    send(&bob, &room, "c4", "four");
    send(&alice, &room, "c5", "five");
    let answer = search_with(
        &bob,
        json!({
            "search_term": "target",
            "event_context": {"before_limit": 2, "after_limit": 1, "include_profile": true},
        }),
        None,
    );
    let context = &answer["results"][0]["context"];
    let before: Vec<&str> = context["events_before"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["content"]["body"].as_str().unwrap())
        .collect();
    assert_eq!(before, ["two", "one"], "newest first");
    let after: Vec<&str> = context["events_after"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["content"]["body"].as_str().unwrap())
        .collect();
    assert_eq!(after, ["four"]);
    assert_eq!(context["profile_info"][alice.uid()]["displayname"], "Alice A.");
    assert_eq!(context["profile_info"][bob.uid()]["displayname"], "bob");
    // The tokens page on from the context.
    let end = context["end"].as_str().unwrap();
    let next = bob.get(&format!(
        "/_matrix/client/v3/rooms/{}/messages?dir=f&limit=10&from={}",
        enc(&room),
        enc(end)
    ));
    let next_bodies: Vec<&str> = next.ok()["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["content"]["body"].as_str().unwrap())
        .collect();
    assert_eq!(next_bodies, ["five"]);
    let start = context["start"].as_str().unwrap();
    let earlier = bob.get(&format!(
        "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=1&from={}",
        enc(&room),
        enc(start)
    ));
    assert!(
        earlier.ok()["chunk"][0]["content"]["body"].is_null(),
        "before `one`: a state event"
    );
    // No profiles unless asked; limits of 0 give no context events.
    let answer = search_with(
        &bob,
        json!({"search_term": "target", "event_context": {"before_limit": 0, "after_limit": 0}}),
        None,
    );
    let context = &answer["results"][0]["context"];
    assert!(
        context["profile_info"].is_null() && context["events_before"].is_null() && context["events_after"].is_null()
    );
}

#[test]
fn include_state_returns_the_state_of_rooms_with_results() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    let with = create_room(&alice, json!({"name": "Has it"}));
    let without = create_room(&alice, json!({"name": "Has not"}));
    send(&alice, &with, "t1", "marmalade");
    send(&alice, &without, "t2", "jam");
    let answer = search_with(&alice, json!({"search_term": "marmalade", "include_state": true}), None);
    let state = answer["state"].as_object().unwrap();
    assert_eq!(state.keys().collect::<Vec<_>>(), [&with]);
    let kinds: Vec<&str> = state[&with]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert!(
        kinds.contains(&"m.room.create") && kinds.contains(&"m.room.name"),
        "{kinds:?}"
    );
    let without_state = search_with(&alice, json!({"search_term": "marmalade"}), None);
    assert!(without_state["state"].is_null());
}

#[test]
fn joined_visibility_hides_what_came_before_the_join() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    let bob = server.user("bob", "pw");
    let room = create_room(&alice, json!({"preset": "public_chat"}));
    set_state(
        &alice,
        &room,
        "m.room.history_visibility",
        json!({"history_visibility": "joined"}),
    );
    send(&alice, &room, "t1", "secret before bob");
    join(&bob, &room);
    send(&alice, &room, "t2", "secret after bob");
    let answer = search(&bob, "secret");
    assert_eq!(bodies(&answer), ["secret after bob"]);
    assert_eq!(answer["count"], 1, "the hidden event is not counted either");
    // The context does not show it either.
    let context = &answer["results"][0]["context"];
    assert!(
        context["events_before"]
            .as_array()
            .is_none_or(|e| e.iter().all(|e| e["content"]["body"] != "secret before bob"))
    );
    assert_eq!(search(&alice, "secret")["count"], 2);
}

#[test]
fn a_former_member_finds_nothing_from_after_leaving_and_strangers_nothing_at_all() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    let bob = server.user("bob", "pw");
    let carol = server.user("carol", "pw");
    let room = create_room(&alice, json!({"preset": "public_chat"}));
    join(&bob, &room);
    send(&alice, &room, "t1", "walrus one");
    bob.post(&format!("/_matrix/client/v3/rooms/{}/leave", enc(&room)), json!({}))
        .ok();
    send(&alice, &room, "t2", "walrus two");
    let answer = search_with(&bob, json!({"search_term": "walrus", "include_state": true}), None);
    assert_eq!(bodies(&answer), ["walrus one"]);
    assert_eq!(answer["count"], 1);
    // The state is the room as they left it: their own departure is in it.
    let member = answer["state"][&room]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "m.room.member" && e["state_key"] == bob.uid().as_str())
        .cloned()
        .unwrap();
    assert_eq!(member["content"]["membership"], "leave");
    // Someone never in the room finds nothing, not even in a public room, and asking for
    // the room explicitly changes nothing.
    assert_eq!(search(&carol, "walrus")["count"], 0);
    let answer = search_with(
        &carol,
        json!({"search_term": "walrus", "filter": {"rooms": [room]}}),
        None,
    );
    assert!(bodies(&answer).is_empty());
    // Forgetting the room ends even the history they saw.
    bob.post(&format!("/_matrix/client/v3/rooms/{}/forget", enc(&room)), json!({}))
        .ok();
    assert_eq!(search(&bob, "walrus")["count"], 0);
}

#[test]
fn ignored_users_are_neither_results_nor_context() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    let bob = server.user("bob", "pw");
    let room = create_room(&alice, json!({"preset": "public_chat"}));
    join(&bob, &room);
    send(&bob, &room, "b1", "bob talks about otters");
    send(&alice, &room, "a1", "alice on otters too");
    alice
        .put(
            &format!(
                "/_matrix/client/v3/user/{}/account_data/m.ignored_user_list",
                enc(&alice.uid())
            ),
            json!({"ignored_users": {bob.uid(): {}}}),
        )
        .ok();
    let answer = search(&alice, "otters");
    assert_eq!(bodies(&answer), ["alice on otters too"]);
    assert_eq!(answer["count"], 1);
    let before = &answer["results"][0]["context"]["events_before"];
    assert!(
        before
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["sender"] != bob.uid().as_str())
    );
}

#[test]
fn a_redacted_event_is_no_longer_found() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    let room = create_room(&alice, json!({}));
    let gone = send(&alice, &room, "t1", "oops my password is hunter2");
    send(&alice, &room, "t2", "the password policy");
    assert_eq!(search(&alice, "password")["count"], 2);
    alice
        .put(
            &format!("/_matrix/client/v3/rooms/{}/redact/{}/r1", enc(&room), enc(&gone)),
            json!({"reason": "leaked"}),
        )
        .ok();
    let answer = search(&alice, "password");
    assert_eq!(bodies(&answer), ["the password policy"]);
    assert_eq!(answer["count"], 1);
    assert_eq!(search(&alice, "hunter2")["count"], 0);
}

#[test]
fn filters_narrow_rooms_senders_types_and_page_size() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    let bob = server.user("bob", "pw");
    let one = create_room(&alice, json!({"preset": "public_chat", "name": "kiwi room"}));
    let two = create_room(&alice, json!({"preset": "public_chat"}));
    join(&bob, &one);
    join(&bob, &two);
    send(&alice, &one, "a1", "kiwi from alice in one");
    send(&bob, &one, "b1", "kiwi from bob in one");
    send(&alice, &two, "a2", "kiwi from alice in two");
    let found = |filter: Value| -> Vec<String> {
        let mut b = bodies(&search_with(
            &bob,
            json!({"search_term": "kiwi", "order_by": "recent", "filter": filter}),
            None,
        ));
        b.sort();
        b
    };
    assert_eq!(found(json!({"rooms": [two]})), ["kiwi from alice in two"]);
    assert_eq!(
        found(json!({"not_rooms": [two], "types": ["m.room.message"]})),
        ["kiwi from alice in one", "kiwi from bob in one"]
    );
    assert_eq!(found(json!({"senders": [bob.uid()]})), ["kiwi from bob in one"]);
    assert_eq!(
        found(json!({"not_senders": [bob.uid()], "not_types": ["m.room.name"]})),
        ["kiwi from alice in one", "kiwi from alice in two"]
    );
    assert_eq!(
        found(json!({"types": ["m.room.n*"]})),
        [""],
        "the room name only (no body)"
    );
    let answer = search_with(&bob, json!({"search_term": "kiwi", "filter": {"limit": 1}}), None);
    assert_eq!(ids(&answer).len(), 1);
    assert_eq!(answer["count"], 4);
    assert!(answer["next_batch"].is_string());
}

#[test]
fn bad_requests_are_refused() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    create_room(&alice, json!({}));
    let post = |body: Value| alice.post("/_matrix/client/v3/search", body);
    post(json!({"search_categories": {}})).expect_err(400, "M_INVALID_PARAM");
    post(json!({"search_categories": {"rooms": {"search_term": "x"}}})).expect_err(400, "M_INVALID_PARAM");
    post(json!({})).expect_err(400, "M_BAD_JSON");
    post(json!({"search_categories": {"room_events": {}}})).expect_err(400, "M_BAD_JSON");
    let criteria = |extra: Value| {
        let mut c = json!({"search_term": "x"});
        c.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        json!({"search_categories": {"room_events": c}})
    };
    post(criteria(json!({"keys": ["content.url"]}))).expect_err(400, "M_INVALID_PARAM");
    post(criteria(json!({"order_by": "alphabetical"}))).expect_err(400, "M_INVALID_PARAM");
    post(criteria(json!({"groupings": {"group_by": [{"key": "type"}]}}))).expect_err(400, "M_INVALID_PARAM");
    post(criteria(json!({"filter": {"limit": "ten"}}))).expect_err(400, "M_BAD_JSON");
    post(criteria(json!({"filter": {"rooms": "!notalist:x"}}))).expect_err(400, "M_BAD_JSON");
    for token in ["junk", "p1_2", "q1_2_", "p1_2_not-a-room"] {
        alice
            .post(
                &format!("/_matrix/client/v3/search?next_batch={}", enc(token)),
                criteria(json!({"order_by": "recent"})),
            )
            .expect_err(400, "M_INVALID_PARAM");
    }
    alice
        .with_token(None)
        .post("/_matrix/client/v3/search", criteria(json!({})))
        .expect_err(401, "M_MISSING_TOKEN");
}
