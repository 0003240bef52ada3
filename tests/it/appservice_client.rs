//! Application services on the client-server API (spec "Application Service API" →
//! "Client-Server API Extensions", MSC3202 device masquerading, MSC4190 device management):
//! the `as_token` on every endpoint, masquerading inside and outside the namespace,
//! `m.login.application_service` registration and login, `M_EXCLUSIVE` for everyone else,
//! timestamp massaging, devices without UIA, and `hearth appservice list|check`.

use std::path::{Path, PathBuf};

use serde_json::json;

use crate::support::{Client, TestServer, out_text, run_plain};

/// The bridge: exclusive `@irc_*` users and `#irc_*` aliases, a shared `@shared_*` namespace.
const IRC: &str = "id: irc
url: http://127.0.0.1:9
as_token: as-irc-secret
hs_token: hs-irc-secret
sender_localpart: ircbot
rate_limited: false
namespaces:
  users:
    - exclusive: true
      regex: '@irc_.*:hearth\\.test'
    - exclusive: false
      regex: '@shared_.*:hearth\\.test'
  aliases:
    - exclusive: true
      regex: '#irc_.*:hearth\\.test'
  rooms: []
";

/// An encrypting bridge with MSC4190 (devices without UIA).
const MX: &str = "id: mx
url: http://127.0.0.1:9
as_token: as-mx-secret
hs_token: hs-mx-secret
sender_localpart: mxbot
namespaces:
  users:
    - exclusive: true
      regex: '@mx_.*:hearth\\.test'
  aliases: []
  rooms: []
io.element.msc4190: true
org.matrix.msc3202: true
";

/// Writes the registrations into `dir` and returns the value of
/// `HEARTH_APPSERVICES__REGISTRATION_FILES`.
fn write_registrations(dir: &Path, files: &[(&str, &str)]) -> String {
    files
        .iter()
        .map(|(name, text)| {
            let path: PathBuf = dir.join(name);
            std::fs::write(&path, text).unwrap();
            path.display().to_string()
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// A server with the IRC and MX registrations; the temporary directory holds the files.
fn server() -> (TestServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let files = write_registrations(dir.path(), &[("irc.yaml", IRC), ("mx.yaml", MX)]);
    let server = TestServer::start_with(&[("HEARTH_APPSERVICES__REGISTRATION_FILES", &files)]);
    (server, dir)
}

fn with_as(server: &TestServer, token: &str) -> Client {
    server.client().with_token(Some(token))
}

const WHOAMI: &str = "/_matrix/client/v3/account/whoami";
const REGISTER: &str = "/_matrix/client/v3/register";

#[test]
fn the_as_token_acts_as_the_sender_or_a_registered_namespace_user() {
    let (server, _dir) = server();
    let bridge = with_as(&server, "as-irc-secret");
    // The sender, created on first use; no device.
    let me = bridge.get(WHOAMI).ok().clone();
    assert_eq!(me["user_id"], "@ircbot:hearth.test");
    assert!(me.get("device_id").is_none(), "{me}");
    // The token as the `access_token` query parameter works the same.
    let anonymous = server.client();
    let me = anonymous
        .get(&format!("{WHOAMI}?access_token=as-irc-secret"))
        .ok()
        .clone();
    assert_eq!(me["user_id"], "@ircbot:hearth.test");
    // A wrong token is still an unknown token.
    with_as(&server, "as-irc-wrong")
        .get(WHOAMI)
        .expect_err(401, "M_UNKNOWN_TOKEN");
    // The hs_token is no client token.
    with_as(&server, "hs-irc-secret")
        .get(WHOAMI)
        .expect_err(401, "M_UNKNOWN_TOKEN");

    // Outside the namespace: refused, even for a user that exists.
    let alice = server.user("alice", "pw-alice-1");
    bridge
        .get(&format!("{WHOAMI}?user_id=@alice:hearth.test"))
        .expect_err(403, "M_FORBIDDEN");
    // The other service's namespace is not this one's.
    bridge
        .get(&format!("{WHOAMI}?user_id=@mx_one:hearth.test"))
        .expect_err(403, "M_FORBIDDEN");
    // Inside the namespace but not registered yet.
    bridge
        .get(&format!("{WHOAMI}?user_id=@irc_bob:hearth.test"))
        .expect_err(403, "M_FORBIDDEN");

    // Registration without UIA, inside the namespace.
    let registered = bridge
        .post(
            REGISTER,
            json!({"type": "m.login.application_service", "username": "irc_bob"}),
        )
        .ok()
        .clone();
    assert_eq!(registered["user_id"], "@irc_bob:hearth.test");
    let bob_device = registered["device_id"].as_str().unwrap().to_owned();
    assert!(registered["access_token"].is_string());
    let me = bridge
        .get(&format!("{WHOAMI}?user_id=@irc_bob:hearth.test"))
        .ok()
        .clone();
    assert_eq!(me["user_id"], "@irc_bob:hearth.test");
    assert!(me.get("device_id").is_none());
    // MSC3202 / spec v1.17: an existing device of that user, by either parameter name.
    let me = bridge
        .get(&format!("{WHOAMI}?user_id=@irc_bob:hearth.test&device_id={bob_device}"))
        .ok()
        .clone();
    assert_eq!(me["device_id"], bob_device.as_str());
    let me = bridge
        .get(&format!(
            "{WHOAMI}?user_id=@irc_bob:hearth.test&org.matrix.msc3202.device_id={bob_device}"
        ))
        .ok()
        .clone();
    assert_eq!(me["device_id"], bob_device.as_str());
    bridge
        .get(&format!("{WHOAMI}?user_id=@irc_bob:hearth.test&device_id=NOSUCHDEVICE"))
        .expect_err(400, "M_UNKNOWN_DEVICE");
    // Another user's device is not this user's.
    bridge
        .get(&format!(
            "{WHOAMI}?user_id=@irc_bob:hearth.test&device_id={}",
            alice.device_id.clone().unwrap()
        ))
        .expect_err(400, "M_UNKNOWN_DEVICE");
    // Without a device, what needs one is refused.
    bridge
        .post(
            "/_matrix/client/v3/keys/upload?user_id=@irc_bob:hearth.test",
            json!({"one_time_keys": {}}),
        )
        .expect_err(400, "M_MISSING_PARAM");
    // A request made as the masqueraded user really is from them.
    let room = alice
        .post("/_matrix/client/v3/createRoom", json!({"preset": "public_chat"}))
        .ok()["room_id"]
        .as_str()
        .unwrap()
        .to_owned();
    bridge
        .post(
            &format!("/_matrix/client/v3/join/{room}?user_id=@irc_bob:hearth.test"),
            json!({}),
        )
        .ok();
    // Device-bound requests of a service without a device: sync works, logout ends nothing.
    bridge.get("/_matrix/client/v3/sync?timeout=0").ok();
    bridge.post("/_matrix/client/v3/logout", json!({})).ok();
    bridge.get(WHOAMI).ok();
    let members = alice
        .get(&format!("/_matrix/client/v3/rooms/{room}/joined_members"))
        .ok()
        .clone();
    assert!(members["joined"]["@irc_bob:hearth.test"].is_object(), "{members}");
}

#[test]
fn registration_and_login_respect_namespaces() {
    let (server, _dir) = server();
    let bridge = with_as(&server, "as-irc-secret");
    let as_register = |client: &Client, username: &str| {
        client.post(
            REGISTER,
            json!({"type": "m.login.application_service", "username": username, "inhibit_login": true}),
        )
    };
    // Outside its namespace (or in another service's): M_EXCLUSIVE.
    as_register(&bridge, "carol").expect_err(400, "M_EXCLUSIVE");
    as_register(&bridge, "mx_carol").expect_err(400, "M_EXCLUSIVE");
    // Without the token, or with a user's token: no registration.
    as_register(&server.client(), "irc_dan").expect_err(401, "M_MISSING_TOKEN");
    let alice = server.user("alice", "pw-alice-1");
    as_register(&alice, "irc_dan").expect_err(401, "M_UNKNOWN_TOKEN");
    // inhibit_login: no tokens.
    let dan = as_register(&bridge, "irc_dan").ok().clone();
    assert_eq!(dan["user_id"], "@irc_dan:hearth.test");
    assert!(dan.get("access_token").is_none());
    as_register(&bridge, "irc_dan").expect_err(400, "M_USER_IN_USE");
    // The shared namespace is the service's too.
    as_register(&bridge, "shared_eve").ok();

    // Everyone else: the exclusive namespace is reserved, the shared one is not.
    let anonymous = server.client();
    let r = anonymous.post(REGISTER, json!({"username": "irc_frank", "password": "pw-frank-1"}));
    r.expect_err(400, "M_EXCLUSIVE");
    anonymous
        .get("/_matrix/client/v3/register/available?username=irc_frank")
        .expect_err(400, "M_EXCLUSIVE");
    // A service's sender is its own as well.
    anonymous
        .get("/_matrix/client/v3/register/available?username=mxbot")
        .expect_err(400, "M_EXCLUSIVE");
    anonymous
        .get("/_matrix/client/v3/register/available?username=shared_gus")
        .ok();

    // /login with m.login.application_service.
    let login = |client: &Client, user: &str| {
        client.post(
            "/_matrix/client/v3/login",
            json!({"type": "m.login.application_service", "identifier": {"type": "m.id.user", "user": user}}),
        )
    };
    let logged_in = login(&bridge, "irc_dan").ok().clone();
    assert_eq!(logged_in["user_id"], "@irc_dan:hearth.test");
    let mut dan_client = server.client();
    dan_client.adopt(&logged_in);
    assert_eq!(dan_client.whoami().ok()["user_id"], "@irc_dan:hearth.test");
    login(&server.client(), "irc_dan").expect_err(401, "M_MISSING_TOKEN");
    login(&alice, "irc_dan").expect_err(401, "M_UNKNOWN_TOKEN");
    login(&bridge, "alice").expect_err(403, "M_FORBIDDEN");
    login(&bridge, "irc_nobody").expect_err(403, "M_FORBIDDEN");
    let types = server.client().get("/_matrix/client/v3/login").ok().clone();
    assert!(
        types["flows"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["type"] == "m.login.application_service"),
        "{types}"
    );
    // A stale user token sent to /login does not get in the way of a password login.
    alice.login_with("alice", "pw-alice-1", json!({})).ok();
    // The admin command refuses the namespace too.
    let mut server = server;
    server.stop();
    let out = server.admin(&["user", "create", "irc_hank", "--random-password"], None);
    let (stdout, stderr) = out_text(&out);
    assert!(!out.status.success(), "{stdout}{stderr}");
    assert!(stderr.contains("application service"), "{stderr}");
    let out = server.admin(&["user", "create", "shared_ian", "--random-password"], None);
    assert!(out.status.success(), "{:?}", out_text(&out));
}

#[test]
fn exclusive_aliases_and_timestamp_massaging() {
    let (server, _dir) = server();
    let bridge = with_as(&server, "as-irc-secret");
    let alice = server.user("alice", "pw-alice-1");
    let room = alice
        .post("/_matrix/client/v3/createRoom", json!({"preset": "public_chat"}))
        .ok()["room_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let alias_path = "/_matrix/client/v3/directory/room/%23irc_chan:hearth.test";
    alice
        .put(alias_path, json!({"room_id": room}))
        .expect_err(400, "M_EXCLUSIVE");
    alice
        .post("/_matrix/client/v3/createRoom", json!({"room_alias_name": "irc_other"}))
        .expect_err(400, "M_EXCLUSIVE");
    // Another service cannot take it either.
    with_as(&server, "as-mx-secret")
        .put(alias_path, json!({"room_id": room}))
        .expect_err(400, "M_EXCLUSIVE");
    // Aliases outside the namespace are anyone's.
    alice
        .put(
            "/_matrix/client/v3/directory/room/%23general:hearth.test",
            json!({"room_id": room}),
        )
        .ok();

    // The service itself manages the aliases of its namespace, in the room or not, and only
    // those.
    bridge.put(alias_path, json!({"room_id": room})).ok();
    let resolved = alice.get(alias_path).ok().clone();
    assert_eq!(resolved["room_id"], room.as_str());
    bridge
        .put(
            "/_matrix/client/v3/directory/room/%23bridged:hearth.test",
            json!({"room_id": room}),
        )
        .expect_err(400, "M_EXCLUSIVE");
    bridge
        .post("/_matrix/client/v3/createRoom", json!({"room_alias_name": "bridged"}))
        .expect_err(400, "M_EXCLUSIVE");
    // Not even the room's creator may delete it; the service may.
    alice.delete(alias_path, json!({})).expect_err(400, "M_EXCLUSIVE");
    bridge.delete(alias_path, json!({})).ok();
    alice.get(alias_path).expect_err(404, "M_NOT_FOUND");
    bridge.put(alias_path, json!({"room_id": room})).ok();
    bridge
        .delete("/_matrix/client/v3/directory/room/%23general:hearth.test", json!({}))
        .expect_err(400, "M_EXCLUSIVE");

    // ts sets origin_server_ts for the service, on /send and on /state (in a room of its own,
    // where it may send state).
    let room = bridge
        .post("/_matrix/client/v3/createRoom", json!({"preset": "public_chat"}))
        .ok()["room_id"]
        .as_str()
        .unwrap()
        .to_owned();
    alice.post(&format!("/_matrix/client/v3/join/{room}"), json!({})).ok();
    let sent = bridge
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/t1?ts=1234567890123"),
            json!({"msgtype": "m.text", "body": "from irc"}),
        )
        .ok()["event_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let event = alice
        .get(&format!("/_matrix/client/v3/rooms/{room}/event/{sent}"))
        .ok()
        .clone();
    assert_eq!(event["origin_server_ts"], 1234567890123u64);
    assert_eq!(event["sender"], "@ircbot:hearth.test");
    let state = bridge
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/state/org.example.bridge/irc?ts=1111111111111"),
            json!({"network": "libera"}),
        )
        .ok()["event_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let event = alice
        .get(&format!("/_matrix/client/v3/rooms/{room}/event/{state}"))
        .ok()
        .clone();
    assert_eq!(event["origin_server_ts"], 1111111111111u64);
    // A malformed ts is a bad request.
    bridge
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/t2?ts=yesterday"),
            json!({"msgtype": "m.text", "body": "x"}),
        )
        .expect_err(400, "M_INVALID_PARAM");
    // From a user, ts is ignored.
    let own = alice
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/t3?ts=1234567890123"),
            json!({"msgtype": "m.text", "body": "from alice"}),
        )
        .ok()["event_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let event = alice
        .get(&format!("/_matrix/client/v3/rooms/{room}/event/{own}"))
        .ok()
        .clone();
    assert_ne!(event["origin_server_ts"], 1234567890123u64);
}

#[test]
fn msc4190_services_manage_devices_without_uia() {
    let (server, _dir) = server();
    let mx = with_as(&server, "as-mx-secret");
    mx.post(
        REGISTER,
        json!({"type": "m.login.application_service", "username": "mx_one", "inhibit_login": true}),
    )
    .ok();
    let as_one = "user_id=@mx_one:hearth.test";
    let created = mx.put(
        &format!("/_matrix/client/v3/devices/BRIDGEDEV?{as_one}"),
        json!({"display_name": "bridge"}),
    );
    assert_eq!(created.status, 201, "{}", created.text);
    // Again: it exists, so it is renamed (200).
    let again = mx.put(
        &format!("/_matrix/client/v3/devices/BRIDGEDEV?{as_one}"),
        json!({"display_name": "bridge 2"}),
    );
    assert_eq!(again.status, 200, "{}", again.text);
    let device = mx
        .get(&format!("/_matrix/client/v3/devices/BRIDGEDEV?{as_one}"))
        .ok()
        .clone();
    assert_eq!(device["display_name"], "bridge 2");
    // The service acts as the device, and it can upload keys now.
    let me = mx.get(&format!("{WHOAMI}?{as_one}&device_id=BRIDGEDEV")).ok().clone();
    assert_eq!(me["device_id"], "BRIDGEDEV");
    mx.post(
        &format!("/_matrix/client/v3/keys/upload?{as_one}&device_id=BRIDGEDEV"),
        json!({"one_time_keys": {"signed_curve25519:AAAAAQ": {"key": "k", "signatures": {}}}}),
    )
    .ok();
    // Cross-signing keys are replaced without UIA too.
    for fill in ['A', 'B'] {
        let public: String = std::iter::repeat_n(fill, 43).collect();
        let body = json!({"master_key": {"user_id": "@mx_one:hearth.test", "usage": ["master"], "keys": {format!("ed25519:{public}"): public}}});
        mx.post(
            &format!("/_matrix/client/v3/keys/device_signing/upload?{as_one}&device_id=BRIDGEDEV"),
            body,
        )
        .ok();
    }
    mx.put(&format!("/_matrix/client/v3/devices/SECOND?{as_one}"), json!({}));
    // Deleting without UIA, one and several.
    mx.delete(&format!("/_matrix/client/v3/devices/BRIDGEDEV?{as_one}"), json!({}))
        .ok();
    mx.get(&format!("{WHOAMI}?{as_one}&device_id=BRIDGEDEV"))
        .expect_err(400, "M_UNKNOWN_DEVICE");
    mx.post(
        &format!("/_matrix/client/v3/delete_devices?{as_one}"),
        json!({"devices": ["SECOND"]}),
    )
    .ok();
    let devices = mx.get(&format!("/_matrix/client/v3/devices?{as_one}")).ok().clone();
    assert_eq!(devices["devices"].as_array().unwrap().len(), 0, "{devices}");

    // A service without MSC4190 and a user: no creation, deletion needs UIA.
    let irc = with_as(&server, "as-irc-secret");
    irc.put("/_matrix/client/v3/devices/NEWDEV", json!({}))
        .expect_err(404, "M_NOT_FOUND");
    let alice = server.user("alice", "pw-alice-1");
    alice
        .put("/_matrix/client/v3/devices/NEWDEV", json!({}))
        .expect_err(404, "M_NOT_FOUND");
    let uia = alice.delete(
        &format!("/_matrix/client/v3/devices/{}", alice.device_id.clone().unwrap()),
        json!({}),
    );
    assert_eq!(uia.status, 401, "{}", uia.text);
}

#[test]
fn the_cli_lists_and_checks_registrations() {
    let dir = tempfile::tempdir().unwrap();
    let files = write_registrations(dir.path(), &[("irc.yaml", IRC), ("mx.yaml", MX)]);
    let env = [
        ("HEARTH_SERVER_NAME", "hearth.test"),
        ("HEARTH_APPSERVICES__REGISTRATION_FILES", files.as_str()),
    ];
    let out = run_plain(&["appservice", "list"], &env);
    let (stdout, stderr) = out_text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        stdout.contains("irc") && stdout.contains("@ircbot:hearth.test"),
        "{stdout}"
    );
    assert!(stdout.contains("@irc_.*:hearth\\.test"), "{stdout}");
    assert!(
        stdout.contains("mx") && stdout.contains("@mxbot:hearth.test"),
        "{stdout}"
    );

    let good = dir.path().join("irc.yaml");
    let out = run_plain(
        &["appservice", "check", good.to_str().unwrap()],
        &[("HEARTH_SERVER_NAME", "hearth.test")],
    );
    let (stdout, stderr) = out_text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.starts_with("ok"), "{stdout}");

    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, IRC.replace("'@irc_.*:hearth\\.test'", "'@irc_(:hearth'")).unwrap();
    let out = run_plain(
        &[
            "appservice",
            "check",
            bad.to_str().unwrap(),
            "--server-name",
            "hearth.test",
        ],
        &[],
    );
    let (stdout, stderr) = out_text(&out);
    assert!(!out.status.success(), "{stdout}{stderr}");
    assert!(
        stderr.contains("bad.yaml") && stderr.contains("namespaces.users[0].regex"),
        "{stderr}"
    );
    // check-config checks the registrations it lists.
    let config = dir.path().join("homeserver.toml");
    std::fs::write(
        &config,
        format!(
            "server_name = \"hearth.test\"\n[appservices]\nregistration_files = [{:?}]\n",
            bad.display().to_string()
        ),
    )
    .unwrap();
    let out = run_plain(&["check-config", config.to_str().unwrap()], &[]);
    let (stdout, stderr) = out_text(&out);
    assert!(!out.status.success(), "{stdout}{stderr}");
    assert!(stderr.contains("namespaces.users[0].regex"), "{stderr}");
    let missing = dir.path().join("missing-token.yaml");
    std::fs::write(&missing, IRC.replace("as_token: as-irc-secret\n", "")).unwrap();
    let out = run_plain(
        &[
            "appservice",
            "check",
            missing.to_str().unwrap(),
            "--server-name",
            "hearth.test",
        ],
        &[],
    );
    let (_, stderr) = out_text(&out);
    assert!(!out.status.success() && stderr.contains("as_token"), "{stderr}");
}

/// A service answering queries: it creates `@q_known*` users and `#q_room*` aliases when asked
/// and declares the `gitter` protocol.
fn query_registration(url: &str) -> String {
    format!(
        "id: q
url: {url}
as_token: as-q-secret
hs_token: hs-q-secret
sender_localpart: qbot
namespaces:
  users:
    - exclusive: true
      regex: '@q_.*:hearth\\.test'
  aliases:
    - exclusive: true
      regex: '#q_.*:hearth\\.test'
  rooms: []
protocols: [gitter]
"
    )
}

fn decode(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(b) = u8::from_str_radix(&path[i + 1..i + 3], 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn services_are_asked_about_unknown_users_aliases_and_third_party_lookups() {
    use crate::support::appservice_queries::FakeAppservice;
    let base: std::sync::Arc<std::sync::Mutex<String>> = Default::default();
    let hearth = std::sync::Arc::clone(&base);
    let fake = FakeAppservice::start(move |request| {
        let path = decode(&request.path);
        let service = Client::new(&hearth.lock().unwrap()).with_token(Some("as-q-secret"));
        let protocol = r#"{"user_fields": ["username"], "location_fields": ["room"], "icon": "mxc://hearth.test/icon",
            "field_types": {"username": {"regexp": ".*", "placeholder": "alice"}, "room": {"regexp": ".*", "placeholder": "room"}},
            "instances": [{"desc": "Gitter", "network_id": "gitter", "fields": {}}]}"#;
        if let Some(user) = path.strip_prefix("/_matrix/app/v1/users/") {
            if user.starts_with("@q_known") {
                let localpart = user.trim_start_matches('@').split(':').next().unwrap();
                service
                    .post(
                        REGISTER,
                        json!({"type": "m.login.application_service", "username": localpart, "inhibit_login": true}),
                    )
                    .ok();
                return (200, "{}".into());
            }
            return (404, r#"{"errcode":"M_NOT_FOUND"}"#.into());
        }
        if let Some(alias) = path.strip_prefix("/_matrix/app/v1/rooms/") {
            if alias.starts_with("#q_room") {
                let localpart = alias.trim_start_matches('#').split(':').next().unwrap();
                service
                    .post(
                        "/_matrix/client/v3/createRoom",
                        json!({"preset": "public_chat", "room_alias_name": localpart}),
                    )
                    .ok();
                return (200, "{}".into());
            }
            return (404, r#"{"errcode":"M_NOT_FOUND"}"#.into());
        }
        match path.split('?').next().unwrap() {
            "/_matrix/app/v1/thirdparty/protocol/gitter" => (200, protocol.into()),
            "/_matrix/app/v1/thirdparty/location/gitter" | "/_matrix/app/v1/thirdparty/location" => (
                200,
                json!([{"alias": "#q_gitter_foo:hearth.test", "protocol": "gitter", "fields": {"room": "foo"}}, {"bogus": 1}])
                    .to_string(),
            ),
            "/_matrix/app/v1/thirdparty/user/gitter" | "/_matrix/app/v1/thirdparty/user" => (
                200,
                json!([{"userid": "@q_gitter_g:hearth.test", "protocol": "gitter", "fields": {"username": "g"}}]).to_string(),
            ),
            _ => (404, r#"{"errcode":"M_NOT_FOUND"}"#.into()),
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let files = write_registrations(dir.path(), &[("q.yaml", &query_registration(&fake.url))]);
    let server = TestServer::start_with(&[("HEARTH_APPSERVICES__REGISTRATION_FILES", &files)]);
    *base.lock().unwrap() = server.base.clone();
    let alice = server.user("alice", "pw-alice-1");

    // Users: the service is asked, with its hs_token, and creates the user.
    let profile = alice.get("/_matrix/client/v3/profile/@q_known1:hearth.test");
    assert_eq!(profile.status, 200, "{}", profile.text);
    let asked: Vec<_> = fake.received();
    let query = asked
        .iter()
        .find(|r| decode(&r.path) == "/_matrix/app/v1/users/@q_known1:hearth.test")
        .expect("user query");
    assert_eq!(query.method, "GET");
    assert_eq!(query.authorization.as_deref(), Some("Bearer hs-q-secret"));
    alice
        .get("/_matrix/client/v3/profile/@q_unknown:hearth.test")
        .expect_err(404, "M_NOT_FOUND");
    // Outside every namespace: nobody is asked.
    let before = fake.received().len();
    alice
        .get("/_matrix/client/v3/profile/@nobody:hearth.test")
        .expect_err(404, "M_NOT_FOUND");
    assert_eq!(fake.received().len(), before);
    // An invite of an unknown namespace user.
    let room = alice.post("/_matrix/client/v3/createRoom", json!({})).ok()["room_id"]
        .as_str()
        .unwrap()
        .to_owned();
    alice
        .post(
            &format!("/_matrix/client/v3/rooms/{room}/invite"),
            json!({"user_id": "@q_known2:hearth.test"}),
        )
        .ok();
    alice
        .post(
            &format!("/_matrix/client/v3/rooms/{room}/invite"),
            json!({"user_id": "@q_ghost:hearth.test"}),
        )
        .expect_err(404, "M_NOT_FOUND");

    // Aliases: resolving, and joining by alias.
    let resolved = alice
        .get("/_matrix/client/v3/directory/room/%23q_room1:hearth.test")
        .ok()
        .clone();
    assert!(resolved["room_id"].as_str().unwrap().starts_with('!'), "{resolved}");
    alice
        .get("/_matrix/client/v3/directory/room/%23q_none:hearth.test")
        .expect_err(404, "M_NOT_FOUND");
    let joined = alice
        .post("/_matrix/client/v3/join/%23q_room2:hearth.test", json!({}))
        .ok()
        .clone();
    assert!(joined["room_id"].is_string());
    alice
        .post("/_matrix/client/v3/join/%23q_none:hearth.test", json!({}))
        .expect_err(404, "M_NOT_FOUND");

    // Third-party lookups, proxied and checked.
    let protocols = alice.get("/_matrix/client/v3/thirdparty/protocols").ok().clone();
    assert_eq!(
        protocols["gitter"]["instances"][0]["instance_id"], "q|gitter",
        "{protocols}"
    );
    let gitter = alice.get("/_matrix/client/v3/thirdparty/protocol/gitter").ok().clone();
    assert_eq!(gitter["user_fields"], json!(["username"]));
    alice
        .get("/_matrix/client/v3/thirdparty/protocol/irc")
        .expect_err(404, "M_NOT_FOUND");
    let locations = alice
        .get(&format!(
            "/_matrix/client/v3/thirdparty/location/gitter?room=foo&access_token={}",
            alice.token.clone().unwrap()
        ))
        .ok()
        .clone();
    assert_eq!(
        locations.as_array().unwrap().len(),
        1,
        "the malformed entry is dropped: {locations}"
    );
    assert_eq!(locations[0]["alias"], "#q_gitter_foo:hearth.test");
    let sent = fake
        .received()
        .into_iter()
        .find(|r| r.path.starts_with("/_matrix/app/v1/thirdparty/location/gitter"))
        .expect("location lookup");
    assert!(
        sent.path.contains("room=foo") && !sent.path.contains("access_token"),
        "{}",
        sent.path
    );
    let users = alice
        .get("/_matrix/client/v3/thirdparty/user/gitter?username=g")
        .ok()
        .clone();
    assert_eq!(users[0]["userid"], "@q_gitter_g:hearth.test");
    let by_alias = alice
        .get("/_matrix/client/v3/thirdparty/location?alias=%23q_gitter_foo:hearth.test")
        .ok()
        .clone();
    assert_eq!(by_alias[0]["protocol"], "gitter");
    let by_user = alice
        .get("/_matrix/client/v3/thirdparty/user?userid=@q_gitter_g:hearth.test")
        .ok()
        .clone();
    assert_eq!(by_user[0]["fields"]["username"], "g");
    alice
        .get("/_matrix/client/v3/thirdparty/location/irc")
        .expect_err(404, "M_NOT_FOUND");
}

/// `rate_limited: false` exempts every user of the service; otherwise only its sender is exempt.
#[test]
fn rate_limits_spare_services_that_ask_and_senders() {
    let dir = tempfile::tempdir().unwrap();
    let files = write_registrations(dir.path(), &[("irc.yaml", IRC), ("mx.yaml", MX)]);
    let server = TestServer::start_with(&[
        ("HEARTH_APPSERVICES__REGISTRATION_FILES", &files),
        ("HEARTH_RATE_LIMITS__ENABLED", "true"),
        ("HEARTH_RATE_LIMITS__MESSAGE__PER_SECOND", "0.01"),
        ("HEARTH_RATE_LIMITS__MESSAGE__BURST", "3"),
    ]);
    let irc = with_as(&server, "as-irc-secret");
    let mx = with_as(&server, "as-mx-secret");
    let room = irc
        .post("/_matrix/client/v3/createRoom", json!({"preset": "public_chat"}))
        .ok()["room_id"]
        .as_str()
        .unwrap()
        .to_owned();
    for (service, user) in [(&irc, "irc_bob"), (&mx, "mx_one")] {
        service
            .post(
                REGISTER,
                json!({"type": "m.login.application_service", "username": user, "inhibit_login": true}),
            )
            .ok();
        service
            .post(
                &format!("/_matrix/client/v3/join/{room}?user_id=@{user}:hearth.test"),
                json!({}),
            )
            .ok();
    }
    mx.post(&format!("/_matrix/client/v3/join/{room}"), json!({})).ok();
    let send = |client: &Client, as_user: &str, txn: String| {
        client.put(
            &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/{txn}{as_user}"),
            json!({"msgtype": "m.text", "body": "hi"}),
        )
    };
    for i in 0..6 {
        send(&irc, "?user_id=@irc_bob:hearth.test", format!("a{i}")).ok();
        send(&mx, "", format!("b{i}")).ok();
    }
    let limited = (0..6)
        .map(|i| send(&mx, "?user_id=@mx_one:hearth.test", format!("c{i}")).status)
        .filter(|status| *status == 429)
        .count();
    assert!(limited > 0, "the MX service's users are rate-limited");
}
