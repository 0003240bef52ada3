//! Accounts over HTTP: registration (UIA, username rules, modes, registration tokens), login,
//! refresh tokens, logout, whoami, password change and deactivation.

use serde_json::{Value, json};

use crate::support::{TestServer, enc};

const REGISTER: &str = "/_matrix/client/v3/register";
const LOGIN: &str = "/_matrix/client/v3/login";

fn stages(uia: &Value) -> Vec<Vec<String>> {
    uia["flows"]
        .as_array()
        .expect("flows")
        .iter()
        .map(|f| {
            f["stages"]
                .as_array()
                .expect("stages")
                .iter()
                .map(|s| s.as_str().unwrap().to_owned())
                .collect()
        })
        .collect()
}

#[test]
fn register_runs_the_dummy_uia_flow() {
    let server = TestServer::start();
    let c = server.client();
    let body = json!({"username": "alice", "password": "pw-alice"});
    let first = c.post(REGISTER, body.clone());
    assert_eq!(first.status, 401, "{}", first.text);
    assert_eq!(stages(&first.body), vec![vec!["m.login.dummy".to_owned()]]);
    assert!(first.body["params"].is_object(), "{}", first.text);
    assert!(first.body.get("errcode").is_none(), "{}", first.text);
    let session = first.body["session"].as_str().expect("session");
    assert!(!session.is_empty());

    // An unknown session is refused rather than silently restarted.
    let mut bad = body.clone();
    bad["auth"] = json!({"type": "m.login.dummy", "session": "no-such-session"});
    c.post(REGISTER, bad).expect_err(400, "M_UNKNOWN");

    let mut done = body;
    done["auth"] = json!({"type": "m.login.dummy", "session": session});
    let r = c.post(REGISTER, done);
    let b = r.ok();
    assert_eq!(b["user_id"], "@alice:hearth.test");
    let token = b["access_token"].as_str().expect("access_token");
    let device = b["device_id"].as_str().expect("device_id");
    let who = c.with_token(Some(token)).whoami();
    assert_eq!(who.ok()["user_id"], "@alice:hearth.test");
    assert_eq!(who.body["device_id"], device);
}

#[test]
fn register_enforces_username_rules() {
    let server = TestServer::start();
    let c = server.client();
    for name in [
        "Alice",
        "al ice",
        "al#ice",
        "al:ice",
        "_alice",
        "12345",
        "@bob:other.example",
        "",
    ] {
        c.post(REGISTER, json!({"username": name, "password": "pw"}))
            .expect_err(400, "M_INVALID_USERNAME");
        c.get(&format!("/_matrix/client/v3/register/available?username={}", enc(name)))
            .expect_err(400, "M_INVALID_USERNAME");
    }
    // Every allowed character.
    let r = c.register_with(json!({"username": "a.b_c=d-e/f+9", "password": "pw"}));
    assert_eq!(r.ok()["user_id"], "@a.b_c=d-e/f+9:hearth.test");
}

#[test]
fn taken_usernames_and_availability() {
    let server = TestServer::start();
    let _bob = server.user("bob", "pw-bob");
    let c = server.client();
    let avail = |name: &str| c.get(&format!("/_matrix/client/v3/register/available?username={}", enc(name)));
    assert_eq!(avail("carol").ok()["available"], true);
    avail("bob").expect_err(400, "M_USER_IN_USE");
    // Rejected before any UIA stage.
    c.post(REGISTER, json!({"username": "bob", "password": "x"}))
        .expect_err(400, "M_USER_IN_USE");
    c.get("/_matrix/client/v3/register/available")
        .expect_err(400, "M_MISSING_PARAM");
}

#[test]
fn register_without_username_generates_one() {
    let server = TestServer::start();
    let c = server.client();
    let r = c.register_with(json!({"password": "pw-anon"}));
    let user_id = r.ok()["user_id"].as_str().unwrap().to_owned();
    let local = user_id
        .strip_prefix('@')
        .and_then(|u| u.strip_suffix(":hearth.test"))
        .expect("a local user id");
    assert!(
        !local.is_empty() && local.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()),
        "{user_id}"
    );
    assert!(r.body["access_token"].is_string());
    c.login_with(&user_id, "pw-anon", json!({})).ok();
    // A second one gets a different id.
    let r2 = c.register_with(json!({"password": "pw"}));
    assert_ne!(r2.ok()["user_id"], user_id.as_str());
}

#[test]
fn register_with_inhibit_login_issues_no_tokens() {
    let server = TestServer::start();
    let c = server.client();
    let r = c.register_with(json!({"username": "quiet", "password": "pw-q", "inhibit_login": true}));
    let b = r.ok();
    assert_eq!(b["user_id"], "@quiet:hearth.test");
    assert!(b.get("access_token").is_none(), "{}", r.text);
    // ruma writes `"device_id": null` here; absent or null both mean "no device".
    assert!(b["device_id"].is_null(), "{}", r.text);
    assert!(b.get("refresh_token").is_none(), "{}", r.text);
    let mut c = c;
    c.login("quiet", "pw-q");
    let devices = c.get("/_matrix/client/v3/devices");
    assert_eq!(devices.ok()["devices"].as_array().unwrap().len(), 1);
}

#[test]
fn register_with_device_id_display_name_and_refresh_token() {
    let server = TestServer::start();
    let c = server.client();
    let r = c.register_with(json!({
        "username": "dev",
        "password": "pw-dev",
        "device_id": "MYPHONE",
        "initial_device_display_name": "Dev's phone",
        "refresh_token": true,
    }));
    let b = r.ok().clone();
    assert_eq!(b["device_id"], "MYPHONE");
    assert!(b["refresh_token"].is_string(), "{}", r.text);
    assert!(b["expires_in_ms"].as_u64().is_some_and(|ms| ms > 0), "{}", r.text);
    let mut c = c;
    c.adopt(&b);
    let d = c.get("/_matrix/client/v3/devices/MYPHONE");
    assert_eq!(d.ok()["device_id"], "MYPHONE");
    assert_eq!(d.body["display_name"], "Dev's phone");
    let refreshed = c.post(
        "/_matrix/client/v3/refresh",
        json!({"refresh_token": b["refresh_token"]}),
    );
    let new_token = refreshed.ok()["access_token"].as_str().unwrap();
    let who = c.with_token(Some(new_token)).whoami();
    assert_eq!(who.ok()["device_id"], "MYPHONE");

    // Without asking, no refresh token and no expiry. (A fresh client: /register reads any
    // token it is sent, and the refresh above revoked the first access token.)
    let r = server
        .client()
        .register_with(json!({"username": "plain", "password": "pw"}));
    assert!(r.ok().get("refresh_token").is_none(), "{}", r.text);
    assert!(r.body.get("expires_in_ms").is_none(), "{}", r.text);
}

#[test]
fn guest_registration_is_forbidden() {
    let server = TestServer::start();
    let c = server.client();
    c.post(&format!("{REGISTER}?kind=guest"), json!({}))
        .expect_err(403, "M_GUEST_ACCESS_FORBIDDEN");
    c.post(
        &format!("{REGISTER}?kind=guest"),
        json!({"username": "g", "password": "pw"}),
    )
    .expect_err(403, "M_GUEST_ACCESS_FORBIDDEN");
    c.get("/_matrix/client/v3/register/available?username=g").ok();
}

#[test]
fn closed_registration_is_forbidden() {
    let server = TestServer::start_with(&[("HEARTH_REGISTRATION__MODE", "closed")]);
    let c = server.client();
    c.post(REGISTER, json!({"username": "nobody", "password": "pw"}))
        .expect_err(403, "M_FORBIDDEN");
    c.post(
        REGISTER,
        json!({"username": "nobody", "password": "pw", "auth": {"type": "m.login.dummy"}}),
    )
    .expect_err(403, "M_FORBIDDEN");
    c.get("/_matrix/client/v1/register/m.login.registration_token/validity?token=x")
        .expect_err(403, "M_FORBIDDEN");
    c.login_with("nobody", "pw", json!({})).expect_err(403, "M_FORBIDDEN");
}

#[test]
fn token_registration_flow() {
    let mut server = TestServer::unstarted(&[("HEARTH_REGISTRATION__MODE", "token")]);
    let out = server.admin(
        &["registration-token", "create", "--token", "once-only", "--uses", "1"],
        None,
    );
    assert!(out.status.success(), "{out:?}");
    server.launch();
    let c = server.client();
    let validity = |t: &str| {
        c.get(&format!(
            "/_matrix/client/v1/register/m.login.registration_token/validity?token={}",
            enc(t)
        ))
    };
    assert_eq!(validity("once-only").ok()["valid"], true);
    assert_eq!(validity("wrong").ok()["valid"], false);

    let body = json!({"username": "tok", "password": "pw-tok"});
    let first = c.uia_start("POST", REGISTER, body.clone());
    assert_eq!(stages(&first), vec![vec!["m.login.registration_token".to_owned()]]);
    let session = first["session"].as_str().unwrap();

    // The dummy stage is not offered in token mode.
    let mut dummy = body.clone();
    dummy["auth"] = json!({"type": "m.login.dummy", "session": session});
    let r = c.post(REGISTER, dummy);
    assert_eq!(r.status, 401, "{}", r.text);
    assert!(r.body.get("user_id").is_none());

    // A bad token: 401 with the UIA body and M_UNAUTHORIZED.
    let mut bad = body.clone();
    bad["auth"] = json!({"type": "m.login.registration_token", "token": "wrong", "session": session});
    let r = c.post(REGISTER, bad);
    assert_eq!(r.status, 401, "{}", r.text);
    assert_eq!(r.errcode(), "M_UNAUTHORIZED", "{}", r.text);
    assert_eq!(r.body["session"], session);
    assert!(r.body["flows"].is_array());

    let mut good = body;
    good["auth"] = json!({"type": "m.login.registration_token", "token": "once-only", "session": session});
    let r = c.post(REGISTER, good);
    assert_eq!(r.ok()["user_id"], "@tok:hearth.test");

    // Used up.
    assert_eq!(validity("once-only").ok()["valid"], false);
    let body2 = json!({"username": "tok2", "password": "pw"});
    let first = c.uia_start("POST", REGISTER, body2.clone());
    let mut again = body2;
    again["auth"] = json!({"type": "m.login.registration_token", "token": "once-only", "session": first["session"]});
    let r = c.post(REGISTER, again);
    assert_eq!(r.status, 401, "{}", r.text);
    assert_eq!(r.errcode(), "M_UNAUTHORIZED", "{}", r.text);
    c.get("/_matrix/client/v3/register/available?username=tok2").ok();
    validity("").ok();
}

#[test]
fn registration_token_validity_is_forbidden_in_open_mode() {
    let server = TestServer::start();
    server
        .client()
        .get("/_matrix/client/v1/register/m.login.registration_token/validity?token=abc")
        .expect_err(403, "M_FORBIDDEN");
}

#[test]
fn login_with_password() {
    let server = TestServer::start();
    let _alice = server.user("alice", "pw-alice");
    let c = server.client();
    let flows = c.get(LOGIN);
    assert!(
        flows.ok()["flows"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["type"] == "m.login.password"),
        "{}",
        flows.text
    );

    let by_local = c.login_with("alice", "pw-alice", json!({}));
    let b1 = by_local.ok().clone();
    assert_eq!(b1["user_id"], "@alice:hearth.test");
    let by_full = c.login_with("@alice:hearth.test", "pw-alice", json!({}));
    let b2 = by_full.ok().clone();
    assert_eq!(b2["user_id"], "@alice:hearth.test");
    assert_ne!(b1["device_id"], b2["device_id"]);
    assert_ne!(b1["access_token"], b2["access_token"]);
    for b in [&b1, &b2] {
        let who = c.with_token(b["access_token"].as_str()).whoami();
        assert_eq!(who.ok()["device_id"], b["device_id"]);
    }
    // The deprecated top-level `user` field.
    let r = c.post(
        LOGIN,
        json!({"type": "m.login.password", "user": "alice", "password": "pw-alice"}),
    );
    assert_eq!(r.ok()["user_id"], "@alice:hearth.test");

    c.login_with("alice", "wrong", json!({})).expect_err(403, "M_FORBIDDEN");
    c.login_with("nobody", "pw-alice", json!({}))
        .expect_err(403, "M_FORBIDDEN");
    c.login_with("@alice:elsewhere.example", "pw-alice", json!({}))
        .expect_err(403, "M_FORBIDDEN");
    c.post(LOGIN, json!({"type": "m.login.bogus"}))
        .expect_err(400, "M_UNKNOWN");
}

#[test]
fn login_reusing_a_device_id_keeps_the_device_and_revokes_its_old_token() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    let c = server.client();
    let first = c
        .login_with(
            "alice",
            "pw",
            json!({"device_id": "KEEPME", "initial_device_display_name": "Laptop", "refresh_token": true}),
        )
        .ok()
        .clone();
    assert_eq!(first["device_id"], "KEEPME");
    assert!(first["refresh_token"].is_string());
    let second = c
        .login_with(
            "alice",
            "pw",
            json!({"device_id": "KEEPME", "initial_device_display_name": "Other"}),
        )
        .ok()
        .clone();
    assert_eq!(second["device_id"], "KEEPME");
    // "the server will invalidate any access and refresh tokens previously assigned to that
    // device"
    c.with_token(first["access_token"].as_str())
        .whoami()
        .expect_err(401, "M_UNKNOWN_TOKEN");
    c.post(
        "/_matrix/client/v3/refresh",
        json!({"refresh_token": first["refresh_token"]}),
    )
    .expect_err(401, "M_UNKNOWN_TOKEN");
    let who = c.with_token(second["access_token"].as_str()).whoami();
    assert_eq!(who.ok()["device_id"], "KEEPME");
    let devices = alice.get("/_matrix/client/v3/devices");
    let list = devices.ok()["devices"].as_array().unwrap().clone();
    assert_eq!(list.len(), 2, "{}", devices.text);
    let keep = list.iter().find(|d| d["device_id"] == "KEEPME").unwrap();
    assert_eq!(keep["display_name"], "Laptop");
}

#[test]
fn refresh_tokens_rotate() {
    let server = TestServer::start();
    let _alice = server.user("alice", "pw");
    let c = server.client();
    let login = c.login_with("alice", "pw", json!({"refresh_token": true}));
    let b = login.ok().clone();
    let refresh1 = b["refresh_token"].as_str().expect("refresh_token").to_owned();
    assert!(b["expires_in_ms"].as_u64().is_some_and(|ms| ms > 0), "{}", login.text);

    let r = c.post("/_matrix/client/v3/refresh", json!({"refresh_token": refresh1}));
    let r = r.ok().clone();
    let access2 = r["access_token"].as_str().unwrap();
    let refresh2 = r["refresh_token"].as_str().expect("a new refresh token");
    assert_ne!(access2, b["access_token"].as_str().unwrap());
    assert_ne!(refresh2, refresh1);
    assert!(r["expires_in_ms"].as_u64().is_some_and(|ms| ms > 0));
    let who = c.with_token(Some(access2)).whoami();
    assert_eq!(who.ok()["device_id"], b["device_id"]);

    // Once the new tokens are in use, the old refresh token is dead.
    c.post("/_matrix/client/v3/refresh", json!({"refresh_token": refresh1}))
        .expect_err(401, "M_UNKNOWN_TOKEN");
    let r3 = c.post("/_matrix/client/v3/refresh", json!({"refresh_token": refresh2}));
    assert!(r3.ok()["access_token"].is_string());
    c.post("/_matrix/client/v3/refresh", json!({"refresh_token": "hrt_nonsense"}))
        .expect_err(401, "M_UNKNOWN_TOKEN");
    // A refresh token is not an access token.
    c.with_token(Some(refresh2)).whoami().expect_err(401, "M_UNKNOWN_TOKEN");

    // Logging out ends the refresh token too.
    let r3 = r3.body.clone();
    let current = c.with_token(r3["access_token"].as_str());
    current.post("/_matrix/client/v3/logout", json!({})).ok();
    c.post(
        "/_matrix/client/v3/refresh",
        json!({"refresh_token": r3["refresh_token"]}),
    )
    .expect_err(401, "M_UNKNOWN_TOKEN");
}

#[test]
fn expired_access_tokens_are_soft_logged_out() {
    let server = TestServer::start_with(&[("HEARTH_SESSIONS__REFRESHABLE_TOKEN_LIFETIME_SECS", "1")]);
    let _alice = server.user("alice", "pw");
    let c = server.client();
    let plain = c.login_with("alice", "pw", json!({})).ok().clone();
    let b = c.login_with("alice", "pw", json!({"refresh_token": true})).ok().clone();
    assert_eq!(b["expires_in_ms"], 1000);
    let refreshing = c.with_token(b["access_token"].as_str());
    std::thread::sleep(std::time::Duration::from_millis(1300));
    let r = refreshing.whoami();
    r.expect_err(401, "M_UNKNOWN_TOKEN");
    assert_eq!(r.body["soft_logout"], true, "{}", r.text);
    // Tokens issued without a refresh token do not expire.
    c.with_token(plain["access_token"].as_str()).whoami().ok();
    let fresh = c.post(
        "/_matrix/client/v3/refresh",
        json!({"refresh_token": b["refresh_token"]}),
    );
    let token = fresh.ok()["access_token"].as_str().unwrap();
    assert_eq!(c.with_token(Some(token)).whoami().ok()["device_id"], b["device_id"]);
}

#[test]
fn logout_ends_only_this_session() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    let mut other = server.client();
    other.login("alice", "pw");
    alice.post("/_matrix/client/v3/logout", json!({})).ok();
    alice.whoami().expect_err(401, "M_UNKNOWN_TOKEN");
    alice
        .post("/_matrix/client/v3/logout", json!({}))
        .expect_err(401, "M_UNKNOWN_TOKEN");
    other.whoami().ok();
    let devices = other.get("/_matrix/client/v3/devices");
    assert_eq!(devices.ok()["devices"].as_array().unwrap().len(), 1);
}

#[test]
fn logout_all_ends_every_session() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    let mut second = server.client();
    second.login("alice", "pw");
    let bob = server.user("bob", "pw");
    second.post("/_matrix/client/v3/logout/all", json!({})).ok();
    alice.whoami().expect_err(401, "M_UNKNOWN_TOKEN");
    second.whoami().expect_err(401, "M_UNKNOWN_TOKEN");
    bob.whoami().ok();
    let mut again = server.client();
    again.login("alice", "pw");
    let devices = again.get("/_matrix/client/v3/devices");
    assert_eq!(devices.ok()["devices"].as_array().unwrap().len(), 1);
}

#[test]
fn whoami_names_user_and_device() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    let who = alice.whoami();
    let b = who.ok();
    assert_eq!(b["user_id"], "@alice:hearth.test");
    assert_eq!(b["device_id"].as_str(), alice.device_id.as_deref());
    assert_ne!(b["is_guest"], true);
    server.client().whoami().expect_err(401, "M_MISSING_TOKEN");
}

#[test]
fn change_password_with_uia() {
    let server = TestServer::start();
    let alice = server.user("alice", "old-pw");
    let mut second = server.client();
    second.login("alice", "old-pw");
    let bob = server.user("bob", "bob-pw");
    const PATH: &str = "/_matrix/client/v3/account/password";

    let first = alice.uia_start("POST", PATH, json!({"new_password": "new-pw"}));
    assert_eq!(stages(&first), vec![vec!["m.login.password".to_owned()]]);
    let session = first["session"].as_str().unwrap();

    let wrong = alice.post(
        PATH,
        json!({"new_password": "new-pw", "auth": alice.password_auth("nope", Some(session))}),
    );
    assert_eq!(wrong.status, 401, "{}", wrong.text);
    assert_eq!(wrong.errcode(), "M_FORBIDDEN", "{}", wrong.text);
    assert!(wrong.body["flows"].is_array(), "{}", wrong.text);

    // Another user's password does not prove alice.
    let mut as_bob = bob.password_auth("bob-pw", Some(session));
    as_bob["identifier"]["user"] = json!("bob");
    let r = alice.post(PATH, json!({"new_password": "new-pw", "auth": as_bob}));
    assert_eq!(r.status, 401, "{}", r.text);

    let ok = alice.post(
        PATH,
        json!({"new_password": "new-pw", "auth": alice.password_auth("old-pw", Some(session))}),
    );
    ok.ok();

    alice.whoami().ok();
    second.whoami().expect_err(401, "M_UNKNOWN_TOKEN");
    bob.whoami().ok();
    let c = server.client();
    c.login_with("alice", "old-pw", json!({}))
        .expect_err(403, "M_FORBIDDEN");
    c.login_with("alice", "new-pw", json!({})).ok();
}

#[test]
fn change_password_can_keep_other_devices() {
    let server = TestServer::start();
    let alice = server.user("alice", "old-pw");
    let mut second = server.client();
    second.login("alice", "old-pw");
    const PATH: &str = "/_matrix/client/v3/account/password";
    let first = alice.uia_start("POST", PATH, json!({"new_password": "new-pw"}));
    alice
        .post(
            PATH,
            json!({
                "new_password": "new-pw",
                "logout_devices": false,
                "auth": alice.password_auth("old-pw", first["session"].as_str()),
            }),
        )
        .ok();
    alice.whoami().ok();
    second.whoami().ok();
    let c = server.client();
    c.login_with("alice", "new-pw", json!({})).ok();
    c.login_with("alice", "old-pw", json!({}))
        .expect_err(403, "M_FORBIDDEN");
}

#[test]
fn deactivate_account_with_uia() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    let mut second = server.client();
    second.login("alice", "pw");
    let bob = server.user("bob", "pw");
    alice
        .put(
            &format!("/_matrix/client/v3/profile/{}/displayname", enc(&alice.uid())),
            json!({"displayname": "Alice"}),
        )
        .ok();
    const PATH: &str = "/_matrix/client/v3/account/deactivate";

    let first = alice.uia_start("POST", PATH, json!({}));
    assert_eq!(stages(&first), vec![vec!["m.login.password".to_owned()]]);
    let session = first["session"].as_str().unwrap();
    let wrong = alice.post(PATH, json!({"auth": alice.password_auth("nope", Some(session))}));
    assert_eq!(wrong.status, 401, "{}", wrong.text);
    assert_eq!(wrong.errcode(), "M_FORBIDDEN", "{}", wrong.text);
    alice.whoami().ok();

    let ok = alice.post(PATH, json!({"auth": alice.password_auth("pw", Some(session))}));
    assert_eq!(ok.ok()["id_server_unbind_result"], "no-support");

    alice.whoami().expect_err(401, "M_UNKNOWN_TOKEN");
    second.whoami().expect_err(401, "M_UNKNOWN_TOKEN");
    let c = server.client();
    c.login_with("alice", "pw", json!({}))
        .expect_err(403, "M_USER_DEACTIVATED");
    c.get("/_matrix/client/v3/register/available?username=alice")
        .expect_err(400, "M_USER_IN_USE");
    c.post(REGISTER, json!({"username": "alice", "password": "x"}))
        .expect_err(400, "M_USER_IN_USE");
    bob.get("/_matrix/client/v3/profile/%40alice%3Ahearth.test")
        .expect_err(404, "M_NOT_FOUND");
    bob.get("/_matrix/client/v3/profile/%40alice%3Ahearth.test/displayname")
        .expect_err(404, "M_NOT_FOUND");
    bob.whoami().ok();
}

/// A client that logged out and logs in again may still send its dead token; `/login` must not
/// answer that with 401 (Synapse ignores it too).
#[test]
fn login_ignores_a_stale_token() {
    let server = TestServer::start();
    let mut alice = server.user("alice", "pw");
    alice.post("/_matrix/client/v3/logout", json!({})).ok();
    alice.whoami().expect_err(401, "M_UNKNOWN_TOKEN");
    let r = alice.login_with("alice", "pw", json!({}));
    alice.adopt(r.ok());
    alice.whoami().ok();
}

/// Spec "Refreshing access tokens": the old refresh token stays valid until the new tokens are
/// used, so a client that lost the `/refresh` answer can retry with the old one.
#[test]
fn a_lost_refresh_answer_can_be_retried() {
    let server = TestServer::start();
    let _alice = server.user("alice", "pw");
    let c = server.client();
    let b = c.login_with("alice", "pw", json!({"refresh_token": true})).ok().clone();
    let refresh1 = b["refresh_token"].as_str().unwrap().to_owned();
    let old_access = b["access_token"].as_str().unwrap().to_owned();

    // First answer "lost": the client retries with the same refresh token.
    let lost = c
        .post("/_matrix/client/v3/refresh", json!({"refresh_token": refresh1}))
        .ok()
        .clone();
    let retry = c
        .post("/_matrix/client/v3/refresh", json!({"refresh_token": refresh1}))
        .ok()
        .clone();
    assert_ne!(lost["access_token"], retry["access_token"]);
    // The tokens of the lost answer were replaced by the retry's; the old access token still works.
    c.with_token(lost["access_token"].as_str())
        .whoami()
        .expect_err(401, "M_UNKNOWN_TOKEN");
    c.with_token(Some(&old_access)).whoami().ok();

    // Using the new access token retires the old pair.
    c.with_token(retry["access_token"].as_str()).whoami().ok();
    c.with_token(Some(&old_access))
        .whoami()
        .expect_err(401, "M_UNKNOWN_TOKEN");
    c.post("/_matrix/client/v3/refresh", json!({"refresh_token": refresh1}))
        .expect_err(401, "M_UNKNOWN_TOKEN");
    c.post(
        "/_matrix/client/v3/refresh",
        json!({"refresh_token": retry["refresh_token"]}),
    )
    .ok();
}

#[test]
fn deactivation_leaves_every_room_with_member_events() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    let bob = server.user("bob", "pw");
    let create = |c: &crate::support::Client, body: Value| {
        c.post("/_matrix/client/v3/createRoom", body).ok()["room_id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let joined = create(&bob, json!({"preset": "public_chat"}));
    alice
        .post(&format!("/_matrix/client/v3/join/{}", enc(&joined)), json!({}))
        .ok();
    let invited = create(&bob, json!({"invite": [alice.uid()]}));

    let first = alice.uia_start("POST", "/_matrix/client/v3/account/deactivate", json!({}));
    let session = first["session"].as_str().unwrap().to_owned();
    let auth = alice.password_auth("pw", Some(&session));
    alice
        .post("/_matrix/client/v3/account/deactivate", json!({"auth": auth}))
        .ok();

    let member = |room: &str| {
        bob.get(&format!(
            "/_matrix/client/v3/rooms/{}/state/m.room.member/{}",
            enc(room),
            enc(&alice.uid())
        ))
        .ok()["membership"]
            .clone()
    };
    assert_eq!(member(&joined), "leave");
    assert_eq!(member(&invited), "leave", "the invite is rejected");
    let members = bob.get(&format!("/_matrix/client/v3/rooms/{}/joined_members", enc(&joined)));
    assert!(members.ok()["joined"].get(alice.uid()).is_none());
}

#[test]
fn third_party_identifiers_answer_without_email_or_sms() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    assert_eq!(
        alice.get("/_matrix/client/v3/account/3pid").ok()["threepids"],
        json!([])
    );
    let secret = json!({"client_secret": "s3cret", "email": "a@example.org", "send_attempt": 1});
    alice
        .post("/_matrix/client/v3/account/3pid/email/requestToken", secret)
        .expect_err(400, "M_THREEPID_MEDIUM_NOT_SUPPORTED");
    let msisdn = json!({"client_secret": "s3cret", "country": "GB", "phone_number": "07700900000", "send_attempt": 1});
    alice
        .post("/_matrix/client/v3/account/3pid/msisdn/requestToken", msisdn)
        .expect_err(400, "M_THREEPID_MEDIUM_NOT_SUPPORTED");
    alice
        .post(
            "/_matrix/client/v3/account/3pid/add",
            json!({"client_secret": "s3cret", "sid": "1"}),
        )
        .expect_err(400, "M_THREEPID_AUTH_FAILED");
    let bind = json!({"client_secret": "s3cret", "sid": "1", "id_server": "id.example.org", "id_access_token": "t"});
    alice
        .post("/_matrix/client/v3/account/3pid/bind", bind)
        .expect_err(400, "M_THREEPID_AUTH_FAILED");
    for path in [
        "/_matrix/client/v3/account/3pid/delete",
        "/_matrix/client/v3/account/3pid/unbind",
    ] {
        let r = alice.post(path, json!({"medium": "email", "address": "a@example.org"}));
        assert_eq!(r.ok()["id_server_unbind_result"], "no-support", "{path}");
    }
    server
        .client()
        .get("/_matrix/client/v3/account/3pid")
        .expect_err(401, "M_MISSING_TOKEN");
}

#[test]
fn whois_answers_users_about_themselves_and_admins_about_anyone() {
    let mut server = TestServer::unstarted(&[]);
    let out = server.admin(&["user", "create", "root", "--admin"], Some("rootpw\n"));
    assert!(out.status.success(), "{out:?}");
    server.launch();
    let mut root = server.client();
    root.login("root", "rootpw");
    let alice = server.user("alice", "pw");
    let path = |user: &str| format!("/_matrix/client/v3/admin/whois/{}", enc(user));

    let me = alice.get(&path(&alice.uid())).ok().clone();
    assert_eq!(me["user_id"], alice.uid());
    let device = alice.device_id.clone().unwrap();
    let connections = &me["devices"][&device]["sessions"][0]["connections"][0];
    assert_eq!(connections["ip"], "127.0.0.1", "{me}");
    assert!(connections["last_seen"].as_u64().is_some(), "{me}");

    alice.get(&path(&root.uid())).expect_err(403, "M_FORBIDDEN");
    let seen = root.get(&path(&alice.uid())).ok().clone();
    assert!(seen["devices"].get(&device).is_some(), "{seen}");
    root.get(&path("@nobody:hearth.test")).expect_err(404, "M_NOT_FOUND");
}
