//! The media repository over HTTP: uploads (direct and asynchronous), authenticated and legacy
//! downloads with their headers and ranges, thumbnails of real PNG/JPEG/GIF/WebP images and a
//! decompression bomb, deduplication and the admin commands, URL previews with their SSRF
//! protection (on loopback only), and SIGKILL during an upload.

use std::{
    io::{Cursor, Read, Write},
    net::{TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use image::{DynamicImage, ImageFormat, Rgba, RgbaImage};
use serde_json::json;

use crate::support::{Client, TestServer, enc, out_text};

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
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_default()
    }
}

fn get_raw(c: &Client, path: &str, headers: &[(&str, &str)]) -> Raw {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into();
    let mut builder = ureq::http::Request::builder()
        .method("GET")
        .uri(format!("{}{}", c.base, path));
    if let Some(token) = &c.token {
        builder = builder.header("Authorization", format!("Bearer {token}"));
    }
    for (k, v) in headers {
        builder = builder.header(*k, *v);
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

fn upload(c: &Client, bytes: &[u8], content_type: &str, filename: Option<&str>) -> String {
    let query = filename.map(|f| format!("?filename={}", enc(f))).unwrap_or_default();
    let r = c.raw(
        "POST",
        &format!("/_matrix/media/v3/upload{query}"),
        Some(bytes),
        Some(content_type),
    );
    r.ok()["content_uri"].as_str().expect("content_uri").to_owned()
}

/// `server/media_id` of an mxc URI.
fn path_of(mxc: &str) -> String {
    mxc.strip_prefix("mxc://").expect("mxc").to_owned()
}

fn download(c: &Client, mxc: &str) -> Raw {
    get_raw(c, &format!("/_matrix/client/v1/media/download/{}", path_of(mxc)), &[])
}

fn picture(w: u32, h: u32) -> DynamicImage {
    DynamicImage::ImageRgba8(RgbaImage::from_fn(w, h, |x, y| {
        Rgba([(x * 255 / w) as u8, (y * 255 / h) as u8, 128, 255])
    }))
}

fn encode(image: &DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    match format {
        ImageFormat::Jpeg => DynamicImage::ImageRgb8(image.to_rgb8()).write_to(&mut out, format),
        _ => image.write_to(&mut out, format),
    }
    .unwrap();
    out.into_inner()
}

fn animated_gif(w: u32, h: u32) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut encoder = image::codecs::gif::GifEncoder::new(&mut out);
        encoder.set_repeat(image::codecs::gif::Repeat::Infinite).unwrap();
        let frames = [Rgba([255, 0, 0, 255]), Rgba([0, 0, 255, 255])]
            .into_iter()
            .map(|c| image::Frame::new(RgbaImage::from_pixel(w, h, c)));
        encoder.encode_frames(frames).unwrap();
    }
    out
}

/// Bytes that are not all alike, so chunks differ.
fn noise(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).max(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

#[test]
fn upload_then_download_with_safe_headers_and_ranges() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    let config = alice.get("/_matrix/client/v1/media/config");
    assert_eq!(config.ok()["m.upload.size"], 100 * 1024 * 1024);

    let png = encode(&picture(40, 30), ImageFormat::Png);
    let mxc = upload(&alice, &png, "image/png", Some("cat picture.png"));
    assert!(mxc.starts_with("mxc://hearth.test/"), "{mxc}");
    let r = download(&alice, &mxc);
    assert_eq!(r.status, 200);
    assert_eq!(r.body, png);
    assert_eq!(r.header("content-type"), Some("image/png"));
    assert_eq!(
        r.header("content-disposition"),
        Some("inline; filename=\"cat picture.png\"")
    );
    assert!(
        r.header("content-security-policy")
            .unwrap()
            .starts_with("sandbox; default-src 'none'")
    );
    assert_eq!(r.header("cross-origin-resource-policy"), Some("cross-origin"));
    assert_eq!(r.header("content-length"), Some(png.len().to_string().as_str()));

    let named = get_raw(
        &alice,
        &format!("/_matrix/client/v1/media/download/{}/other%20name.png", path_of(&mxc)),
        &[],
    );
    assert_eq!(named.body, png);
    assert_eq!(
        named.header("content-disposition"),
        Some("inline; filename=\"other name.png\"")
    );

    // Unsafe types are attachments; the type stays as uploaded (the spec's MUST).
    let html = upload(&alice, b"<script>alert(1)</script>", "text/html", Some("x.html"));
    let r = download(&alice, &html);
    assert_eq!(r.header("content-type"), Some("text/html"));
    assert_eq!(r.header("content-disposition"), Some("attachment; filename=\"x.html\""));
    let r = download(&alice, &upload(&alice, b"abc", "application/x-unknown", None));
    assert_eq!(r.header("content-disposition"), Some("attachment"));

    // Range requests: 206 with Content-Range, 416 when unsatisfiable.
    let path = format!("/_matrix/client/v1/media/download/{}", path_of(&mxc));
    let r = get_raw(&alice, &path, &[("Range", "bytes=10-19")]);
    assert_eq!(r.status, 206);
    assert_eq!(r.body, &png[10..20]);
    assert_eq!(r.header("content-range").unwrap(), format!("bytes 10-19/{}", png.len()));
    assert_eq!(r.header("accept-ranges"), Some("bytes"));
    let r = get_raw(&alice, &path, &[("Range", "bytes=-5")]);
    assert_eq!((r.status, &r.body[..]), (206, &png[png.len() - 5..]));
    let r = get_raw(&alice, &path, &[("Range", "bytes=100000-")]);
    assert_eq!(r.status, 416);
    assert_eq!(r.header("content-range").unwrap(), format!("bytes */{}", png.len()));

    // Errors.
    let anonymous = alice.with_token(None);
    anonymous.get(&path).expect_err(401, "M_MISSING_TOKEN");
    alice
        .get("/_matrix/client/v1/media/download/hearth.test/nope")
        .expect_err(404, "M_NOT_FOUND");
    alice
        .get("/_matrix/client/v1/media/download/elsewhere.example/abc")
        .expect_err(404, "M_NOT_FOUND");
    anonymous
        .raw("POST", "/_matrix/media/v3/upload", Some(b"x"), Some("text/plain"))
        .expect_err(401, "M_MISSING_TOKEN");
}

#[test]
fn a_large_upload_streams_through_chunks() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    let data = noise(3 * 1024 * 1024 + 12345, 7);
    let mxc = upload(&alice, &data, "application/octet-stream", None);
    let r = download(&alice, &mxc);
    assert_eq!(r.status, 200);
    assert!(r.body == data, "the bytes come back unchanged");
    // A range across a chunk boundary (chunks are 512 KiB).
    let from = 512 * 1024 - 10;
    let r = get_raw(
        &alice,
        &format!("/_matrix/client/v1/media/download/{}", path_of(&mxc)),
        &[("Range", &format!("bytes={from}-{}", from + 99))],
    );
    assert_eq!(r.status, 206);
    assert!(r.body == data[from..from + 100]);
}

#[test]
fn uploads_over_the_limit_are_refused() {
    let server = TestServer::start_with(&[("HEARTH_MEDIA__MAX_UPLOAD_SIZE", "1000")]);
    let alice = server.user("alice", "pw");
    assert_eq!(alice.get("/_matrix/client/v1/media/config").ok()["m.upload.size"], 1000);
    alice
        .raw(
            "POST",
            "/_matrix/media/v3/upload",
            Some(&[7u8; 2000]),
            Some("text/plain"),
        )
        .expect_err(413, "M_TOO_LARGE");
    upload(&alice, &[7u8; 1000], "text/plain", None);
}

#[test]
fn asynchronous_uploads_and_their_errors() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    let bob = server.user("bob", "pw");
    let created = alice.post("/_matrix/media/v1/create", json!({}));
    let mxc = created.ok()["content_uri"].as_str().unwrap().to_owned();
    let expires = created.body["unused_expires_at"].as_u64().unwrap();
    assert!(expires > 1_700_000_000_000, "{}", created.text);
    let path = path_of(&mxc);

    alice
        .get(&format!("/_matrix/client/v1/media/download/{path}?timeout_ms=300"))
        .expect_err(504, "M_NOT_YET_UPLOADED");
    alice
        .get(&format!(
            "/_matrix/client/v1/media/thumbnail/{path}?width=32&height=32&timeout_ms=300"
        ))
        .expect_err(504, "M_NOT_YET_UPLOADED");
    bob.raw(
        "PUT",
        &format!("/_matrix/media/v3/upload/{path}"),
        Some(b"x"),
        Some("text/plain"),
    )
    .expect_err(403, "M_FORBIDDEN");
    alice
        .raw(
            "PUT",
            "/_matrix/media/v3/upload/hearth.test/unknown",
            Some(b"x"),
            Some("text/plain"),
        )
        .expect_err(404, "M_NOT_FOUND");

    // A download waiting for the bytes gets them when they arrive.
    let waiter = {
        let alice = alice.clone();
        let path = path.clone();
        std::thread::spawn(move || {
            get_raw(
                &alice,
                &format!("/_matrix/client/v1/media/download/{path}?timeout_ms=20000"),
                &[],
            )
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let put = alice.raw(
        "PUT",
        &format!("/_matrix/media/v3/upload/{path}?filename=late.txt"),
        Some(b"late bytes"),
        Some("text/plain"),
    );
    assert_eq!(put.ok(), &json!({}));
    let waited = waiter.join().unwrap();
    assert_eq!((waited.status, &waited.body[..]), (200, &b"late bytes"[..]));
    assert_eq!(
        waited.header("content-disposition"),
        Some("inline; filename=\"late.txt\"")
    );
    alice
        .raw(
            "PUT",
            &format!("/_matrix/media/v3/upload/{path}"),
            Some(b"again"),
            Some("text/plain"),
        )
        .expect_err(409, "M_CANNOT_OVERWRITE_MEDIA");

    // At most five pending uploads per user.
    for _ in 0..5 {
        bob.post("/_matrix/media/v1/create", json!({})).ok();
    }
    bob.post("/_matrix/media/v1/create", json!({}))
        .expect_err(429, "M_LIMIT_EXCEEDED");
    alice.post("/_matrix/media/v1/create", json!({})).ok();
}

#[test]
fn expired_media_ids_refuse_uploads_and_are_deleted_at_start() {
    let mut server = TestServer::start_with(&[("HEARTH_MEDIA__UNUSED_EXPIRATION_SECS", "1")]);
    let alice = server.user("alice", "pw");
    let kept = alice.post("/_matrix/media/v1/create", json!({})).ok()["content_uri"]
        .as_str()
        .unwrap()
        .to_owned();
    alice
        .raw(
            "PUT",
            &format!("/_matrix/media/v3/upload/{}", path_of(&kept)),
            Some(b"in time"),
            Some("text/plain"),
        )
        .ok();
    let late = alice.post("/_matrix/media/v1/create", json!({})).ok()["content_uri"]
        .as_str()
        .unwrap()
        .to_owned();
    std::thread::sleep(Duration::from_millis(1200));
    alice
        .raw(
            "PUT",
            &format!("/_matrix/media/v3/upload/{}", path_of(&late)),
            Some(b"late"),
            Some("text/plain"),
        )
        .expect_err(404, "M_NOT_FOUND");
    alice
        .get(&format!(
            "/_matrix/client/v1/media/download/{}?timeout_ms=100",
            path_of(&late)
        ))
        .expect_err(404, "M_NOT_FOUND");
    server.stop();
    server.launch();
    server.stop();
    let stats = server.open_services().media.stats().unwrap();
    assert_eq!((stats.media, stats.pending), (1, 0), "{stats:?}");
}

#[test]
fn legacy_unauthenticated_endpoints_are_frozen_unless_configured() {
    let png = encode(&picture(20, 20), ImageFormat::Png);
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    let mxc = upload(&alice, &png, "image/png", None);
    let anonymous = alice.with_token(None);
    let legacy = format!("/_matrix/media/v3/download/{}", path_of(&mxc));
    anonymous.get(&legacy).expect_err(404, "M_NOT_FOUND");
    anonymous
        .get(&format!(
            "/_matrix/media/v3/thumbnail/{}?width=32&height=32",
            path_of(&mxc)
        ))
        .expect_err(404, "M_NOT_FOUND");
    drop(server);

    let server = TestServer::start_with(&[("HEARTH_MEDIA__SERVE_LEGACY_UNAUTHENTICATED", "true")]);
    let alice = server.user("alice", "pw");
    let mxc = upload(&alice, &png, "image/png", None);
    let anonymous = alice.with_token(None);
    let r = get_raw(
        &anonymous,
        &format!("/_matrix/media/v3/download/{}", path_of(&mxc)),
        &[],
    );
    assert_eq!((r.status, r.body == png), (200, true));
    assert_eq!(r.header("cross-origin-resource-policy"), Some("cross-origin"));
    let r = get_raw(
        &anonymous,
        &format!(
            "/_matrix/media/v3/thumbnail/{}?width=32&height=32&method=crop",
            path_of(&mxc)
        ),
        &[],
    );
    assert_eq!(r.status, 200);
    drop(server);

    // The freeze moment: media from before it stays served, later media does not.
    let future = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600)
        .to_string();
    let server = TestServer::start_with(&[("HEARTH_MEDIA__LEGACY_UNAUTHENTICATED_BEFORE", &future)]);
    let alice = server.user("alice", "pw");
    let mxc = upload(&alice, &png, "image/png", None);
    assert_eq!(
        get_raw(
            &alice.with_token(None),
            &format!("/_matrix/media/v3/download/{}", path_of(&mxc)),
            &[]
        )
        .status,
        200
    );
    drop(server);
    let server = TestServer::start_with(&[("HEARTH_MEDIA__LEGACY_UNAUTHENTICATED_BEFORE", "1000")]);
    let alice = server.user("alice", "pw");
    let mxc = upload(&alice, &png, "image/png", None);
    alice
        .with_token(None)
        .get(&format!("/_matrix/media/v3/download/{}", path_of(&mxc)))
        .expect_err(404, "M_NOT_FOUND");
}

fn thumbnail(c: &Client, mxc: &str, query: &str) -> Raw {
    get_raw(
        c,
        &format!("/_matrix/client/v1/media/thumbnail/{}?{query}", path_of(mxc)),
        &[],
    )
}

fn dimensions(bytes: &[u8]) -> (u32, u32) {
    let image = image::load_from_memory(bytes).expect("a decodable thumbnail");
    (image.width(), image.height())
}

#[test]
fn thumbnails_of_png_jpeg_gif_and_webp() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    let source = picture(400, 300);
    for (format, content_type, thumb_type) in [
        (ImageFormat::Png, "image/png", "image/png"),
        (ImageFormat::Jpeg, "image/jpeg", "image/jpeg"),
        (ImageFormat::Gif, "image/gif", "image/png"),
        (ImageFormat::WebP, "image/webp", "image/png"),
    ] {
        let mxc = upload(&alice, &encode(&source, format), content_type, None);
        let r = thumbnail(&alice, &mxc, "width=32&height=32&method=crop");
        assert_eq!(r.status, 200, "{content_type}: {}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.header("content-type"), Some(thumb_type));
        assert_eq!(dimensions(&r.body), (32, 32), "{content_type} crop");
        let r = thumbnail(&alice, &mxc, "width=320&height=240&method=scale");
        assert_eq!(dimensions(&r.body), (320, 240), "{content_type} scale");
        // Not a pre-generated size: made on demand, aspect ratio kept.
        let r = thumbnail(&alice, &mxc, "width=1000&height=100&method=scale");
        assert_eq!(dimensions(&r.body), (133, 100), "{content_type} on demand");
        let again = thumbnail(&alice, &mxc, "width=1000&height=100&method=scale");
        assert_eq!(again.body, r.body, "cached");
        // Never upscaled.
        let r = thumbnail(&alice, &mxc, "width=1600&height=1600&method=scale");
        assert_eq!(dimensions(&r.body), (400, 300));
        assert!(r.header("content-security-policy").is_some());
    }

    // Animated GIF: the original when it fits and `animated=true`, else the first frame.
    let gif = animated_gif(64, 64);
    let mxc = upload(&alice, &gif, "image/gif", None);
    let r = thumbnail(&alice, &mxc, "width=96&height=96&method=scale&animated=true");
    assert_eq!((r.header("content-type"), r.body == gif), (Some("image/gif"), true));
    let r = thumbnail(&alice, &mxc, "width=32&height=32&method=crop&animated=true");
    assert_eq!(r.header("content-type"), Some("image/png"));
    let first = image::load_from_memory(&r.body).unwrap().to_rgba8();
    assert_eq!((first.width(), first.height()), (32, 32));
    assert_eq!(first.get_pixel(5, 5), &Rgba([255, 0, 0, 255]), "the first frame");

    // Not an image, bad parameters.
    let text = upload(&alice, b"hello", "text/plain", None);
    assert_eq!(thumbnail(&alice, &text, "width=32&height=32").status, 400);
    let png = upload(&alice, &encode(&source, ImageFormat::Png), "image/png", None);
    assert_eq!(thumbnail(&alice, &png, "width=0&height=32").status, 400);
    assert_eq!(
        thumbnail(&alice, &png, "height=32").json()["errcode"],
        "M_MISSING_PARAM"
    );
}

/// A PNG whose header claims 100000 x 100000 pixels (40 GB decoded).
fn bomb_png() -> Vec<u8> {
    fn crc32(data: &[u8]) -> u32 {
        let mut crc = 0xffff_ffffu32;
        for &b in data {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0xedb8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&100_000u32.to_be_bytes());
    ihdr.extend_from_slice(&100_000u32.to_be_bytes());
    ihdr.extend_from_slice(&[8, 6, 0, 0, 0]);
    // A deflate stream of zeros: it would inflate to far more than it is.
    let idat = {
        let mut z = vec![0x78, 0x01];
        // One stored block is enough for the header check; the decoder is never reached.
        z.extend_from_slice(&[0x01, 0x00, 0x00, 0xff, 0xff]);
        z
    };
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    for (kind, data) in [(&b"IHDR"[..], &ihdr[..]), (b"IDAT", &idat[..]), (b"IEND", &[][..])] {
        png.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut body = kind.to_vec();
        body.extend_from_slice(data);
        png.extend_from_slice(&body);
        png.extend_from_slice(&crc32(&body).to_be_bytes());
    }
    png
}

#[test]
fn a_decompression_bomb_is_refused_without_decoding() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    let bomb = bomb_png();
    let mxc = upload(&alice, &bomb, "image/png", None);
    let started = std::time::Instant::now();
    let r = thumbnail(&alice, &mxc, "width=32&height=32&method=crop");
    assert_eq!((r.status, r.json()["errcode"].as_str()), (413, Some("M_TOO_LARGE")));
    assert!(started.elapsed() < Duration::from_secs(5), "refused from the header");
    assert_eq!(download(&alice, &mxc).body, bomb, "the file itself is still served");
    alice.whoami().ok();
}

#[test]
fn identical_content_is_stored_once_and_purged_by_the_admin_commands() {
    let mut server = TestServer::start();
    let alice = server.user("alice", "pw");
    let bob = server.user("bob", "pw");
    let shared = noise(700 * 1024, 1);
    let a1 = upload(&alice, &shared, "application/octet-stream", None);
    let a2 = upload(&alice, &shared, "application/octet-stream", Some("copy.bin"));
    let b1 = upload(&bob, &shared, "application/octet-stream", None);
    let b2 = upload(&bob, &noise(1000, 2), "application/octet-stream", None);
    assert_ne!(a1, a2);
    server.stop();

    let stats = |server: &TestServer| {
        let out = server.admin(&["media", "stats"], None);
        let (stdout, stderr) = out_text(&out);
        assert!(out.status.success(), "{stdout}{stderr}");
        stdout
    };
    let text = stats(&server);
    assert!(text.contains("media: 4 "), "{text}");
    assert!(
        text.contains(&format!("stored contents: 2 ({} bytes", shared.len() + 1000)),
        "deduplicated: {text}"
    );

    let out = server.admin(&["media", "purge", "--user", "@bob:hearth.test"], None);
    let (stdout, stderr) = out_text(&out);
    assert!(
        out.status.success() && stdout.contains("purged 2 media, freed 1000 bytes"),
        "{stdout}{stderr}"
    );
    assert!(stderr.contains("purged 2/2"), "progress: {stderr}");
    let text = stats(&server);
    assert!(
        text.contains("media: 2 ") && text.contains("stored contents: 1 "),
        "{text}"
    );

    let out = server.admin(&["media", "purge", "--older-than-days", "30"], None);
    assert!(out_text(&out).0.contains("purged 0 media"), "{:?}", out_text(&out));
    let out = server.admin(&["media", "purge"], None);
    assert!(!out.status.success(), "a filter is required");

    server.launch();
    let alice = alice.with_base(&server.base);
    assert!(download(&alice, &a2).body == shared);
    assert_eq!(download(&alice, &b1).status, 404);
    assert_eq!(download(&alice, &b2).status, 404);
    server.stop();
    let out = server.admin(&["media", "purge", "--older-than-days", "0"], None);
    assert!(out_text(&out).0.contains("purged 2 media"), "{:?}", out_text(&out));
    let text = stats(&server);
    assert!(
        text.contains("media: 0 ") && text.contains("stored contents: 0 (0 bytes"),
        "{text}"
    );
}

/// A tiny page server on `addr`; counts the connections it accepts.
fn page_server(addr: &str, redirect_to: Option<String>) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind(addr).unwrap();
    let local = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&hits);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            counter.fetch_add(1, Ordering::SeqCst);
            let mut buf = [0u8; 4096];
            let n = stream.read(&mut buf).unwrap_or(0);
            let request = String::from_utf8_lossy(&buf[..n]).into_owned();
            let path = request.split_whitespace().nth(1).unwrap_or("/").to_owned();
            let response = match (&redirect_to, path.as_str()) {
                (Some(target), "/redirect") => {
                    format!("HTTP/1.1 302 Found\r\nLocation: {target}\r\nContent-Length: 0\r\n\r\n")
                }
                (_, "/slow") => {
                    std::thread::sleep(Duration::from_secs(4));
                    "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 0\r\n\r\n".to_owned()
                }
                (_, "/big") => {
                    let body = format!(
                        "<html><head><title>Big</title></head><body>{}</body></html>",
                        "x".repeat(100_000)
                    );
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    )
                }
                (_, "/image.png") => {
                    let png = encode(&picture(8, 8), ImageFormat::Png);
                    let mut r = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: {}\r\n\r\n",
                        png.len()
                    )
                    .into_bytes();
                    r.extend_from_slice(&png);
                    let _ = stream.write_all(&r);
                    continue;
                }
                (Some(target), "/denied-image") => {
                    let body = format!(
                        "<html><head><title>Denied image</title><meta property=\"og:image\" content=\"{target}x.png\"></head></html>"
                    );
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    )
                }
                _ => {
                    let body = "<html><head><meta property=\"og:title\" content=\"Hearth test page\"><meta property=\"og:description\" content=\"Served on loopback\"><meta property=\"og:image\" content=\"/image.png\"></head></html>";
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
                        body.len()
                    )
                }
            };
            let _ = stream.write_all(response.as_bytes());
        }
    });
    (local.to_string(), hits)
}

#[test]
fn url_previews_reach_only_permitted_addresses() {
    // Denied listeners, on 127.0.0.1 (what `localhost` resolves to) and ::1.
    let (denied, denied_hits) = page_server("127.0.0.1:0", None);
    let denied_port = denied.rsplit(':').next().unwrap().to_owned();
    let (denied6, denied6_hits) = page_server("[::1]:0", None);
    let (allowed, allowed_hits) = page_server("127.0.0.2:0", Some(format!("http://127.0.0.1:{denied_port}/")));
    let server = TestServer::start_with(&[
        ("HEARTH_MEDIA__URL_PREVIEW_IP_ALLOW", "[\"127.0.0.2/32\"]"),
        ("HEARTH_MEDIA__URL_PREVIEW_MAX_BYTES", "50000"),
        ("HEARTH_MEDIA__URL_PREVIEW_TIMEOUT_SECS", "1"),
    ]);
    let alice = server.user("alice", "pw");
    let preview = |url: &str| alice.get(&format!("/_matrix/client/v1/media/preview_url?url={}", enc(url)));

    let r = preview(&format!("http://{allowed}/page"));
    assert_eq!(r.ok()["og:title"], "Hearth test page");
    assert_eq!(r.body["og:description"], "Served on loopback");
    // The page's image was fetched (through the same policy) and stored as media.
    let image = r.body["og:image"].as_str().expect("og:image").to_owned();
    assert!(image.starts_with("mxc://hearth.test/"), "{}", r.text);
    assert_eq!(r.body["og:image:type"], "image/png");
    let stored = download(&alice, &image);
    assert_eq!(dimensions(&stored.body), (8, 8));
    // An image on a denied address is dropped without being contacted.
    let r = preview(&format!("http://{allowed}/denied-image"));
    assert_eq!(r.ok()["og:title"], "Denied image");
    assert!(r.body.get("og:image").is_none(), "{}", r.text);
    let hits = allowed_hits.load(Ordering::SeqCst);
    preview(&format!("http://{allowed}/page")).ok();
    assert_eq!(
        allowed_hits.load(Ordering::SeqCst),
        hits,
        "the second preview comes from the cache"
    );
    // A 100 kB page is cut at 50 kB (its head is still read).
    assert_eq!(preview(&format!("http://{allowed}/big")).ok()["og:title"], "Big");

    for url in [
        format!("http://localhost:{denied_port}/"),
        format!("http://127.0.0.1:{denied_port}/"),
        format!("http://127.0.0.3:{denied_port}/"),
        format!("http://[::ffff:127.0.0.1]:{denied_port}/"),
        format!("http://{denied6}/"),
        format!("http://{allowed}/redirect"),
    ] {
        let r = preview(&url);
        assert_eq!(r.status, 403, "{url}: {}", r.text);
        assert!(
            r.body["errcode"].is_string() && r.body["error"].is_string(),
            "{}",
            r.text
        );
    }
    assert_eq!(
        denied_hits.load(Ordering::SeqCst),
        0,
        "the denied address was never contacted"
    );
    assert_eq!(denied6_hits.load(Ordering::SeqCst), 0, "[::1] was never contacted");
    // A page that stalls runs into the time limit (last: it blocks the page server).
    let started = std::time::Instant::now();
    preview(&format!("http://{allowed}/slow")).expect_err(502, "M_UNKNOWN");
    assert!(started.elapsed() < Duration::from_secs(3), "the time limit held");
    preview("file:///etc/passwd").expect_err(400, "M_INVALID_PARAM");
    alice
        .with_token(None)
        .get("/_matrix/client/v1/media/preview_url?url=http%3A%2F%2Fexample.org")
        .expect_err(401, "M_MISSING_TOKEN");
}

#[test]
fn sigkill_during_an_upload_leaves_nothing_half_written() {
    let mut server = TestServer::start();
    let alice = server.user("alice", "pw");
    let done = noise(600 * 1024, 3);
    let mxc = upload(&alice, &done, "application/octet-stream", None);

    // Start a 20 MB upload, send 5 MB of it, then kill the server.
    let addr = server.base.strip_prefix("http://").unwrap().to_owned();
    let mut stream = TcpStream::connect(&addr).unwrap();
    let head = format!(
        "POST /_matrix/media/v3/upload HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
        alice.token.as_deref().unwrap(),
        20 << 20
    );
    stream.write_all(head.as_bytes()).unwrap();
    let part = noise(5 << 20, 4);
    stream.write_all(&part).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    server.kill9();
    drop(stream);

    // The interrupted upload left chunks under a pending mark, and nothing visible.
    let open = |dir: &std::path::Path| {
        let db = hearth::storage::Db::open(dir, &hearth::storage::StorageOptions::for_tests()).unwrap();
        hearth::storage::tables::media::MediaTable::new(db)
    };
    let table = open(&server.data_dir);
    let pending = table.pending_blobs().unwrap();
    assert_eq!(pending.len(), 1, "one upload was in progress");
    assert!(
        table.chunk(pending[0], 0).unwrap().is_some(),
        "its first chunk was written"
    );
    assert_eq!(table.all().unwrap().len(), 1, "only the completed upload has a record");
    drop(table);

    server.launch();
    let alice = alice.with_base(&server.base);
    assert!(download(&alice, &mxc).body == done, "the completed upload survived");
    server.stop();
    let services = server.open_services();
    let stats = services.media.stats().unwrap();
    assert_eq!(
        (stats.media, stats.blobs, stats.blob_bytes),
        (1, 1, done.len() as u64),
        "{stats:?}"
    );
    drop(services);
    let table = open(&server.data_dir);
    assert!(
        table.pending_blobs().unwrap().is_empty(),
        "the start deleted the orphans"
    );
    assert!(table.chunk(pending[0], 0).unwrap().is_none());
}

#[test]
fn an_upload_abandoned_by_its_client_is_cleaned_up() {
    let mut server = TestServer::start();
    let alice = server.user("alice", "pw");
    let addr = server.base.strip_prefix("http://").unwrap().to_owned();
    let mut stream = TcpStream::connect(&addr).unwrap();
    let head = format!(
        "POST /_matrix/media/v3/upload HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
        alice.token.as_deref().unwrap(),
        10 << 20
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(&noise(2 << 20, 5)).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    drop(stream);
    std::thread::sleep(Duration::from_millis(700));
    server.stop();
    let db = hearth::storage::Db::open(&server.data_dir, &hearth::storage::StorageOptions::for_tests()).unwrap();
    let table = hearth::storage::tables::media::MediaTable::new(db);
    assert!(
        table.pending_blobs().unwrap().is_empty(),
        "the server deleted the partial upload"
    );
    assert!(table.all().unwrap().is_empty());
}

/// `https://` previews: TLS over the vetted connection, trusting the public roots plus the
/// operator's extra CA file. A page server on loopback with a certificate made for the test.
#[test]
fn https_previews_trust_the_configured_roots() {
    use tokio_rustls::rustls::{
        ServerConfig, ServerConnection, StreamOwned,
        crypto::ring::default_provider,
        pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer},
    };
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.2".to_owned()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, certified.cert.pem()).unwrap();
    let config = ServerConfig::builder_with_provider(Arc::new(default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(certified.cert.der().to_vec())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(certified.key_pair.serialize_der())),
        )
        .unwrap();
    let config = Arc::new(config);
    let listener = TcpListener::bind("127.0.0.2:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(8) {
            let Ok(tcp) = stream else { continue };
            let Ok(conn) = ServerConnection::new(Arc::clone(&config)) else {
                continue;
            };
            let mut tls = StreamOwned::new(conn, tcp);
            let mut buf = [0u8; 4096];
            if tls.read(&mut buf).unwrap_or(0) == 0 {
                continue;
            }
            let body = "<html><head><title>Secure page</title></head></html>";
            let response = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            let _ = tls.write_all(response.as_bytes());
            let _ = tls.flush();
        }
    });
    let url = format!("https://127.0.0.2:{port}/page");
    let preview = |server: &TestServer| {
        let alice = server.user("alice", "pw");
        alice.get(&format!("/_matrix/client/v1/media/preview_url?url={}", enc(&url)))
    };
    let allow = ("HEARTH_MEDIA__URL_PREVIEW_IP_ALLOW", "[\"127.0.0.2/32\"]");

    // Without the extra CA the self-made certificate is not trusted.
    let untrusting = TestServer::start_with(&[allow]);
    let r = preview(&untrusting);
    assert!(r.status >= 400, "{}", r.text);
    drop(untrusting);

    let ca = ca_file.to_str().unwrap();
    let trusting = TestServer::start_with(&[allow, ("HEARTH_MEDIA__URL_PREVIEW_EXTRA_CA_FILE", ca)]);
    let r = preview(&trusting);
    assert_eq!(r.ok()["og:title"], "Secure page", "{}", r.text);
}
