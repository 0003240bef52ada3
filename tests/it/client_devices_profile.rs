//! Devices (list, get, rename, delete with UIA), profiles (whole and per field, custom fields)
//! and global account data, over HTTP.

use serde_json::json;

use crate::support::{Client, TestServer, enc};

fn device_ids(c: &Client) -> Vec<String> {
    let r = c.get("/_matrix/client/v3/devices");
    let mut ids: Vec<String> = r.ok()["devices"]
        .as_array()
        .expect("devices")
        .iter()
        .map(|d| d["device_id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

fn login_device(server: &TestServer, user: &str, pw: &str, device: &str) -> Client {
    let mut c = server.client();
    let b = c
        .login_with(
            user,
            pw,
            json!({"device_id": device, "initial_device_display_name": format!("{device} name")}),
        )
        .ok()
        .clone();
    c.adopt(&b);
    c
}

#[test]
fn devices_list_get_and_rename() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    let laptop = login_device(&server, "alice", "pw", "LAPTOP");
    let bob = server.user("bob", "pw");
    let _bob_tv = login_device(&server, "bob", "pw", "TV");

    let mut expected = vec![alice.device_id.clone().unwrap(), "LAPTOP".to_owned()];
    expected.sort();
    assert_eq!(device_ids(&alice), expected);
    assert_eq!(device_ids(&laptop), expected);

    let list = alice.get("/_matrix/client/v3/devices");
    for d in list.ok()["devices"].as_array().unwrap() {
        assert!(d["last_seen_ts"].as_u64().is_some(), "{d}");
    }

    let d = alice.get("/_matrix/client/v3/devices/LAPTOP");
    assert_eq!(d.ok()["device_id"], "LAPTOP");
    assert_eq!(d.body["display_name"], "LAPTOP name");

    alice
        .put(
            "/_matrix/client/v3/devices/LAPTOP",
            json!({"display_name": "Work laptop"}),
        )
        .ok();
    let d = laptop.get("/_matrix/client/v3/devices/LAPTOP");
    assert_eq!(d.ok()["display_name"], "Work laptop");
    // Renaming does not log the device out.
    laptop.whoami().ok();

    alice
        .get("/_matrix/client/v3/devices/NOSUCH")
        .expect_err(404, "M_NOT_FOUND");
    alice
        .put("/_matrix/client/v3/devices/NOSUCH", json!({"display_name": "x"}))
        .expect_err(404, "M_NOT_FOUND");
    // Another user's device is not ours.
    alice
        .get("/_matrix/client/v3/devices/TV")
        .expect_err(404, "M_NOT_FOUND");
    alice
        .put("/_matrix/client/v3/devices/TV", json!({"display_name": "mine"}))
        .expect_err(404, "M_NOT_FOUND");
    let tv = bob.get("/_matrix/client/v3/devices/TV");
    assert_eq!(tv.ok()["display_name"], "TV name");
    server
        .client()
        .get("/_matrix/client/v3/devices")
        .expect_err(401, "M_MISSING_TOKEN");
}

#[test]
fn delete_device_requires_password_uia() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    let phone = login_device(&server, "alice", "pw", "PHONE");
    const PATH: &str = "/_matrix/client/v3/devices/PHONE";

    let first = alice.uia_start("DELETE", PATH, json!({}));
    assert_eq!(first["flows"][0]["stages"], json!(["m.login.password"]));
    let session = first["session"].as_str().unwrap();
    phone.whoami().ok();

    let wrong = alice.delete(PATH, json!({"auth": alice.password_auth("bad", Some(session))}));
    assert_eq!(wrong.status, 401, "{}", wrong.text);
    assert_eq!(wrong.errcode(), "M_FORBIDDEN", "{}", wrong.text);
    phone.whoami().ok();

    alice
        .delete(PATH, json!({"auth": alice.password_auth("pw", Some(session))}))
        .ok();
    phone.whoami().expect_err(401, "M_UNKNOWN_TOKEN");
    alice
        .get("/_matrix/client/v3/devices/PHONE")
        .expect_err(404, "M_NOT_FOUND");
    assert_eq!(device_ids(&alice), vec![alice.device_id.clone().unwrap()]);
    alice.whoami().ok();

    // Deleting it again still asks for UIA, then succeeds: "or had been removed previously".
    let again = alice.uia_start("DELETE", PATH, json!({}));
    alice
        .delete(
            PATH,
            json!({"auth": alice.password_auth("pw", again["session"].as_str())}),
        )
        .ok();
    // A completed UIA session cannot be replayed.
    alice
        .delete(PATH, json!({"auth": alice.password_auth("pw", Some(session))}))
        .expect_err(400, "M_UNKNOWN");
}

#[test]
fn delete_devices_in_bulk_requires_password_uia() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    let a = login_device(&server, "alice", "pw", "AAA");
    let b = login_device(&server, "alice", "pw", "BBB");
    let keep = login_device(&server, "alice", "pw", "KEEP");
    let bob = server.user("bob", "pw");
    let bob_dev = bob.device_id.clone().unwrap();
    const PATH: &str = "/_matrix/client/v3/delete_devices";
    let body = json!({"devices": ["AAA", "BBB", "UNKNOWN", bob_dev]});

    let first = alice.uia_start("POST", PATH, body.clone());
    assert_eq!(first["flows"][0]["stages"], json!(["m.login.password"]));
    let mut with_auth = body;
    with_auth["auth"] = alice.password_auth("pw", first["session"].as_str());
    alice.post(PATH, with_auth).ok();

    a.whoami().expect_err(401, "M_UNKNOWN_TOKEN");
    b.whoami().expect_err(401, "M_UNKNOWN_TOKEN");
    keep.whoami().ok();
    alice.whoami().ok();
    // Another user's device id in the list is left alone.
    bob.whoami().ok();
    let mut expected = vec![alice.device_id.clone().unwrap(), "KEEP".to_owned()];
    expected.sort();
    assert_eq!(device_ids(&alice), expected);
}

#[test]
fn profile_fields() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    let bob = server.user("bob", "pw");
    let me = enc(&alice.uid());
    let field = |name: &str| format!("/_matrix/client/v3/profile/{me}/{name}");

    // New accounts start with their localpart as display name.
    assert_eq!(alice.get(&field("displayname")).ok()["displayname"], "alice");
    alice.get(&field("avatar_url")).expect_err(404, "M_NOT_FOUND");
    alice
        .put(&field("displayname"), json!({"displayname": "Alice A."}))
        .ok();
    assert_eq!(bob.get(&field("displayname")).ok()["displayname"], "Alice A.");

    alice
        .put(&field("avatar_url"), json!({"avatar_url": "mxc://hearth.test/abcDEF"}))
        .ok();
    alice
        .put(&field("avatar_url"), json!({"avatar_url": "https://example.org/a.png"}))
        .expect_err(400, "M_BAD_JSON");
    assert_eq!(
        alice.get(&field("avatar_url")).ok()["avatar_url"],
        "mxc://hearth.test/abcDEF"
    );

    alice
        .put(
            &field("org.example.pronouns"),
            json!({"org.example.pronouns": "she/her"}),
        )
        .ok();
    alice.put(&field("m.tz"), json!({"m.tz": "Europe/Paris"})).ok();
    let whole = bob.get(&format!("/_matrix/client/v3/profile/{me}"));
    assert_eq!(
        whole.ok(),
        &json!({
            "displayname": "Alice A.",
            "avatar_url": "mxc://hearth.test/abcDEF",
            "org.example.pronouns": "she/her",
            "m.tz": "Europe/Paris",
        })
    );

    alice.req("DELETE", &field("org.example.pronouns"), None).ok();
    alice.get(&field("org.example.pronouns")).expect_err(404, "M_NOT_FOUND");
    alice.req("DELETE", &field("displayname"), None).ok();
    alice.get(&field("displayname")).expect_err(404, "M_NOT_FOUND");
    let whole = alice.get(&format!("/_matrix/client/v3/profile/{me}"));
    assert_eq!(
        whole.ok(),
        &json!({"avatar_url": "mxc://hearth.test/abcDEF", "m.tz": "Europe/Paris"})
    );

    // Someone else's profile cannot be changed.
    bob.put(&field("displayname"), json!({"displayname": "Mallory"}))
        .expect_err(403, "M_FORBIDDEN");
    bob.req("DELETE", &field("avatar_url"), None)
        .expect_err(403, "M_FORBIDDEN");
    assert_eq!(
        alice.get(&field("avatar_url")).ok()["avatar_url"],
        "mxc://hearth.test/abcDEF"
    );

    // Unknown users.
    let ghost = enc("@ghost:hearth.test");
    alice
        .get(&format!("/_matrix/client/v3/profile/{ghost}"))
        .expect_err(404, "M_NOT_FOUND");
    alice
        .get(&format!("/_matrix/client/v3/profile/{ghost}/displayname"))
        .expect_err(404, "M_NOT_FOUND");
}

#[test]
fn profile_rejects_bad_values() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    let me = enc(&alice.uid());
    let field = |name: &str| format!("/_matrix/client/v3/profile/{me}/{name}");
    alice
        .put(&field("displayname"), json!({"displayname": 42}))
        .expect_err(400, "M_BAD_JSON");
    let r = alice.put(&field("displayname"), json!({"displayname": "x".repeat(300)}));
    assert_eq!(r.status, 400, "{}", r.text);
    let long_key = "k".repeat(256);
    alice
        .put(&field(&long_key), json!({ long_key.clone(): "v" }))
        .expect_err(400, "M_KEY_TOO_LARGE");
    // Nothing refused was stored.
    assert_eq!(alice.get(&field("displayname")).ok()["displayname"], "alice");
}

#[test]
fn global_account_data() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    let bob = server.user("bob", "pw");
    let path = |c: &Client, kind: &str| format!("/_matrix/client/v3/user/{}/account_data/{}", enc(&c.uid()), enc(kind));

    alice
        .get(&path(&alice, "org.example.cfg"))
        .expect_err(404, "M_NOT_FOUND");
    alice
        .put(&path(&alice, "org.example.cfg"), json!({"theme": "dark", "n": [1, 2]}))
        .ok();
    assert_eq!(
        alice.get(&path(&alice, "org.example.cfg")).ok(),
        &json!({"theme": "dark", "n": [1, 2]})
    );
    alice
        .put(&path(&alice, "org.example.cfg"), json!({"theme": "light"}))
        .ok();
    assert_eq!(
        alice.get(&path(&alice, "org.example.cfg")).ok(),
        &json!({"theme": "light"})
    );

    // Other users' account data is off limits in both directions.
    alice.get(&path(&bob, "org.example.cfg")).expect_err(403, "M_FORBIDDEN");
    alice
        .put(&path(&bob, "org.example.cfg"), json!({"x": 1}))
        .expect_err(403, "M_FORBIDDEN");
    bob.get(&path(&bob, "org.example.cfg")).expect_err(404, "M_NOT_FOUND");
    bob.get(&path(&alice, "org.example.cfg")).expect_err(403, "M_FORBIDDEN");

    // Server-managed types.
    alice
        .put(&path(&alice, "m.fully_read"), json!({"event_id": "$x"}))
        .expect_err(405, "M_BAD_JSON");
    alice
        .put(&path(&alice, "m.push_rules"), json!({}))
        .expect_err(405, "M_BAD_JSON");

    // Content must be a JSON object.
    for bad in [json!([1, 2]), json!("text"), json!(3), json!(null)] {
        alice
            .put(&path(&alice, "org.example.bad"), bad)
            .expect_err(400, "M_BAD_JSON");
    }
    alice
        .raw(
            "PUT",
            &path(&alice, "org.example.bad"),
            Some(b"{not json"),
            Some("application/json"),
        )
        .expect_err(400, "M_NOT_JSON");
    alice
        .get(&path(&alice, "org.example.bad"))
        .expect_err(404, "M_NOT_FOUND");
    server
        .client()
        .get(&path(&alice, "org.example.cfg"))
        .expect_err(401, "M_MISSING_TOKEN");
}
