//! The send path's routing: paths are grouped by their literal prefix
//! (`api::router::RouteTable::mount`), which must change no answer: an unknown path under a
//! grouped prefix is still 404 `M_UNRECOGNIZED`, a wrong method 405, and the raw handlers
//! under `/_matrix/` (streaming media, the OAuth metadata) are still reached. Sends through
//! the grouped room paths keep their transaction idempotence.

use serde_json::json;

use crate::support::{TestServer, enc};

#[test]
fn grouped_paths_answer_as_before() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    let c = server.client();
    // Under a grouped prefix, nothing matching: the app's 404.
    for path in [
        "/_matrix/client/v3/rooms/!x:y/no_such_thing",
        "/_matrix/client/v3/rooms/!x:y/send/m.room.message",
        "/_matrix/client/v3/user/@a:b/nothing",
        "/_matrix/client/v1/media/no_such_thing/a/b",
    ] {
        c.get(path).expect_err(404, "M_UNRECOGNIZED");
    }
    // A grouped path with the wrong method: 405.
    c.post("/_matrix/client/v3/rooms/!x:y/send/m.room.message/t1", json!({}))
        .expect_err(405, "M_UNRECOGNIZED");
    // Raw handlers under grouped prefixes are reached.
    c.get("/_matrix/client/v1/media/download/localhost/nothing")
        .expect_err(401, "M_MISSING_TOKEN");
    alice
        .get("/_matrix/client/v1/media/download/localhost/nothing")
        .expect_err(404, "M_NOT_FOUND");
    alice
        .get("/_matrix/media/v3/download/localhost/nothing")
        .expect_err(404, "M_NOT_FOUND");
    assert_eq!(c.get("/_matrix/client/v1/auth_metadata").status, 200);
    assert_eq!(
        c.get("/_matrix/client/unstable/org.matrix.msc2965/auth_metadata")
            .status,
        200
    );

    // A send through the grouped room paths, retried with its transaction id: one event.
    let room = alice.post("/_matrix/client/v3/createRoom", json!({})).ok()["room_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let path = format!("/_matrix/client/v3/rooms/{}/send/m.room.message/t1", enc(&room));
    let first = alice.put(&path, json!({"msgtype": "m.text", "body": "hi"})).ok()["event_id"].clone();
    let again = alice.put(&path, json!({"msgtype": "m.text", "body": "hi"})).ok()["event_id"].clone();
    assert_eq!(first, again);
    // The same under r0 and with a trailing state key left out.
    let r0 = format!("/_matrix/client/r0/rooms/{}/send/m.room.message/t2", enc(&room));
    alice.put(&r0, json!({"msgtype": "m.text", "body": "hi"})).ok();
    let state = format!("/_matrix/client/v3/rooms/{}/state/m.room.name", enc(&room));
    alice.put(&state, json!({"name": "grouped"})).ok();
    assert_eq!(alice.get(&state).ok()["name"], "grouped");
}
