//! Media across servers with a real Synapse (PyPI, `support::synapse`) on loopback, both
//! directions: a file uploaded on Synapse downloads byte-identical through Hearth (Hearth's
//! outbound `federation/v1/media/download` and multipart parser against Synapse's answer), and
//! one uploaded on Hearth downloads byte-identical through Synapse's authenticated client API
//! (Synapse's fetch against Hearth's multipart answer); thumbnails of each other's images.
//! Skipped with a note when the Synapse venv is missing, unless `HEARTH_TEST_REQUIRE_SYNAPSE=1`.

use std::time::Duration;

use crate::support::{
    Client,
    federation::{TestCa, federated_server},
    media::{noise, png, upload},
    synapse::{self, Synapse},
};

/// A binary GET: status, `Content-Type`, body.
fn get_bytes(c: &Client, path: &str) -> (u16, Option<String>, Vec<u8>) {
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
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = response
        .into_body()
        .into_with_config()
        .limit(u64::MAX)
        .read_to_vec()
        .unwrap();
    (status, content_type, body)
}

/// Both directions on 127.0.0.151 (this test's own address).
#[test]
fn files_cross_between_hearth_and_synapse_byte_identical() {
    let Some(python) = synapse::python() else {
        return;
    };
    let ca = TestCa::new();
    let mut hearth = federated_server(&ca, "127.0.0.151", &[]);
    hearth.launch();
    let synapse = Synapse::start(&python, &ca, "127.0.0.151");
    let alice = hearth.user("alice", "secret-password");
    let bob = synapse.user("bob", "secret-password");

    // Synapse → Hearth.
    let from_synapse = noise(700_000, 11);
    let mxc = upload(&bob, &from_synapse, "application/x-synapse", "s.bin");
    let path = mxc.strip_prefix("mxc://").unwrap().to_owned();
    assert!(path.starts_with(&synapse.server_name), "{mxc}");
    let (status, content_type, body) = get_bytes(&alice, &format!("/_matrix/client/v1/media/download/{path}"));
    if status != 200 {
        synapse.print_log();
    }
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert!(body == from_synapse, "the file differs ({} bytes)", body.len());
    assert_eq!(content_type.as_deref(), Some("application/x-synapse"));
    let picture = upload(&bob, &png(400, 300), "image/png", "s.png");
    let path = picture.strip_prefix("mxc://").unwrap();
    let (status, content_type, body) = get_bytes(
        &alice,
        &format!("/_matrix/client/v1/media/thumbnail/{path}?width=64&height=64&method=scale"),
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(content_type.as_deref(), Some("image/png"));
    let thumb = image::load_from_memory(&body).unwrap();
    // The smallest usual size that covers the request (320x240 for `scale`): a real thumbnail.
    assert!(
        thumb.width() < 400 && thumb.height() <= 240,
        "{}x{}",
        thumb.width(),
        thumb.height()
    );
    // An id Synapse does not know is a 404 through Hearth.
    let (status, _, _) = get_bytes(
        &alice,
        &format!(
            "/_matrix/client/v1/media/download/{}/AAAAnosuchmedia",
            synapse.server_name
        ),
    );
    assert_eq!(status, 404);

    // Hearth → Synapse.
    let from_hearth = noise(900_000, 12);
    let mxc = upload(&alice, &from_hearth, "application/x-hearth", "h.bin");
    let path = mxc.strip_prefix("mxc://").unwrap().to_owned();
    assert!(path.starts_with(&hearth.server_name), "{mxc}");
    let (status, content_type, body) = get_bytes(&bob, &format!("/_matrix/client/v1/media/download/{path}"));
    if status != 200 {
        synapse.print_log();
    }
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert!(body == from_hearth, "the file differs ({} bytes)", body.len());
    assert_eq!(content_type.as_deref(), Some("application/x-hearth"));
    let picture = upload(&alice, &png(500, 200), "image/png", "h.png");
    let path = picture.strip_prefix("mxc://").unwrap();
    let (status, _, body) = get_bytes(
        &bob,
        &format!("/_matrix/client/v1/media/thumbnail/{path}?width=32&height=32&method=crop"),
    );
    if status != 200 {
        synapse.print_log();
    }
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    image::load_from_memory(&body).unwrap();
    let (status, _, _) = get_bytes(
        &bob,
        &format!("/_matrix/client/v1/media/download/{}/nosuchmedia", hearth.server_name),
    );
    assert_eq!(status, 404);
}
