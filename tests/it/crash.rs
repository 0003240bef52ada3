//! Durability: whatever the server acknowledged survives SIGKILL. Each test kills the process
//! with `kill -9` (no shutdown, no flush) and restarts it on the same data directory.

use serde_json::json;

use crate::support::{TestServer, enc};

#[test]
fn sigkill_keeps_accounts_devices_tokens_and_profile() {
    let mut server = TestServer::start();
    let alice = server.user("alice", "pw-alice");
    let c = server.client();
    let second = c
        .login_with(
            "alice",
            "pw-alice",
            json!({"device_id": "TABLET", "initial_device_display_name": "Tablet", "refresh_token": true}),
        )
        .ok()
        .clone();
    let refresh = second["refresh_token"].as_str().expect("refresh token").to_owned();
    let tablet = c.with_token(second["access_token"].as_str());
    let me = enc(&alice.uid());
    alice
        .put(
            &format!("/_matrix/client/v3/profile/{me}/displayname"),
            json!({"displayname": "Alice Durable"}),
        )
        .ok();
    alice
        .put(
            &format!("/_matrix/client/v3/user/{me}/account_data/org.example.k"),
            json!({"v": 1}),
        )
        .ok();

    server.kill9();
    server.launch();

    let alice = alice.with_base(&server.base);
    let tablet = tablet.with_base(&server.base);
    let c = server.client();
    let who = alice.whoami();
    assert_eq!(who.ok()["user_id"], "@alice:hearth.test");
    assert_eq!(who.body["device_id"].as_str(), alice.device_id.as_deref());
    assert_eq!(tablet.whoami().ok()["device_id"], "TABLET");
    let devices = alice.get("/_matrix/client/v3/devices");
    let list = devices.ok()["devices"].as_array().unwrap();
    assert_eq!(list.len(), 2, "{}", devices.text);
    assert!(
        list.iter()
            .any(|d| d["device_id"] == "TABLET" && d["display_name"] == "Tablet"),
        "{}",
        devices.text
    );
    assert_eq!(
        c.get(&format!("/_matrix/client/v3/profile/{me}/displayname")).ok()["displayname"],
        "Alice Durable"
    );
    assert_eq!(
        alice
            .get(&format!("/_matrix/client/v3/user/{me}/account_data/org.example.k"))
            .ok(),
        &json!({"v": 1})
    );
    let r = c.post("/_matrix/client/v3/refresh", json!({"refresh_token": refresh}));
    let new_access = r.ok()["access_token"].as_str().unwrap();
    assert_eq!(c.with_token(Some(new_access)).whoami().ok()["device_id"], "TABLET");
    c.login_with("alice", "pw-alice", json!({})).ok();
    c.login_with("alice", "wrong", json!({})).expect_err(403, "M_FORBIDDEN");
}

#[test]
fn sigkill_right_after_a_stream_of_registrations() {
    let mut server = TestServer::start();
    let c = server.client();
    let names: Vec<String> = (0..30).map(|i| format!("user{i:02}")).collect();
    for name in &names {
        let r = c.register_with(json!({"username": name, "password": format!("pw-{name}")}));
        r.ok();
    }
    server.kill9();
    server.launch();
    let c = server.client();
    for name in &names {
        let r = c.login_with(name, &format!("pw-{name}"), json!({}));
        assert_eq!(
            r.ok()["user_id"],
            format!("@{name}:hearth.test").as_str(),
            "{name} survived"
        );
    }
    c.get("/_matrix/client/v3/register/available?username=user29")
        .expect_err(400, "M_USER_IN_USE");
}
