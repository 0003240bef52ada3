//! Media across servers (server-server-api "Content Repository", client-server authenticated
//! media): a file uploaded on one Hearth downloads byte-identical through another, fetched from
//! its origin once and then served from the cache (the origin stopped); thumbnails of remote
//! images; the federation endpoints themselves (signed, our media only); a file over the limit
//! refused and not cached; a lying origin (garbage multipart, no multipart at all) a clean 502;
//! the deprecated download as the fallback of an origin that does not know the new endpoint;
//! the `Location` form followed; concurrent downloads sharing one fetch; federation off: 404,
//! nothing sent.

use std::{
    io::{Read, Write},
    net::TcpListener,
    time::{Duration, Instant},
};

use crate::support::{
    Client, TestServer,
    fake_server::{FakeServer, Mode},
    federation::{TestCa, federated_server, signing_key_of, tls_request, x_matrix},
    media::{noise, png, upload},
};

/// A raw response with a binary body.
struct Raw {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    fn errcode(&self) -> String {
        serde_json::from_slice::<serde_json::Value>(&self.body).unwrap_or_default()["errcode"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    }
    #[track_caller]
    fn expect_err(&self, status: u16, errcode: &str) {
        assert_eq!(
            (self.status, self.errcode().as_str()),
            (status, errcode),
            "{}",
            String::from_utf8_lossy(&self.body)
        );
    }
}

fn get_raw(c: &Client, path: &str) -> Raw {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(90)))
        .build()
        .into();
    let mut builder = ureq::http::Request::builder()
        .method("GET")
        .uri(format!("{}{}", c.base, path));
    if let Some(token) = &c.token {
        builder = builder.header("Authorization", format!("Bearer {token}"));
    }
    let response = agent.run(builder.body(Vec::new()).unwrap()).unwrap();
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    let body = response
        .into_body()
        .into_with_config()
        .limit(u64::MAX)
        .read_to_vec()
        .unwrap();
    Raw { status, headers, body }
}

/// `server/media_id` of an mxc URI.
fn path_of(mxc: &str) -> String {
    mxc.strip_prefix("mxc://").expect("mxc").to_owned()
}

fn download(c: &Client, server_and_id: &str) -> Raw {
    get_raw(c, &format!("/_matrix/client/v1/media/download/{server_and_id}"))
}

/// The download requests `fake` received.
fn downloads_asked(fake: &FakeServer) -> usize {
    fake.received()
        .iter()
        .filter(|r| r.path.contains("/media/") && r.path.contains("download"))
        .count()
}

/// A `multipart/mixed` answer as the spec draws it: `{}`, then `part` (headers and body).
fn multipart(part_headers: &str, body: &[u8]) -> Vec<u8> {
    let mut out = b"\r\n--xyz\r\nContent-Type: application/json\r\n\r\n{}\r\n--xyz\r\n".to_vec();
    out.extend_from_slice(part_headers.as_bytes());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out.extend_from_slice(b"\r\n--xyz--\r\n");
    out
}

const MULTIPART: &str = "multipart/mixed; boundary=xyz";

/// A file uploaded on B downloads byte-identical on A, with its name and type; B is asked
/// once: stopped afterwards, A still serves it, and makes thumbnails of B's image from its
/// cached copy. B's federation endpoints answer only signed requests and only for B's media.
#[test]
fn a_remote_file_downloads_byte_identical_and_is_fetched_once() {
    let ca = TestCa::new();
    let mut a = federated_server(&ca, "127.0.0.141", &[]);
    a.launch();
    let mut b = federated_server(&ca, "127.0.0.142", &[]);
    b.launch();
    let alice = a.user("alice", "secret-password");
    let bob = b.user("bob", "secret-password");

    // Over one stored chunk (512 KiB), so the file crosses chunk boundaries on both sides.
    let data = noise(1_300_000, 7);
    let mxc = upload(&bob, &data, "application/x-test", "report.bin");
    assert!(mxc.starts_with(&format!("mxc://{}/", b.server_name)), "{mxc}");
    let image = png(600, 400);
    let picture = upload(&bob, &image, "image/png", "cat.png");

    let r = download(&alice, &path_of(&mxc));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert!(r.body == data, "the file differs ({} bytes)", r.body.len());
    assert_eq!(r.header("content-type"), Some("application/x-test"));
    assert!(
        r.header("content-disposition").unwrap_or("").contains("report.bin"),
        "{:?}",
        r.header("content-disposition")
    );
    let r = download(&alice, &path_of(&picture));
    assert_eq!(r.status, 200);
    assert!(r.body == image);

    // An id B does not know is B's 404; a malformed one is never asked.
    download(&alice, &format!("{}/nosuchmediaid", b.server_name)).expect_err(404, "M_NOT_FOUND");
    download(&alice, &format!("{}/bad%21id", b.server_name)).expect_err(404, "M_NOT_FOUND");

    // B's federation endpoints: signed requests only, B's own media only.
    let key = signing_key_of(&a);
    let media_id = path_of(&picture).split('/').nth(1).unwrap().to_owned();
    let ip = "127.0.0.142";
    let signed = |path: &str| {
        let auth = x_matrix(&key, &a.server_name, &b.server_name, "GET", path, None);
        tls_request(
            ca.client_config(),
            &b.server_name,
            ip,
            &b.server_name,
            "GET",
            path,
            &[("Authorization", &auth)],
            None,
        )
        .unwrap()
    };
    let path = format!("/_matrix/federation/v1/media/thumbnail/{media_id}?width=32&height=32&method=crop");
    assert_eq!(signed(&path).status, 200);
    let path = format!("/_matrix/federation/v1/media/download/{media_id}");
    assert_eq!(signed(&path).status, 200);
    let unsigned = tls_request(
        ca.client_config(),
        &b.server_name,
        ip,
        &b.server_name,
        "GET",
        &path,
        &[],
        None,
    )
    .unwrap();
    assert_eq!(
        (unsigned.status, unsigned.body["errcode"].as_str()),
        (401, Some("M_UNAUTHORIZED"))
    );
    let unknown = signed("/_matrix/federation/v1/media/download/nosuchmediaid");
    assert_eq!(
        (unknown.status, unknown.body["errcode"].as_str()),
        (404, Some("M_NOT_FOUND"))
    );
    // A's media, asked of A by B's key? Not ours to serve: B never serves A's media.
    let alices = upload(&alice, b"alice's file", "text/plain", "a.txt");
    assert_eq!(download(&bob, &path_of(&alices)).body, b"alice's file");
    let alices_id = path_of(&alices).split('/').nth(1).unwrap().to_owned();
    let relayed = signed(&format!("/_matrix/federation/v1/media/download/{alices_id}"));
    assert_eq!(
        (relayed.status, relayed.body["errcode"].as_str()),
        (404, Some("M_NOT_FOUND")),
        "B cached A's file but serves only its own"
    );

    // B goes away: A serves the file from its cache, and thumbnails B's image from it.
    b.stop();
    let r = download(&alice, &path_of(&mxc));
    assert_eq!(r.status, 200);
    assert!(r.body == data, "the cached file differs");
    let r = get_raw(
        &alice,
        &format!(
            "/_matrix/client/v1/media/thumbnail/{}?width=96&height=96&method=crop",
            path_of(&picture)
        ),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("content-type"), Some("image/png"));
    let thumb = image::load_from_memory(&r.body).unwrap();
    assert!(
        thumb.width() <= 96 && thumb.height() <= 96,
        "{}x{}",
        thumb.width(),
        thumb.height()
    );
    // What A never fetched now fails as Synapse answers an unreachable origin.
    download(&alice, &format!("{}/neverfetched", b.server_name)).expect_err(502, "M_UNKNOWN");
}

/// A file over A's size limit is refused (502 `M_TOO_LARGE`, as Synapse) whether the origin
/// declares it or only the multipart part shows it, and nothing is cached: the next download
/// asks again.
#[test]
fn an_oversized_remote_file_is_refused_and_not_cached() {
    let ca = TestCa::new();
    let fake = FakeServer::start(&ca, "127.0.0.143");
    let mut a = federated_server(&ca, "127.0.0.144", &[("HEARTH_MEDIA__MAX_UPLOAD_SIZE", "1000")]);
    a.launch();
    let alice = a.user("alice", "secret-password");

    let prefix = "/_matrix/federation/v1/media/download/";
    fake.answer_path_raw(
        prefix,
        200,
        MULTIPART,
        &multipart("Content-Type: application/octet-stream\r\n", &noise(5000, 1)),
    );
    download(&alice, &format!("{}/big", fake.name)).expect_err(502, "M_TOO_LARGE");
    download(&alice, &format!("{}/big", fake.name)).expect_err(502, "M_TOO_LARGE");
    assert_eq!(downloads_asked(&fake), 2, "a refused file is not cached");
    // Far over the limit: refused from the declared length, the body never read.
    fake.answer_path_raw(
        prefix,
        200,
        MULTIPART,
        &multipart("Content-Type: application/octet-stream\r\n", &noise(300_000, 2)),
    );
    download(&alice, &format!("{}/huge", fake.name)).expect_err(502, "M_TOO_LARGE");
    // Exactly at the limit is fine.
    let fits = noise(1000, 3);
    fake.answer_path_raw(
        prefix,
        200,
        MULTIPART,
        &multipart("Content-Type: application/octet-stream\r\n", &fits),
    );
    let r = download(&alice, &format!("{}/fits", fake.name));
    assert_eq!(r.status, 200);
    assert!(r.body == fits);
    drop(alice);
    a.stop();
}

/// A lying origin: garbage where the multipart answer should be, a JSON answer, a part
/// missing, a boundary that never closes. Each is a clean 502 `M_UNKNOWN`, nothing cached,
/// and the server goes on serving. The origin's own 404 is ours; its 500 is a 502.
#[test]
fn garbage_from_a_fake_origin_is_a_clean_error() {
    let ca = TestCa::new();
    let fake = FakeServer::start(&ca, "127.0.0.145");
    let mut a = federated_server(&ca, "127.0.0.146", &[]);
    a.launch();
    let alice = a.user("alice", "secret-password");
    let prefix = "/_matrix/federation/v1/media/download/";
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (MULTIPART, b"complete garbage \x00\xff".to_vec()),
        (MULTIPART, b"--xyz".to_vec()),
        (MULTIPART, b"--xyz\r\n".to_vec()),
        (MULTIPART, b"--xyz--".to_vec()),
        (MULTIPART, b"\r\n--xyz\r\n\r\n--xyz\r\n\r\n--xyz".to_vec()),
        (
            MULTIPART,
            b"\r\n--xyz\r\nContent-Type: application/json\r\n\r\n{}\r\n--xyz--".to_vec(),
        ),
        (
            MULTIPART,
            b"\r\n--xyz\r\nContent-Type: application/json\r\n\r\nnot json\r\n--xyz\r\n\r\nfile\r\n--xyz--".to_vec(),
        ),
        (
            MULTIPART,
            b"\r\n--xyz\r\nBroken header line\r\n\r\n{}\r\n--xyz\r\n\r\nx\r\n--xyz--".to_vec(),
        ),
        (
            MULTIPART,
            b"\r\n--xyz\r\nContent-Type: application/json\r\n\r\n{}\r\n--xyz\r\nX: y\r\n\r\nnever closed".to_vec(),
        ),
        ("multipart/mixed", multipart("", b"no boundary parameter")),
        ("multipart/mixed; boundary=", multipart("", b"empty boundary")),
        ("application/json", b"{}".to_vec()),
        ("text/plain", b"just the bytes".to_vec()),
    ];
    for (i, (content_type, body)) in cases.iter().enumerate() {
        fake.answer_path_raw(prefix, 200, content_type, body);
        download(&alice, &format!("{}/garbage{i}", fake.name)).expect_err(502, "M_UNKNOWN");
    }
    // The origin's 404 is a 404; its 500 a 502; nothing of it was cached.
    fake.answer_path_raw(
        prefix,
        404,
        "application/json",
        br#"{"errcode":"M_NOT_FOUND","error":"no"}"#,
    );
    download(&alice, &format!("{}/garbage0", fake.name)).expect_err(404, "M_NOT_FOUND");
    fake.answer_path_raw(prefix, 500, "application/json", br#"{"errcode":"M_UNKNOWN"}"#);
    download(&alice, &format!("{}/garbage1", fake.name)).expect_err(502, "M_UNKNOWN");
    // Still serving.
    let mine = upload(&alice, b"still here", "text/plain", "x.txt");
    assert_eq!(download(&alice, &path_of(&mine)).body, b"still here");
}

/// The other forms of a good answer: an origin that does not know the federation endpoint
/// (404 `M_UNRECOGNIZED`) is asked with the deprecated download and `allow_remote=false`; a
/// `Location` part is followed (once); concurrent downloads of one item share one fetch.
#[test]
fn fallback_location_and_shared_fetches() {
    let ca = TestCa::new();
    let fake = FakeServer::start(&ca, "127.0.0.147");
    let mut a = federated_server(&ca, "127.0.0.148", &[]);
    a.launch();
    let alice = a.user("alice", "secret-password");
    let new_prefix = "/_matrix/federation/v1/media/download/";

    // The fallback.
    fake.answer_path_raw(
        new_prefix,
        404,
        "application/json",
        br#"{"errcode":"M_UNRECOGNIZED","error":"Unrecognized request"}"#,
    );
    let old = noise(3000, 4);
    fake.answer_path_raw("/_matrix/media/v3/download/", 200, "image/x-old", &old);
    let r = download(&alice, &format!("{}/oldserver", fake.name));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert!(r.body == old);
    assert_eq!(r.header("content-type"), Some("image/x-old"));
    let legacy: Vec<String> = fake
        .received()
        .iter()
        .filter(|r| r.path.starts_with("/_matrix/media/v3/download/"))
        .map(|r| r.path.clone())
        .collect();
    assert_eq!(legacy.len(), 1, "{legacy:?}");
    assert!(
        legacy[0].starts_with(&format!(
            "/_matrix/media/v3/download/{}/oldserver?",
            fake.name.replace(':', "%3A")
        )) && legacy[0].contains("allow_remote=false"),
        "{legacy:?}"
    );
    assert!(
        fake.received()
            .iter()
            .all(|r| r.origin.as_deref() == Some(a.server_name.as_str()))
    );

    // The `Location` form: a plain HTTP server on loopback (private addresses are allowed in
    // these tests, as `allow_private_destinations` says) holds the file.
    let listener = TcpListener::bind("127.0.0.147:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let elsewhere = noise(4000, 5);
    let served = elsewhere.clone();
    let holder = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && conn.read(&mut byte).unwrap_or(0) == 1 {
            head.push(byte[0]);
        }
        let mut answer = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename=\"doc.pdf\"\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            served.len()
        )
        .into_bytes();
        answer.extend_from_slice(&served);
        conn.write_all(&answer).unwrap();
        String::from_utf8_lossy(&head).into_owned()
    });
    fake.answer_path_raw(
        new_prefix,
        200,
        MULTIPART,
        &multipart(&format!("Location: http://127.0.0.147:{port}/files/doc\r\n"), b""),
    );
    let r = download(&alice, &format!("{}/elsewhere", fake.name));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert!(r.body == elsewhere);
    assert_eq!(r.header("content-type"), Some("application/pdf"));
    assert!(r.header("content-disposition").unwrap_or("").contains("doc.pdf"));
    let asked = holder.join().unwrap();
    assert!(asked.starts_with("GET /files/doc HTTP/1.1\r\n"), "{asked}");

    // Three downloads at once while the origin holds its answer: one request reaches it.
    let shared = noise(2000, 6);
    fake.answer_path_raw(
        new_prefix,
        200,
        MULTIPART,
        &multipart("Content-Type: application/octet-stream\r\n", &shared),
    );
    for r in three_at_once(&fake, &alice, &format!("{}/shared", fake.name)) {
        assert_eq!(r.status, 200);
        assert!(r.body == shared);
    }
    // A fetch that fails is shared by those who waited for it; a later download asks again.
    fake.answer_path_raw(new_prefix, 500, "application/json", br#"{"errcode":"M_UNKNOWN"}"#);
    let path = format!("{}/failing", fake.name);
    for r in three_at_once(&fake, &alice, &path) {
        r.expect_err(502, "M_UNKNOWN");
    }
    let before = downloads_asked(&fake);
    download(&alice, &path).expect_err(502, "M_UNKNOWN");
    assert_eq!(
        downloads_asked(&fake) - before,
        1,
        "a failure is not cached for later downloads"
    );
}

/// Three downloads of `path` at once while `fake` holds its answer; asserts that one request
/// reached it, and returns the three answers.
fn three_at_once(fake: &FakeServer, alice: &Client, path: &str) -> Vec<Raw> {
    fake.set_mode(Mode::Hang);
    let before = downloads_asked(fake);
    let clients: Vec<_> = (0..3)
        .map(|_| {
            let (alice, path) = (alice.clone(), path.to_owned());
            std::thread::spawn(move || download(&alice, &path))
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    while fake.in_flight() == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    // Give the other two time to reach the server (they must wait, not ask).
    std::thread::sleep(Duration::from_millis(500));
    fake.release();
    let answers = clients.into_iter().map(|c| c.join().unwrap()).collect();
    assert_eq!(
        downloads_asked(fake) - before,
        1,
        "concurrent downloads share one fetch"
    );
    answers
}

/// With federation off, another server's media is 404 and nothing leaves the machine; the
/// federation media endpoints are not served at all.
#[test]
fn federation_off_remote_media_is_404() {
    let ca = TestCa::new();
    let fake = FakeServer::start(&ca, "127.0.0.149");
    let server = TestServer::start();
    let alice = server.user("alice", "secret-password");
    download(&alice, &format!("{}/someid", fake.name)).expect_err(404, "M_NOT_FOUND");
    get_raw(
        &alice,
        &format!(
            "/_matrix/client/v1/media/thumbnail/{}/someid?width=32&height=32",
            fake.name
        ),
    )
    .expect_err(404, "M_NOT_FOUND");
    assert!(fake.received().is_empty(), "{:?}", fake.received());
    let r = get_raw(&alice, "/_matrix/federation/v1/media/download/someid");
    r.expect_err(404, "M_UNRECOGNIZED");
}
