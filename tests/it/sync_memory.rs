//! Many big syncs at once (issue 23): initial syncs beyond `[sync] initial_concurrency` wait
//! their turn and still answer completely; incremental syncs take no turn; one user's many
//! devices do not deadlock; a limit of 0 is refused naming the key.

use std::{collections::BTreeMap, thread};

use serde_json::{Value, json};

use crate::{
    rooms::{create_room, send},
    support::{Client, TestServer, enc, run_plain},
};

/// What an initial sync says about each joined room: its name and its timeline's event ids.
fn rooms_of(body: &Value) -> BTreeMap<String, (String, Vec<String>)> {
    let join = body["rooms"]["join"].as_object().expect("rooms.join");
    join.iter()
        .map(|(room, r)| {
            let events = r["timeline"]["events"].as_array().expect("timeline");
            let ids = events
                .iter()
                .map(|e| e["event_id"].as_str().unwrap().to_owned())
                .collect();
            let mut all: Vec<&Value> = events.iter().collect();
            all.extend(r["state"]["events"].as_array().into_iter().flatten());
            let name = all
                .iter()
                .find(|e| e["type"] == "m.room.name")
                .map(|e| e["content"]["name"].as_str().unwrap().to_owned())
                .unwrap_or_default();
            (room.clone(), (name, ids))
        })
        .collect()
}

fn initial_sync(c: &Client) -> Value {
    c.get("/_matrix/client/v3/sync?timeout=0").ok().clone()
}

/// An account in `rooms` rooms, each named and with one message; (room id → (name, message id)).
fn busy_account(c: &Client, rooms: usize) -> BTreeMap<String, (String, String)> {
    (0..rooms)
        .map(|r| {
            let name = format!("room {r}");
            let room = create_room(c, json!({"name": name, "topic": "many syncs"}));
            let message = send(c, &room, &format!("t{r}"), &format!("hello {r}"));
            (room, (name, message))
        })
        .collect()
}

#[test]
fn initial_syncs_beyond_the_limit_wait_their_turn_and_answer_completely() {
    let server = TestServer::start_with(&[("HEARTH_SYNC__INITIAL_CONCURRENCY", "1")]);
    let alice = server.user("alice", "pw");
    let rooms = busy_account(&alice, 25);
    // Four devices of the same user, two syncs each, all at once: they queue for the one turn
    // and none waits on another (no deadlock).
    let mut devices = vec![alice];
    for _ in 0..3 {
        let mut device = server.client();
        device.login("alice", "pw");
        devices.push(device);
    }
    let answers: Vec<Value> = thread::scope(|scope| {
        let handles: Vec<_> = devices
            .iter()
            .flat_map(|device| [device, device])
            .map(|device| scope.spawn(move || initial_sync(device)))
            .collect();
        handles.into_iter().map(|h| h.join().expect("sync thread")).collect()
    });
    assert_eq!(answers.len(), 8);
    let first = rooms_of(&answers[0]);
    for answer in &answers {
        let seen = rooms_of(answer);
        assert_eq!(seen, first, "every answer is the same");
        assert_eq!(seen.len(), rooms.len(), "every room is there");
        for (room, (name, message)) in &rooms {
            let (seen_name, timeline) = &seen[room];
            assert_eq!(seen_name, name, "{room}: its name");
            assert_eq!(
                timeline.last(),
                Some(message),
                "{room}: its last message ends the timeline"
            );
        }
        assert!(answer["next_batch"].is_string());
    }
}

#[test]
fn incremental_syncs_take_no_turn_of_the_initial_ones() {
    let server = TestServer::start_with(&[("HEARTH_SYNC__INITIAL_CONCURRENCY", "1")]);
    let alice = server.user("alice", "pw");
    let bob = server.user("bob", "pw");
    let rooms = busy_account(&alice, 20);
    let shared = create_room(&bob, json!({"preset": "public_chat"}));
    alice
        .post(&format!("/_matrix/client/v3/rooms/{}/join", enc(&shared)), json!({}))
        .ok();
    let since = initial_sync(&alice)["next_batch"].as_str().unwrap().to_owned();
    let (woken, initial) = thread::scope(|scope| {
        // An incremental long-poll waits (holding no turn) while initial syncs pass...
        let poll = scope.spawn(|| {
            alice
                .get(&format!("/_matrix/client/v3/sync?since={}&timeout=60000", enc(&since)))
                .ok()
                .clone()
        });
        let initials: Vec<_> = (0..6).map(|_| scope.spawn(|| initial_sync(&alice))).collect();
        // ...and an incremental sync with nothing to wait for answers among them.
        let quick = alice
            .get(&format!("/_matrix/client/v3/sync?since={}&timeout=0", enc(&since)))
            .ok()
            .clone();
        assert!(quick["next_batch"].is_string(), "{quick}");
        let initial: Vec<Value> = initials.into_iter().map(|h| h.join().unwrap()).collect();
        // The long-poll is still waiting (or woke for something else): wake it with a message.
        let event = send(&bob, &shared, "wake", "wake up");
        let woken = poll.join().unwrap();
        let timeline = &woken["rooms"]["join"][&shared]["timeline"]["events"];
        let got = timeline
            .as_array()
            .is_some_and(|events| events.iter().any(|e| e["event_id"] == event.as_str()));
        let woken = if got {
            woken
        } else {
            // The poll answered before the message (another change woke it): one more sync
            // from its token must carry it.
            let next = woken["next_batch"].as_str().unwrap();
            alice
                .get(&format!("/_matrix/client/v3/sync?since={}&timeout=60000", enc(next)))
                .ok()
                .clone()
        };
        let timeline = &woken["rooms"]["join"][&shared]["timeline"]["events"];
        assert!(
            timeline
                .as_array()
                .is_some_and(|events| events.iter().any(|e| e["event_id"] == event.as_str())),
            "the incremental sync delivers the message: {woken}"
        );
        (woken, initial)
    });
    assert!(woken["next_batch"].is_string());
    for answer in &initial {
        let seen = rooms_of(answer);
        assert_eq!(seen.len(), rooms.len() + 1, "every room is in every initial sync");
        for (room, (_, message)) in &rooms {
            assert_eq!(seen[room].1.last(), Some(message));
        }
    }
}

#[test]
fn a_full_state_sync_takes_a_turn_and_answers() {
    let server = TestServer::start_with(&[("HEARTH_SYNC__INITIAL_CONCURRENCY", "1")]);
    let alice = server.user("alice", "pw");
    let rooms = busy_account(&alice, 5);
    let since = initial_sync(&alice)["next_batch"].as_str().unwrap().to_owned();
    let answers: Vec<Value> = thread::scope(|scope| {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let since = &since;
                let alice = &alice;
                scope.spawn(move || {
                    alice
                        .get(&format!(
                            "/_matrix/client/v3/sync?since={}&full_state=true&timeout=60000",
                            enc(since)
                        ))
                        .ok()
                        .clone()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for answer in &answers {
        let join = answer["rooms"]["join"].as_object().expect("rooms.join");
        assert_eq!(join.len(), rooms.len(), "full state names every room");
        for room in rooms.keys() {
            let state = join[room]["state"]["events"].as_array().expect("state");
            assert!(state.iter().any(|e| e["type"] == "m.room.create"), "{room}: full state");
        }
    }
}

#[test]
fn an_initial_concurrency_of_zero_is_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = run_plain(
        &["serve", "--listen", "127.0.0.1:0", "--data-dir", data.to_str().unwrap()],
        &[("HEARTH_SYNC__INITIAL_CONCURRENCY", "0")],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("sync.initial_concurrency"), "{stderr}");
}
