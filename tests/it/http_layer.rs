//! The HTTP foundation: every kind of bad input with its exact errcode, access tokens in the
//! header and the query string, rate limits, CORS, and the discovery endpoints (`/versions`,
//! `/capabilities`, `/.well-known/matrix/*`). The server must keep answering after all of it.

use serde_json::json;

use crate::support::{Resp, TestServer, enc};

#[track_caller]
fn no_5xx(r: &Resp) -> &Resp {
    assert!(r.status < 500, "server error: {} {}", r.status, r.text);
    r
}

#[test]
fn unknown_routes_and_wrong_methods() {
    let server = TestServer::start();
    let c = server.client();
    for path in [
        "/_matrix/client/v3/nope",
        "/_matrix/client/v3/account/whoami/extra",
        "/nothing/here",
        "/_matrix/client/v0/login",
        "/",
    ] {
        c.get(path).expect_err(404, "M_UNRECOGNIZED");
    }
    c.post("/_matrix/client/v3/no/such/endpoint", json!({}))
        .expect_err(404, "M_UNRECOGNIZED");
    c.req("DELETE", "/_matrix/client/v3/login", None)
        .expect_err(405, "M_UNRECOGNIZED");
    c.req("PUT", "/_matrix/client/versions", Some(json!({})))
        .expect_err(405, "M_UNRECOGNIZED");
    c.get("/_matrix/client/v3/logout").expect_err(405, "M_UNRECOGNIZED");
    c.post("/_matrix/client/v3/account/whoami", json!({}))
        .expect_err(405, "M_UNRECOGNIZED");
    // The same endpoint under r0 is served too.
    c.get("/_matrix/client/r0/login").ok();
}

#[test]
fn malformed_bodies() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    let c = server.client();
    let login = "/_matrix/client/v3/login";
    for body in [
        &b"{not json"[..],
        b"{\"type\": ",
        b"\xff\xfe",
        br#"{"type":"m.login.password","user":"a","password":"b"}}"#,
    ] {
        c.raw("POST", login, Some(body), Some("application/json"))
            .expect_err(400, "M_NOT_JSON");
    }
    c.post(login, json!({"type": 5, "password": "x"}))
        .expect_err(400, "M_BAD_JSON");
    c.post(login, json!(["m.login.password"])).expect_err(400, "M_BAD_JSON");
    // No `type` at all (ruma's parser used to panic on these and drop the connection).
    c.post(login, json!({})).expect_err(400, "M_BAD_JSON");
    c.post(
        login,
        json!({"password": "x", "identifier": {"type": "m.id.user", "user": "a"}}),
    )
    .expect_err(400, "M_BAD_JSON");
    c.raw("POST", login, Some(b""), Some("application/json"))
        .expect_err(400, "M_BAD_JSON");
    c.post(
        "/_matrix/client/v3/register",
        json!({"username": ["alice"], "password": "pw"}),
    )
    .expect_err(400, "M_BAD_JSON");
    let me = enc(&alice.uid());
    alice
        .put(
            &format!("/_matrix/client/v3/profile/{me}/displayname"),
            json!({"displayname": {"nested": true}}),
        )
        .expect_err(400, "M_BAD_JSON");
    alice
        .raw(
            "PUT",
            &format!("/_matrix/client/v3/profile/{me}/displayname"),
            Some(b"displayname=bob"),
            Some("application/x-www-form-urlencoded"),
        )
        .expect_err(400, "M_NOT_JSON");
    alice
        .put("/_matrix/client/v3/devices/NOPE", json!({"display_name": 12}))
        .expect_err(400, "M_BAD_JSON");
    alice.whoami().ok();
}

/// Unparsable JSON must be `M_NOT_JSON` even when its first token already has the wrong type
/// for the endpoint (ruma reports the type mismatch before the syntax error).
#[test]
fn truncated_json_of_the_wrong_type_is_not_json() {
    let server = TestServer::start();
    let c = server.client();
    for body in [&b"[1,2"[..], b"[", b"null,", b"\"abc"] {
        c.raw("POST", "/_matrix/client/v3/login", Some(body), Some("application/json"))
            .expect_err(400, "M_NOT_JSON");
    }
}

#[test]
fn oversized_bodies_are_413() {
    let server = TestServer::start_with(&[("HEARTH_MAX_REQUEST_SIZE", "1024")]);
    let c = server.client();
    let big = json!({"type": "m.login.password", "user": "a", "password": "x".repeat(4000)});
    c.post("/_matrix/client/v3/login", big).expect_err(413, "M_TOO_LARGE");
    // Just under the limit is read (and fails for its content, not its size).
    let small = json!({"type": "m.login.password", "user": "a", "password": "x".repeat(900)});
    c.post("/_matrix/client/v3/login", small).expect_err(403, "M_FORBIDDEN");
    let alice = server.user("alice", "pw");
    alice
        .put(
            "/_matrix/client/v3/user/%40alice%3Ahearth.test/account_data/org.example.big",
            json!({"blob": "y".repeat(2000)}),
        )
        .expect_err(413, "M_TOO_LARGE");
    alice
        .get("/_matrix/client/v3/user/%40alice%3Ahearth.test/account_data/org.example.big")
        .expect_err(404, "M_NOT_FOUND");
    alice.whoami().ok();
}

#[test]
fn access_tokens() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    let token = alice.token.clone().unwrap();
    let anon = server.client();
    anon.whoami().expect_err(401, "M_MISSING_TOKEN");
    let r = anon.with_token(Some("hat_not_a_real_token")).whoami();
    r.expect_err(401, "M_UNKNOWN_TOKEN");
    assert_ne!(r.body["soft_logout"], true, "{}", r.text);

    // The deprecated query parameter.
    let r = anon.get(&format!(
        "/_matrix/client/v3/account/whoami?access_token={}",
        enc(&token)
    ));
    assert_eq!(r.ok()["user_id"], "@alice:hearth.test");
    anon.get("/_matrix/client/v3/account/whoami?access_token=bogus")
        .expect_err(401, "M_UNKNOWN_TOKEN");
    anon.raw(
        "PUT",
        &format!(
            "/_matrix/client/v3/profile/%40alice%3Ahearth.test/displayname?access_token={}",
            enc(&token)
        ),
        Some(br#"{"displayname":"Q"}"#),
        Some("application/json"),
    )
    .ok();
    assert_eq!(
        anon.get("/_matrix/client/v3/profile/%40alice%3Ahearth.test/displayname")
            .ok()["displayname"],
        "Q"
    );

    // Other authorization schemes carry no access token.
    anon.raw_with(
        "GET",
        "/_matrix/client/v3/account/whoami",
        None,
        &[("Authorization", "Basic YWxpY2U6cHc=")],
    )
    .expect_err(401, "M_MISSING_TOKEN");
    // The scheme name is case-insensitive.
    let r = anon.raw_with(
        "GET",
        "/_matrix/client/v3/account/whoami",
        None,
        &[("Authorization", &format!("bearer {token}"))],
    );
    assert_eq!(r.ok()["user_id"], "@alice:hearth.test");
    // Endpoints without authentication ignore a bad token.
    anon.with_token(Some("bogus")).get("/_matrix/client/v3/login").ok();
}

#[test]
fn login_is_rate_limited() {
    let server = TestServer::start_with(&[
        ("HEARTH_RATE_LIMITS__ENABLED", "true"),
        ("HEARTH_RATE_LIMITS__LOGIN__PER_SECOND", "0.01"),
        ("HEARTH_RATE_LIMITS__LOGIN__BURST", "2"),
    ]);
    let c = server.client();
    for _ in 0..2 {
        c.login_with("nobody", "pw", json!({})).expect_err(403, "M_FORBIDDEN");
    }
    let r = c.login_with("nobody", "pw", json!({}));
    r.expect_err(429, "M_LIMIT_EXCEEDED");
    let ms = r.body["retry_after_ms"].as_u64().expect("retry_after_ms");
    assert!(ms > 1000, "{}", r.text);
    let header: u64 = r
        .header("retry-after")
        .expect("Retry-After header")
        .parse()
        .expect("Retry-After in seconds");
    assert!(header >= 1 && header <= ms / 1000 + 1, "{header} vs {ms}");
    // Other endpoints are limited separately.
    c.get("/_matrix/client/versions").ok();
    c.get("/_matrix/client/v3/login").expect_err(429, "M_LIMIT_EXCEEDED");
}

#[test]
fn cors_headers() {
    let server = TestServer::start();
    let c = server.client();
    let check = |r: &Resp| {
        assert_eq!(r.header("access-control-allow-origin"), Some("*"), "{r:?}");
        let methods = r.header("access-control-allow-methods").unwrap_or("");
        for m in ["GET", "POST", "PUT", "DELETE", "OPTIONS"] {
            assert!(methods.contains(m), "{methods}");
        }
        let headers = r
            .header("access-control-allow-headers")
            .unwrap_or("")
            .to_ascii_lowercase();
        for h in ["authorization", "content-type", "x-requested-with"] {
            assert!(headers.contains(h), "{headers}");
        }
    };
    check(c.get("/_matrix/client/versions").ok_resp());
    check(&c.get("/_matrix/client/v3/account/whoami"));
    check(&c.get("/_matrix/client/v3/unknown"));
    let preflight = [
        ("Origin", "https://app.example.org"),
        ("Access-Control-Request-Method", "POST"),
        ("Access-Control-Request-Headers", "authorization, content-type"),
    ];
    let pre = c.raw_with("OPTIONS", "/_matrix/client/v3/login", None, &preflight);
    assert_eq!(pre.status, 200, "{}", pre.text);
    check(&pre);
    let pre = c.raw_with(
        "OPTIONS",
        "/_matrix/client/v3/profile/%40alice%3Ahearth.test/displayname",
        None,
        &preflight,
    );
    assert_eq!(pre.status, 200, "{}", pre.text);
    check(&pre);
}

trait OkResp {
    fn ok_resp(&self) -> &Self;
}
impl OkResp for Resp {
    #[track_caller]
    fn ok_resp(&self) -> &Self {
        self.ok();
        self
    }
}

#[test]
fn versions_and_capabilities() {
    let server = TestServer::start();
    let c = server.client();
    let v = c.get("/_matrix/client/versions");
    let versions = v.ok()["versions"].as_array().expect("versions");
    assert!(versions.iter().any(|x| x == "v1.1"), "{}", v.text);
    assert!(versions.iter().all(|x| x.is_string()));
    assert!(v.body["unstable_features"].is_object() || v.body.get("unstable_features").is_none());
    assert!(
        v.header("content-type")
            .is_some_and(|t| t.starts_with("application/json")),
        "{v:?}"
    );

    c.get("/_matrix/client/v3/capabilities")
        .expect_err(401, "M_MISSING_TOKEN");
    let alice = server.user("alice", "pw");
    let caps = alice.get("/_matrix/client/v3/capabilities");
    let caps = &caps.ok()["capabilities"];
    assert_eq!(caps["m.room_versions"]["default"], "12");
    assert_eq!(caps["m.room_versions"]["available"]["12"], "stable");
    // "If not present, the client should assume that password changes are possible" (ruma
    // leaves the default `enabled: true` out).
    assert_ne!(caps["m.change_password"]["enabled"], false, "{caps}");
    assert!(
        caps.get("m.change_password").is_none() || caps["m.change_password"]["enabled"] == true,
        "{caps}"
    );
}

#[test]
fn well_known_is_404_when_unset() {
    let server = TestServer::start();
    let c = server.client();
    c.get("/.well-known/matrix/client").expect_err(404, "M_NOT_FOUND");
    c.get("/.well-known/matrix/server").expect_err(404, "M_NOT_FOUND");
    // Login answers carry no well_known either.
    let _ = server.user("alice", "pw");
    let r = c.login_with("alice", "pw", json!({}));
    assert!(r.ok().get("well_known").is_none(), "{}", r.text);
}

#[test]
fn well_known_when_configured() {
    let server = TestServer::start_with(&[
        ("HEARTH_WELL_KNOWN__CLIENT", "https://matrix.example.org"),
        ("HEARTH_WELL_KNOWN__SERVER", "matrix.example.org:443"),
    ]);
    let c = server.client();
    let r = c.get("/.well-known/matrix/client");
    assert_eq!(r.ok()["m.homeserver"]["base_url"], "https://matrix.example.org");
    assert!(
        r.header("content-type")
            .is_some_and(|t| t.starts_with("application/json"))
    );
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    let r = c.get("/.well-known/matrix/server");
    assert_eq!(r.ok(), &json!({"m.server": "matrix.example.org:443"}));
    assert!(
        r.header("content-type")
            .is_some_and(|t| t.starts_with("application/json"))
    );
    let _ = server.user("alice", "pw");
    let r = c.login_with("alice", "pw", json!({}));
    assert_eq!(
        r.ok()["well_known"]["m.homeserver"]["base_url"],
        "https://matrix.example.org"
    );
}

#[test]
fn invalid_user_ids_in_paths() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    for bad in ["not-a-user-id", "%40", "%40nocolon", "alice%3Ahearth.test"] {
        alice
            .get(&format!("/_matrix/client/v3/profile/{bad}"))
            .expect_err(400, "M_INVALID_PARAM");
        alice
            .get(&format!("/_matrix/client/v3/profile/{bad}/displayname"))
            .expect_err(400, "M_INVALID_PARAM");
        alice
            .get(&format!("/_matrix/client/v3/user/{bad}/account_data/m.x"))
            .expect_err(400, "M_INVALID_PARAM");
    }
    // Not UTF-8 after decoding.
    alice
        .get("/_matrix/client/v3/profile/%40a%FF%3Ahearth.test")
        .expect_err(400, "M_INVALID_PARAM");
    alice.whoami().ok();
}

#[test]
fn server_survives_hostile_input() {
    let server = TestServer::start_with(&[("HEARTH_MAX_REQUEST_SIZE", "4096")]);
    let alice = server.user("alice", "pw");
    let c = server.client();
    let junk: Vec<(&str, &str, Option<Vec<u8>>, Option<&str>)> = vec![
        (
            "POST",
            "/_matrix/client/v3/login",
            Some(vec![0u8; 100]),
            Some("application/json"),
        ),
        (
            "POST",
            "/_matrix/client/v3/login",
            Some(vec![]),
            Some("application/json"),
        ),
        ("POST", "/_matrix/client/v3/login", Some(b"null".to_vec()), None),
        (
            "POST",
            "/_matrix/client/v3/register",
            Some(b"{\"auth\":{\"type\":null}}".to_vec()),
            Some("application/json"),
        ),
        (
            "POST",
            "/_matrix/client/v3/register",
            Some(b"{\"auth\":{\"session\":\"x\"}}".to_vec()),
            Some("application/json"),
        ),
        (
            "POST",
            "/_matrix/client/v3/register",
            Some(b"{\"username\":\"\\u0000\"}".to_vec()),
            Some("application/json"),
        ),
        (
            "POST",
            "/_matrix/client/v3/refresh",
            Some(b"{}".to_vec()),
            Some("application/json"),
        ),
        ("GET", "/_matrix/client/v3/register/available?username=%FF", None, None),
        ("GET", "/_matrix/client/v3/register/available?username=%", None, None),
        ("GET", "/_matrix/client/v3/profile/%", None, None),
        ("GET", "/_matrix/client//v3//login", None, None),
        ("GET", "/_matrix/client/v3/profile/%40a%3Ab/%2E%2E", None, None),
        (
            "POST",
            "/_matrix/client/v3/login",
            Some(vec![b'['; 3000]),
            Some("application/json"),
        ),
        (
            "POST",
            "/_matrix/client/v3/login",
            Some(vec![b'x'; 10_000]),
            Some("application/json"),
        ),
    ];
    for (method, path, body, ct) in &junk {
        let r = c.raw(method, path, body.as_deref(), *ct);
        no_5xx(&r);
        assert!(r.status >= 400, "{method} {path}: {}", r.text);
        assert!(
            r.status == 401 || r.body["errcode"].is_string(),
            "{method} {path}: {}",
            r.text
        );
        let r = alice.raw(method, path, body.as_deref(), *ct);
        no_5xx(&r);
    }
    let me = enc(&alice.uid());
    let r = alice.raw(
        "PUT",
        &format!("/_matrix/client/v3/user/{me}/account_data/{}", "a".repeat(300)),
        Some(b"{}"),
        Some("application/json"),
    );
    no_5xx(&r);
    assert_eq!(r.status, 400, "{}", r.text);
    // Still alive and consistent.
    c.get("/_matrix/client/versions").ok();
    alice.whoami().ok();
    c.login_with("alice", "pw", json!({})).ok();
}

/// Sends raw bytes on one connection and reads the answer until the server closes it or
/// `expect` answers have arrived.
fn raw_exchange(base: &str, requests: &[Vec<u8>], expect: usize) -> String {
    use std::io::{Read, Write};
    let addr = base.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let mut answer = Vec::new();
    for request in requests {
        // A refused head closes the connection; what could not be written does not matter.
        let _ = stream.write_all(request);
        let mut chunk = [0u8; 65536];
        while answer.windows(9).filter(|w| *w == b"HTTP/1.1 ").count() < expect.min(requests.len()) {
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&chunk[..n]),
            }
            if answer.ends_with(b"}") {
                break;
            }
        }
    }
    String::from_utf8_lossy(&answer).into_owned()
}

/// A request head actix-http would refuse with a bare 431 (over 128 KiB) gets Matrix JSON,
/// whether it is the first request on a connection or a later one; smaller heads and large
/// bodies pass.
#[test]
fn an_oversized_request_head_gets_matrix_json() {
    let server = TestServer::start();
    let huge = |path: &str| {
        format!(
            "GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n",
            "x".repeat(1024 * 1024)
        )
        .into_bytes()
    };
    let answer = raw_exchange(&server.base, &[huge("/_matrix/client/v3/account/whoami")], 1);
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    let body = answer.split("\r\n\r\n").nth(1).unwrap();
    let json: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(json["errcode"], "M_TOO_LARGE");

    // After a normal request on the same connection.
    let plain = b"GET /_matrix/client/versions HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
    let answer = raw_exchange(&server.base, &[plain, huge("/_matrix/client/versions")], 2);
    let answers: Vec<&str> = answer.matches("HTTP/1.1 ").collect();
    assert_eq!(answers.len(), 2, "{answer}");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer.contains("HTTP/1.1 431") && answer.contains("M_TOO_LARGE"),
        "{answer}"
    );

    // A 100 KiB header is only a header; a 2 MiB body is only a body.
    let c = server.client();
    let r = c.raw_with(
        "GET",
        "/_matrix/client/v3/account/whoami",
        None,
        &[("Authorization", &format!("Bearer {}", "y".repeat(100 * 1024)))],
    );
    r.expect_err(401, "M_UNKNOWN_TOKEN");
    let alice = server.user("alice", "pw");
    let upload = alice.raw(
        "POST",
        "/_matrix/media/v3/upload",
        Some(&vec![0u8; 2 * 1024 * 1024]),
        Some("application/octet-stream"),
    );
    assert_eq!(upload.status, 200, "{}", upload.text);
}
