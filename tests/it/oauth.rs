//! The OAuth 2.0 API (client-server API "OAuth 2.0 API"): server metadata, dynamic client
//! registration, the authorization code grant with PKCE driven like a browser would (cookies,
//! CSRF fields, redirects not followed), refresh and revocation, each error path with the error
//! the RFCs name and nothing issued, `prompt=create` sign-up, the device authorization grant,
//! and the account management page.

use std::collections::HashMap;
use std::time::Duration;

use base64::Engine;
use serde_json::{Value, json};

use crate::support::{Client, Resp, TestServer};

const FORM: &str = "application/x-www-form-urlencoded";
const REDIRECT: &str = "https://app.example.com/callback";

/// A browser: keeps the session cookie, does not follow redirects.
struct Browser {
    base: String,
    agent: ureq::Agent,
    cookie: Option<String>,
}

impl Browser {
    fn new(base: &str) -> Browser {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        Browser {
            base: base.to_owned(),
            agent,
            cookie: None,
        }
    }

    fn send(&mut self, method: &str, path: &str, body: Option<String>) -> Resp {
        let url = if path.starts_with("http") {
            path.to_owned()
        } else {
            format!("{}{}", self.base, path)
        };
        let mut builder = ureq::http::Request::builder().method(method).uri(&url);
        if let Some(cookie) = &self.cookie {
            builder = builder.header("Cookie", format!("hearth_session={cookie}"));
        }
        if body.is_some() {
            builder = builder.header("Content-Type", FORM);
        }
        let response = self
            .agent
            .run(builder.body(body.unwrap_or_default().into_bytes()).unwrap())
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = response.status().as_u16();
        let headers: Vec<(String, String)> = response
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
            .collect();
        for (k, v) in &headers {
            if k.eq_ignore_ascii_case("set-cookie")
                && let Some(rest) = v.strip_prefix("hearth_session=")
            {
                let value = rest.split(';').next().unwrap().to_owned();
                assert!(v.contains("HttpOnly") && v.contains("SameSite=Lax"), "{v}");
                self.cookie = Some(value);
            }
        }
        let text = response.into_body().read_to_string().unwrap_or_default();
        Resp {
            status,
            body: serde_json::from_str(&text).unwrap_or(Value::Null),
            text,
            headers,
        }
    }

    fn get(&mut self, path: &str) -> Resp {
        self.send("GET", path, None)
    }

    fn post(&mut self, path: &str, fields: &[(&str, &str)]) -> Resp {
        self.send("POST", path, Some(form(fields)))
    }
}

fn form(fields: &[(&str, &str)]) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(fields)
        .finish()
}

/// The value of the hidden field `name` in a page.
fn hidden(html: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html
        .find(&marker)
        .unwrap_or_else(|| panic!("no field {name} in {html}"))
        + marker.len();
    let end = html[start..].find('"').unwrap() + start;
    html[start..end].replace("&amp;", "&")
}

fn location(resp: &Resp) -> String {
    assert_eq!(resp.status, 303, "expected a redirect: {} {}", resp.status, resp.text);
    resp.header("location").expect("Location").to_owned()
}

/// Parameters of a redirect's query.
fn query_of(url: &str) -> HashMap<String, String> {
    let query = url.split_once('?').map(|(_, q)| q).unwrap_or("");
    let query = query.split('#').next().unwrap();
    url::form_urlencoded::parse(query.as_bytes()).into_owned().collect()
}

fn pkce() -> (String, String) {
    let verifier = format!("v{}", "0123456789abcdefghijklmnopqrstuvwxyz-._~ABCDEFG");
    let digest = ring::digest::digest(&ring::digest::SHA256, verifier.as_bytes());
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest.as_ref());
    (verifier, challenge)
}

fn register_client(c: &Client, grants: &[&str]) -> String {
    let resp = c.post(
        "/_hearth/oauth2/register",
        json!({
            "client_name": "Test <App>",
            "client_uri": "https://example.com/",
            "redirect_uris": [REDIRECT],
            "grant_types": grants,
            "response_types": ["code"],
            "token_endpoint_auth_method": "none",
            "application_type": "web",
        }),
    );
    assert_eq!(resp.status, 201, "{}", resp.text);
    resp.body["client_id"].as_str().unwrap().to_owned()
}

fn code_client(c: &Client) -> String {
    register_client(c, &["authorization_code", "refresh_token"])
}

fn scope(device: &str) -> String {
    format!("urn:matrix:client:api:* urn:matrix:client:device:{device}")
}

fn authorize_path(client_id: &str, challenge: &str, scope: &str, extra: &[(&str, &str)]) -> String {
    let mut fields = vec![
        ("response_type", "code"),
        ("client_id", client_id),
        ("redirect_uri", REDIRECT),
        ("scope", scope),
        ("state", "st4te"),
        ("code_challenge", challenge),
        ("code_challenge_method", "S256"),
    ];
    fields.extend_from_slice(extra);
    format!("/_hearth/oauth2/authorize?{}", form(&fields))
}

fn token(c: &Client, fields: &[(&str, &str)]) -> Resp {
    c.raw(
        "POST",
        "/_hearth/oauth2/token",
        Some(form(fields).as_bytes()),
        Some(FORM),
    )
}

#[track_caller]
fn expect_oauth_error(resp: &Resp, error: &str) {
    assert_eq!(resp.body["error"], error, "{} {}", resp.status, resp.text);
    assert!(resp.status == 400 || resp.status == 401, "{}", resp.status);
    assert!(resp.body.get("access_token").is_none());
}

/// Signs in through the pages and consents; returns the redirect with the code.
fn sign_in_and_consent(b: &mut Browser, authorize: &str, user: &str, password: &str) -> String {
    let consent = location(&b.get(authorize));
    assert!(consent.starts_with("/_hearth/oauth2/consent?request="), "{consent}");
    let login = b.get(&consent);
    assert_eq!(login.status, 200);
    assert!(login.text.contains("<label for=\"password\">"), "{}", login.text);
    assert!(login.text.contains("Test &lt;App&gt;"), "the client name is escaped");
    let next = location(&b.post(
        "/_hearth/account/login",
        &[
            ("csrf", &hidden(&login.text, "csrf")),
            ("next", &hidden(&login.text, "next")),
            ("username", user),
            ("password", password),
        ],
    ));
    assert_eq!(next, consent);
    consent_allow(b, &consent)
}

fn consent_allow(b: &mut Browser, consent: &str) -> String {
    let page = b.get(consent);
    assert_eq!(page.status, 200, "{}", page.text);
    assert!(page.text.contains("Allow access?"), "{}", page.text);
    location(&b.post(
        "/_hearth/oauth2/consent",
        &[
            ("csrf", &hidden(&page.text, "csrf")),
            ("request", &hidden(&page.text, "request")),
            ("action", "allow"),
        ],
    ))
}

fn code_of(redirect: &str) -> String {
    assert!(redirect.starts_with(REDIRECT), "{redirect}");
    let q = query_of(redirect);
    assert_eq!(q.get("state").map(String::as_str), Some("st4te"), "{redirect}");
    q.get("code")
        .cloned()
        .unwrap_or_else(|| panic!("no code in {redirect}"))
}

/// Runs a full sign-in and returns (client id, verifier, code).
fn get_code(s: &TestServer, b: &mut Browser, device: &str) -> (String, String, String) {
    let c = s.client();
    let client_id = code_client(&c);
    let (verifier, challenge) = pkce();
    let redirect = if b.cookie.is_some() && b.get("/_hearth/account/").text.contains("Your account") {
        let consent = location(&b.get(&authorize_path(&client_id, &challenge, &scope(device), &[])));
        consent_allow(b, &consent)
    } else {
        sign_in_and_consent(
            b,
            &authorize_path(&client_id, &challenge, &scope(device), &[]),
            "alice",
            "secret-pw",
        )
    };
    (client_id, verifier, code_of(&redirect))
}

fn exchange(c: &Client, client_id: &str, code: &str, verifier: &str) -> Resp {
    token(
        c,
        &[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", REDIRECT),
            ("client_id", client_id),
            ("code_verifier", verifier),
        ],
    )
}

fn whoami(c: &Client, access: &str) -> Resp {
    c.with_token(Some(access)).whoami()
}

#[test]
fn oauth_metadata_lists_the_endpoints_on_both_paths() {
    let s = TestServer::start();
    let c = s.client();
    for path in [
        "/_matrix/client/v1/auth_metadata",
        "/_matrix/client/unstable/org.matrix.msc2965/auth_metadata",
    ] {
        let m = c.get(path).ok().clone();
        assert_eq!(m["issuer"], format!("{}/", s.base));
        // What matrix-rust-sdk (Element X) parses it with.
        use ruma::api::client::discovery::get_authorization_server_metadata::v1::AuthorizationServerMetadata;
        let parsed: AuthorizationServerMetadata = serde_json::from_value(m.clone()).expect("ruma parses the metadata");
        parsed.insecure_validate_urls().unwrap();
        for key in [
            "authorization_endpoint",
            "token_endpoint",
            "registration_endpoint",
            "revocation_endpoint",
            "device_authorization_endpoint",
            "account_management_uri",
        ] {
            assert!(m[key].as_str().unwrap().starts_with(&s.base), "{key}: {m}");
        }
        assert_eq!(m["response_types_supported"], json!(["code"]));
        assert_eq!(m["code_challenge_methods_supported"], json!(["S256"]));
        assert_eq!(m["prompt_values_supported"], json!(["create"]));
        for v in ["query", "fragment"] {
            assert!(m["response_modes_supported"].as_array().unwrap().contains(&json!(v)));
        }
        for g in [
            "authorization_code",
            "refresh_token",
            "urn:ietf:params:oauth:grant-type:device_code",
        ] {
            assert!(m["grant_types_supported"].as_array().unwrap().contains(&json!(g)));
        }
        assert!(
            m["account_management_actions_supported"]
                .as_array()
                .unwrap()
                .contains(&json!("org.matrix.device_delete"))
        );
    }
    // The classic password login stays.
    let flows = c.get("/_matrix/client/v3/login").ok().clone();
    assert_eq!(flows["flows"][0]["type"], "m.login.password");

    // Switched off: 404 M_UNRECOGNIZED everywhere, /login still works.
    let off = TestServer::start_with(&[
        ("HEARTH_OAUTH__ENABLED", "false"),
        ("HEARTH_PUBLIC_BASEURL", "https://matrix.example.org"),
    ]);
    let c = off.client();
    c.get("/_matrix/client/v1/auth_metadata")
        .expect_err(404, "M_UNRECOGNIZED");
    c.post(
        "/_hearth/oauth2/register",
        json!({"client_uri": "https://example.com/"}),
    )
    .expect_err(404, "M_UNRECOGNIZED");
    c.get("/_hearth/oauth2/authorize").expect_err(404, "M_UNRECOGNIZED");
    assert_eq!(c.get("/_matrix/client/v3/login").status, 200);
}

#[test]
fn oauth_metadata_uses_the_configured_public_baseurl() {
    let s = TestServer::start_with(&[
        ("HEARTH_PUBLIC_BASEURL", "https://matrix.example.org/"),
        ("HEARTH_REGISTRATION__MODE", "closed"),
    ]);
    let m = s.client().get("/_matrix/client/v1/auth_metadata").ok().clone();
    assert_eq!(m["issuer"], "https://matrix.example.org/");
    assert_eq!(m["token_endpoint"], "https://matrix.example.org/_hearth/oauth2/token");
    assert!(
        m.get("prompt_values_supported").is_none(),
        "no sign-up when closed: {m}"
    );
}

#[test]
fn oauth_client_registration_follows_the_metadata_rules() {
    let s = TestServer::start();
    let c = s.client();
    let register = |body: Value| c.post("/_hearth/oauth2/register", body);
    let ok = register(json!({
        "client_uri": "https://example.com/",
        "redirect_uris": ["com.example.app:/callback", "http://localhost/cb", "https://app.example.com/cb"],
        "grant_types": ["authorization_code", "refresh_token", "urn:ietf:params:oauth:grant-type:token-exchange"],
        "application_type": "native",
        "client_name#fr": "Mon application",
    }));
    assert_eq!(ok.status, 201, "{}", ok.text);
    assert!(ok.body["client_id"].is_string());
    assert_eq!(ok.body["grant_types"], json!(["authorization_code", "refresh_token"]));
    assert_eq!(ok.body["token_endpoint_auth_method"], "none");
    // What Element X registers with.
    let element_x = register(json!({
        "client_name": "Element X",
        "client_uri": "https://element.io",
        "logo_uri": "https://element.io/mobile-icon.png",
        "tos_uri": "https://element.io/acceptable-use-policy-terms",
        "policy_uri": "https://element.io/privacy",
        "redirect_uris": ["io.element.elementx:/"],
        "application_type": "native",
        "token_endpoint_auth_method": "none",
        "response_types": ["code"],
        "grant_types": ["authorization_code", "refresh_token", "urn:ietf:params:oauth:grant-type:device_code"],
    }));
    assert_eq!(element_x.status, 201, "{}", element_x.text);

    let cases = [
        (json!({"redirect_uris": [REDIRECT]}), "invalid_client_metadata"),
        (
            json!({"client_uri": "http://example.com/", "redirect_uris": [REDIRECT]}),
            "invalid_client_metadata",
        ),
        (
            json!({"client_uri": "https://u:p@example.com/", "redirect_uris": [REDIRECT]}),
            "invalid_client_metadata",
        ),
        (
            json!({"client_uri": "https://example.com/", "logo_uri": "https://evil.com/l.png", "redirect_uris": [REDIRECT]}),
            "invalid_client_metadata",
        ),
        (
            json!({"client_uri": "https://example.com/", "redirect_uris": []}),
            "invalid_redirect_uri",
        ),
        (
            json!({"client_uri": "https://example.com/", "redirect_uris": ["https://app.com/cb"]}),
            "invalid_redirect_uri",
        ),
        (
            json!({"client_uri": "https://example.com/", "redirect_uris": ["https://example.com/cb#frag"]}),
            "invalid_redirect_uri",
        ),
        (
            json!({"client_uri": "https://example.com/", "redirect_uris": ["http://localhost/cb"]}),
            "invalid_redirect_uri",
        ),
        (
            json!({"client_uri": "https://example.com/", "application_type": "native", "redirect_uris": ["http://localhost:1234/cb"]}),
            "invalid_redirect_uri",
        ),
        (
            json!({"client_uri": "https://example.com/", "application_type": "native", "redirect_uris": ["example:/cb"]}),
            "invalid_redirect_uri",
        ),
        (
            json!({"client_uri": "https://example.com/", "application_type": "native", "redirect_uris": ["com.example.app://cb"]}),
            "invalid_redirect_uri",
        ),
        (
            json!({"client_uri": "https://example.com/", "token_endpoint_auth_method": "client_secret_basic", "redirect_uris": [REDIRECT]}),
            "invalid_client_metadata",
        ),
    ];
    for (body, error) in cases {
        let resp = register(body.clone());
        assert_eq!(
            (resp.status, resp.body["error"].as_str()),
            (400, Some(error)),
            "{body}: {}",
            resp.text
        );
        assert!(resp.body.get("client_id").is_none());
    }
    let resp = c.raw(
        "POST",
        "/_hearth/oauth2/register",
        Some(b"not json"),
        Some("application/json"),
    );
    assert_eq!(resp.body["error"], "invalid_client_metadata");
}

#[test]
fn oauth_code_flow_end_to_end_with_refresh_and_revocation() {
    let s = TestServer::start();
    let c = s.client();
    s.user("alice", "secret-pw");
    let mut b = Browser::new(&s.base);
    let (client_id, verifier, code) = get_code(&s, &mut b, "OAUTHDEV01");
    let tokens = exchange(&c, &client_id, &code, &verifier).ok().clone();
    assert_eq!(tokens["token_type"], "Bearer");
    assert_eq!(tokens["scope"], scope("OAUTHDEV01"));
    assert!(tokens["expires_in"].as_u64().unwrap() > 0);
    let access = tokens["access_token"].as_str().unwrap();
    let refresh = tokens["refresh_token"].as_str().unwrap();
    let me = whoami(&c, access).ok().clone();
    assert_eq!(me["user_id"], "@alice:hearth.test");
    assert_eq!(me["device_id"], "OAUTHDEV01");
    // The device is an ordinary device, named after the client.
    let devices = c
        .with_token(Some(access))
        .get("/_matrix/client/v3/devices")
        .ok()
        .clone();
    let dev = devices["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["device_id"] == "OAUTHDEV01")
        .unwrap()
        .clone();
    assert_eq!(dev["display_name"], "Test <App>");

    // Another registered client cannot use this client's refresh token (RFC 9700 §4.14.2), and
    // its attempt rotates nothing.
    let other_client = register_client(&c, &["authorization_code", "refresh_token"]);
    let stolen = token(
        &c,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh),
            ("client_id", &other_client),
        ],
    );
    expect_oauth_error(&stolen, "invalid_grant");
    whoami(&c, access).ok();

    // Refresh: new pair; once the new access token is used, the old refresh token is dead.
    let refreshed = token(
        &c,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh),
            ("client_id", &client_id),
        ],
    )
    .ok()
    .clone();
    let access2 = refreshed["access_token"].as_str().unwrap();
    let refresh2 = refreshed["refresh_token"].as_str().unwrap();
    assert_ne!(access2, access);
    whoami(&c, access2).ok();
    let again = token(
        &c,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh),
            ("client_id", &client_id),
        ],
    );
    expect_oauth_error(&again, "invalid_grant");
    whoami(&c, access).expect_err(401, "M_UNKNOWN_TOKEN");

    // Revocation (by refresh token) removes the device and both tokens; revoking again is 200.
    let revoke = |t: &str| {
        c.raw(
            "POST",
            "/_hearth/oauth2/revoke",
            Some(form(&[("token", t), ("client_id", &client_id)]).as_bytes()),
            Some(FORM),
        )
    };
    assert_eq!(revoke(refresh2).status, 200);
    whoami(&c, access2).expect_err(401, "M_UNKNOWN_TOKEN");
    assert_eq!(revoke(refresh2).status, 200);
    let after = token(
        &c,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh2),
            ("client_id", &client_id),
        ],
    );
    expect_oauth_error(&after, "invalid_grant");
    let missing = c.raw("POST", "/_hearth/oauth2/revoke", Some(b""), Some(FORM));
    expect_oauth_error(&missing, "invalid_request");

    // Signed in already: the browser session consents again without a password; revoking by
    // access token works too.
    let (client_id, verifier, code) = get_code(&s, &mut b, "OAUTHDEV02");
    let tokens = exchange(&c, &client_id, &code, &verifier).ok().clone();
    let access = tokens["access_token"].as_str().unwrap();
    whoami(&c, access).ok();
    assert_eq!(revoke(access).status, 200);
    whoami(&c, access).expect_err(401, "M_UNKNOWN_TOKEN");
}

#[test]
fn oauth_unstable_scopes_and_fragment_mode_are_accepted() {
    let s = TestServer::start();
    let c = s.client();
    s.user("alice", "secret-pw");
    let client_id = code_client(&c);
    let (verifier, challenge) = pkce();
    let unstable = "urn:matrix:org.matrix.msc2967.client:api:* urn:matrix:org.matrix.msc2967.client:device:ELEMENTX01";
    let mut b = Browser::new(&s.base);
    let path = authorize_path(
        &client_id,
        &challenge,
        unstable,
        &[("response_mode", "fragment"), ("login_hint", "mxid:@alice:hearth.test")],
    );
    let consent = location(&b.get(&path));
    let login = b.get(&consent);
    assert!(
        login.text.contains("value=\"@alice:hearth.test\""),
        "login_hint fills the name"
    );
    location(&b.post(
        "/_hearth/account/login",
        &[
            ("csrf", &hidden(&login.text, "csrf")),
            ("next", &consent),
            ("username", "@alice:hearth.test"),
            ("password", "secret-pw"),
        ],
    ));
    let redirect = consent_allow(&mut b, &consent);
    let fragment = redirect.split_once('#').expect("fragment").1;
    let params: HashMap<String, String> = url::form_urlencoded::parse(fragment.as_bytes()).into_owned().collect();
    assert_eq!(params["state"], "st4te");
    let tokens = exchange(&c, &client_id, &params["code"], &verifier).ok().clone();
    assert_eq!(tokens["scope"], unstable);
    assert_eq!(
        whoami(&c, tokens["access_token"].as_str().unwrap()).ok()["device_id"],
        "ELEMENTX01"
    );
}

fn device_count(s: &TestServer) -> usize {
    let c = s.client().with_base(&s.base);
    let mut c = c;
    c.login("alice", "secret-pw");
    let n = c.get("/_matrix/client/v3/devices").ok()["devices"]
        .as_array()
        .unwrap()
        .len();
    c.post("/_matrix/client/v3/logout", json!({})).ok();
    n
}

#[test]
fn oauth_code_exchange_errors_issue_nothing() {
    let s = TestServer::start();
    let c = s.client();
    s.user("alice", "secret-pw");
    let baseline = device_count(&s);
    let mut b = Browser::new(&s.base);

    // Bad PKCE verifier: invalid_grant, and the code is burnt.
    let (client_id, verifier, code) = get_code(&s, &mut b, "BADPKCE001");
    let wrong = format!("{}x", &verifier[..verifier.len() - 1]);
    expect_oauth_error(&exchange(&c, &client_id, &code, &wrong), "invalid_grant");
    expect_oauth_error(&exchange(&c, &client_id, &code, &verifier), "invalid_grant");

    // Wrong redirect URI.
    let (client_id, verifier, code) = get_code(&s, &mut b, "WRONGREDIR");
    let resp = token(
        &c,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", "https://app.example.com/other"),
            ("client_id", &client_id),
            ("code_verifier", &verifier),
        ],
    );
    expect_oauth_error(&resp, "invalid_grant");

    // Another client presenting the code; an unknown client.
    let (client_id, verifier, code) = get_code(&s, &mut b, "OTHERCLIEN");
    let other = code_client(&c);
    expect_oauth_error(&exchange(&c, &other, &code, &verifier), "invalid_grant");
    expect_oauth_error(&exchange(&c, "no-such-client", &code, &verifier), "invalid_client");
    let _ = client_id;

    // Unknown code, missing or unsupported grant types.
    expect_oauth_error(&exchange(&c, &other, "nonsense", &verifier), "invalid_grant");
    expect_oauth_error(&token(&c, &[("code", "x")]), "invalid_request");
    expect_oauth_error(&token(&c, &[("grant_type", "password")]), "unsupported_grant_type");
    expect_oauth_error(
        &token(
            &c,
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", "x"),
                ("client_id", "nope"),
            ],
        ),
        "invalid_client",
    );
    expect_oauth_error(
        &token(
            &c,
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", "x"),
                ("client_id", &other),
            ],
        ),
        "invalid_grant",
    );
    expect_oauth_error(
        &token(
            &c,
            &[
                ("grant_type", "authorization_code"),
                ("grant_type", "authorization_code"),
            ],
        ),
        "invalid_request",
    );
    assert_eq!(device_count(&s), baseline, "nothing was issued");

    // A reused code: refused, and the device it issued is revoked.
    let (client_id, verifier, code) = get_code(&s, &mut b, "REUSEDCODE");
    let first = exchange(&c, &client_id, &code, &verifier).ok().clone();
    let access = first["access_token"].as_str().unwrap();
    whoami(&c, access).ok();
    expect_oauth_error(&exchange(&c, &client_id, &code, &verifier), "invalid_grant");
    whoami(&c, access).expect_err(401, "M_UNKNOWN_TOKEN");
    let refresh = first["refresh_token"].as_str().unwrap();
    expect_oauth_error(
        &token(
            &c,
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh),
                ("client_id", &client_id),
            ],
        ),
        "invalid_grant",
    );
    assert_eq!(device_count(&s), baseline, "the replayed code's device is gone");
}

#[test]
fn oauth_authorization_request_errors() {
    let s = TestServer::start();
    let c = s.client();
    let client_id = code_client(&c);
    let (_, challenge) = pkce();
    let mut b = Browser::new(&s.base);
    let sc = scope("DEVICE0001");

    // Unknown client and unregistered redirect URI: an error page, never a redirect.
    let page = b.get(&authorize_path("no-such-client", &challenge, &sc, &[]));
    assert_eq!(page.status, 400);
    assert!(page.header("location").is_none());
    assert!(page.text.contains("not registered"), "{}", page.text);
    let path = format!(
        "/_hearth/oauth2/authorize?{}",
        form(&[
            ("response_type", "code"),
            ("client_id", &client_id),
            ("redirect_uri", "https://evil.example.net/cb"),
            ("scope", &sc),
            ("code_challenge", &challenge),
            ("code_challenge_method", "S256"),
        ])
    );
    let page = b.get(&path);
    assert_eq!(page.status, 400);
    assert!(page.header("location").is_none());

    // The rest redirect back with the error and the state.
    let redirected = |extra: &[(&str, &str)], scope: &str, challenge: &str| {
        let mut b = Browser::new(&s.base);
        let loc = location(&b.get(&authorize_path(&client_id, challenge, scope, extra)));
        assert!(loc.starts_with(REDIRECT), "{loc}");
        let q = query_of(&loc);
        assert_eq!(q["state"], "st4te");
        assert!(!q.contains_key("code"));
        q["error"].clone()
    };
    let plain = authorize_path(&client_id, &challenge, &sc, &[]).replace("method=S256", "method=plain");
    let q = query_of(&location(&b.get(&plain)));
    assert_eq!((q["error"].as_str(), q["state"].as_str()), ("invalid_request", "st4te"));
    let no_method = authorize_path(&client_id, &challenge, &sc, &[]).replace("&code_challenge_method=S256", "");
    assert_eq!(query_of(&location(&b.get(&no_method)))["error"], "invalid_request");
    assert_eq!(redirected(&[], &sc, "short"), "invalid_request");
    assert_eq!(redirected(&[], "urn:matrix:client:api:*", &challenge), "invalid_scope");
    assert_eq!(
        redirected(&[], "openid urn:matrix:client:device:ABCDEFGHIJ", &challenge),
        "invalid_scope"
    );
    let path = authorize_path(&client_id, &challenge, &sc, &[]).replace("response_type=code", "response_type=token");
    let q = query_of(&location(&b.get(&path)));
    assert_eq!(q["error"], "unsupported_response_type");

    // Denying consent redirects with access_denied.
    s.user("alice", "secret-pw");
    let consent = location(&b.get(&authorize_path(&client_id, &challenge, &sc, &[])));
    let login = b.get(&consent);
    location(&b.post(
        "/_hearth/account/login",
        &[
            ("csrf", &hidden(&login.text, "csrf")),
            ("next", &consent),
            ("username", "alice"),
            ("password", "secret-pw"),
        ],
    ));
    let page = b.get(&consent);
    let denied = location(&b.post(
        "/_hearth/oauth2/consent",
        &[
            ("csrf", &hidden(&page.text, "csrf")),
            ("request", &hidden(&page.text, "request")),
            ("action", "deny"),
        ],
    ));
    let q = query_of(&denied);
    assert_eq!(q["error"], "access_denied");
    assert_eq!(q["state"], "st4te");
    // The request is used up.
    assert_eq!(b.get(&consent).status, 400);
}

#[test]
fn oauth_pages_check_csrf_and_passwords() {
    let s = TestServer::start();
    let c = s.client();
    s.user("alice", "secret-pw");
    let client_id = code_client(&c);
    let (_, challenge) = pkce();
    let mut b = Browser::new(&s.base);
    let consent = location(&b.get(&authorize_path(&client_id, &challenge, &scope("CSRFDEV001"), &[])));
    let login = b.get(&consent);
    let csrf = hidden(&login.text, "csrf");
    assert!(
        login
            .header("content-security-policy")
            .unwrap()
            .contains("default-src 'none'")
    );
    assert_eq!(login.header("x-frame-options"), Some("DENY"));

    // Wrong, missing, or another browser's CSRF token.
    for token in ["wrong", ""] {
        let resp = b.post(
            "/_hearth/account/login",
            &[
                ("csrf", token),
                ("next", &consent),
                ("username", "alice"),
                ("password", "secret-pw"),
            ],
        );
        assert_eq!(resp.status, 403, "{}", resp.text);
        assert!(resp.text.contains("CSRF"));
    }
    let mut other = Browser::new(&s.base);
    other.get("/_hearth/account/login");
    let resp = other.post(
        "/_hearth/account/login",
        &[
            ("csrf", &csrf),
            ("next", &consent),
            ("username", "alice"),
            ("password", "secret-pw"),
        ],
    );
    assert_eq!(resp.status, 403);
    // No cookie at all.
    let mut bare = Browser::new(&s.base);
    let resp = bare.post(
        "/_hearth/account/login",
        &[("csrf", &csrf), ("username", "alice"), ("password", "x")],
    );
    assert_eq!(resp.status, 403);

    // Wrong password: the form again with an error, not signed in.
    let resp = b.post(
        "/_hearth/account/login",
        &[
            ("csrf", &csrf),
            ("next", &consent),
            ("username", "alice"),
            ("password", "nope"),
        ],
    );
    assert_eq!(resp.status, 401);
    assert!(resp.text.contains("role=\"alert\""), "{}", resp.text);
    assert!(b.get(&consent).text.contains("<label for=\"password\">"));
    // Consent without being signed in is refused.
    let resp = b.post(
        "/_hearth/oauth2/consent",
        &[("csrf", &csrf), ("action", "allow"), ("request", "x")],
    );
    assert_eq!(resp.status, 403);

    // A CSRF mismatch on the consent form issues no code.
    let cookie_before = b.cookie.clone();
    let resp = b.post(
        "/_hearth/account/login",
        &[
            ("csrf", &csrf),
            ("next", &consent),
            ("username", "alice"),
            ("password", "secret-pw"),
        ],
    );
    location(&resp);
    assert_ne!(b.cookie, cookie_before, "signing in replaces the session cookie");
    let page = b.get(&consent);
    let resp = b.post(
        "/_hearth/oauth2/consent",
        &[
            ("csrf", &csrf),
            ("request", &hidden(&page.text, "request")),
            ("action", "allow"),
        ],
    );
    assert_eq!(resp.status, 403, "the pre-sign-in token is no longer valid");
    assert!(resp.header("location").is_none());
}

#[test]
fn oauth_password_form_is_brute_force_limited() {
    let s = TestServer::start_with(&[
        ("HEARTH_RATE_LIMITS__ENABLED", "true"),
        ("HEARTH_RATE_LIMITS__LOGIN__BURST", "3.0"),
        ("HEARTH_RATE_LIMITS__LOGIN__PER_SECOND", "0.001"),
    ]);
    s.user("alice", "secret-pw");
    let mut b = Browser::new(&s.base);
    let page = b.get("/_hearth/account/login");
    let csrf = hidden(&page.text, "csrf");
    let attempt = |b: &mut Browser, pw: &str| {
        b.post(
            "/_hearth/account/login",
            &[("csrf", &csrf), ("username", "alice"), ("password", pw)],
        )
        .status
    };
    for _ in 0..3 {
        assert_eq!(attempt(&mut b, "guess"), 401);
    }
    assert_eq!(attempt(&mut b, "guess"), 429);
    // Even the right password waits now.
    assert_eq!(attempt(&mut b, "secret-pw"), 429);
}

#[test]
fn oauth_expired_code_is_invalid_grant() {
    let s = TestServer::start_with(&[("HEARTH_OAUTH__CODE_LIFETIME_SECS", "1")]);
    let c = s.client();
    s.user("alice", "secret-pw");
    let mut b = Browser::new(&s.base);
    let (client_id, verifier, code) = get_code(&s, &mut b, "EXPIRED001");
    std::thread::sleep(Duration::from_millis(1500));
    expect_oauth_error(&exchange(&c, &client_id, &code, &verifier), "invalid_grant");
}

fn signup(s: &TestServer, token: Option<&str>, username: &str) -> (Browser, Resp, String, String) {
    let c = s.client();
    let client_id = code_client(&c);
    let (verifier, challenge) = pkce();
    let mut b = Browser::new(&s.base);
    let path = authorize_path(&client_id, &challenge, &scope("SIGNUPDEV1"), &[("prompt", "create")]);
    let signup = location(&b.get(&path));
    assert!(signup.starts_with("/_hearth/account/register?next="), "{signup}");
    let page = b.get(&signup);
    assert_eq!(page.status, 200);
    assert_eq!(page.text.contains("name=\"token\""), token.is_some(), "{}", page.text);
    let mut fields = vec![
        ("csrf", hidden(&page.text, "csrf")),
        ("next", hidden(&page.text, "next")),
        ("username", username.to_owned()),
        ("password", "new-secret".to_owned()),
    ];
    if let Some(t) = token {
        fields.push(("token", t.to_owned()));
    }
    let refs: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let resp = b.post("/_hearth/account/register", &refs);
    (b, resp, client_id, verifier)
}

#[test]
fn oauth_prompt_create_signs_up_in_open_mode() {
    let s = TestServer::start();
    let c = s.client();
    let (mut b, resp, client_id, verifier) = signup(&s, None, "bob");
    let consent = location(&resp);
    let code = code_of(&consent_allow(&mut b, &consent));
    let tokens = exchange(&c, &client_id, &code, &verifier).ok().clone();
    assert_eq!(
        whoami(&c, tokens["access_token"].as_str().unwrap()).ok()["user_id"],
        "@bob:hearth.test"
    );
    // A taken name shows the form again with the error.
    let (_, resp, _, _) = signup(&s, None, "bob");
    assert_eq!(resp.status, 400);
    assert!(resp.text.contains("role=\"alert\""));

    // Closed: no sign-up page; prompt=create falls back to sign-in.
    let closed = TestServer::start_with(&[("HEARTH_REGISTRATION__MODE", "closed")]);
    let mut b = Browser::new(&closed.base);
    assert_eq!(b.get("/_hearth/account/register").status, 403);
    let page = b.get("/_hearth/account/login");
    let resp = b.post(
        "/_hearth/account/register",
        &[
            ("csrf", &hidden(&page.text, "csrf")),
            ("username", "eve"),
            ("password", "x"),
        ],
    );
    assert_eq!(resp.status, 403);
    let client_id = code_client(&closed.client());
    let (_, challenge) = pkce();
    let loc = location(&b.get(&authorize_path(
        &client_id,
        &challenge,
        &scope("SIGNUPDEV1"),
        &[("prompt", "create")],
    )));
    assert!(loc.starts_with("/_hearth/oauth2/consent"), "{loc}");
}

#[test]
fn oauth_prompt_create_in_token_mode_needs_a_token() {
    let s = TestServer::unstarted(&[("HEARTH_REGISTRATION__MODE", "token")]);
    let out = s.admin(
        &["registration-token", "create", "--token", "letmein", "--uses", "1"],
        None,
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut s = s;
    s.launch();
    let (_, resp, _, _) = signup(&s, Some("wrong"), "carol");
    assert_eq!(resp.status, 403, "{}", resp.text);
    let (_, resp, _, _) = signup(&s, Some("letmein"), "carol");
    assert!(location(&resp).starts_with("/_hearth/oauth2/consent"));
    // Used up.
    let (_, resp, _, _) = signup(&s, Some("letmein"), "dave");
    assert_eq!(resp.status, 403);
    s.client().login_with("carol", "new-secret", json!({})).ok();
}

fn device_start(c: &Client, client_id: &str, device: &str) -> Value {
    let resp = c.raw(
        "POST",
        "/_hearth/oauth2/device",
        Some(form(&[("client_id", client_id), ("scope", &scope(device))]).as_bytes()),
        Some(FORM),
    );
    resp.ok().clone()
}

fn device_poll(c: &Client, client_id: &str, device_code: &str) -> Resp {
    token(
        c,
        &[
            ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
            ("device_code", device_code),
            ("client_id", client_id),
        ],
    )
}

/// Signs a browser in on the device page of `user_code`; returns it with the page it then sees.
fn device_sign_in(s: &TestServer, user_code: &str) -> (Browser, Resp) {
    let mut b = Browser::new(&s.base);
    let page_path = format!("/_hearth/account/device?{}", form(&[("user_code", user_code)]));
    let login = b.get(&page_path);
    assert!(login.text.contains("Sign in to connect"), "{}", login.text);
    let next = location(&b.post(
        "/_hearth/account/login",
        &[
            ("csrf", &hidden(&login.text, "csrf")),
            ("next", &hidden(&login.text, "next")),
            ("username", "alice"),
            ("password", "secret-pw"),
        ],
    ));
    let page = b.get(&next);
    (b, page)
}

/// Signs a browser in on the device page and answers the code.
fn device_answer(s: &TestServer, user_code: &str, action: &str) -> Resp {
    let (mut b, page) = device_sign_in(s, user_code);
    assert!(page.text.contains("Allow access?"), "{}", page.text);
    b.post(
        "/_hearth/account/device",
        &[
            ("csrf", &hidden(&page.text, "csrf")),
            ("user_code", user_code),
            ("action", action),
        ],
    )
}

#[test]
fn oauth_device_grant_pending_approved_denied() {
    let s = TestServer::start();
    let c = s.client();
    s.user("alice", "secret-pw");
    let client_id = register_client(&c, &["urn:ietf:params:oauth:grant-type:device_code", "refresh_token"]);
    // A client that did not register for the grant.
    let code_only = code_client(&c);
    let resp = c.raw(
        "POST",
        "/_hearth/oauth2/device",
        Some(form(&[("client_id", &code_only), ("scope", &scope("TVDEVICE01"))]).as_bytes()),
        Some(FORM),
    );
    expect_oauth_error(&resp, "unauthorized_client");

    let start = device_start(&c, &client_id, "TVDEVICE01");
    assert!(
        start["verification_uri"]
            .as_str()
            .unwrap()
            .ends_with("/_hearth/account/device")
    );
    assert!(
        start["verification_uri_complete"]
            .as_str()
            .unwrap()
            .contains("user_code=")
    );
    assert_eq!(start["interval"], 5);
    let device_code = start["device_code"].as_str().unwrap();
    let user_code = start["user_code"].as_str().unwrap();
    expect_oauth_error(&device_poll(&c, &client_id, device_code), "authorization_pending");
    expect_oauth_error(&device_poll(&c, &client_id, device_code), "slow_down");
    expect_oauth_error(&device_poll(&c, &code_only, device_code), "invalid_grant");

    let done = device_answer(&s, user_code, "allow");
    assert_eq!(done.status, 200);
    assert!(done.text.contains("being signed in"));
    let tokens = device_poll(&c, &client_id, device_code).ok().clone();
    assert_eq!(
        whoami(&c, tokens["access_token"].as_str().unwrap()).ok()["device_id"],
        "TVDEVICE01"
    );
    expect_oauth_error(&device_poll(&c, &client_id, device_code), "invalid_grant");
    // The code cannot be answered twice; an unknown code is said to be so.
    let (_, page) = device_sign_in(&s, user_code);
    assert!(page.text.contains("unknown or has expired"), "{}", page.text);
    let (_, page) = device_sign_in(&s, "BCDF-GHJK");
    assert!(page.text.contains("unknown or has expired"), "{}", page.text);

    // Denied.
    let start = device_start(&c, &client_id, "TVDEVICE02");
    let device_code = start["device_code"].as_str().unwrap();
    assert_eq!(
        device_answer(&s, start["user_code"].as_str().unwrap(), "deny").status,
        200
    );
    expect_oauth_error(&device_poll(&c, &client_id, device_code), "access_denied");
}

#[test]
fn oauth_device_grant_expires() {
    let s = TestServer::start_with(&[("HEARTH_OAUTH__DEVICE_CODE_LIFETIME_SECS", "1")]);
    let c = s.client();
    let client_id = register_client(&c, &["urn:ietf:params:oauth:grant-type:device_code"]);
    let start = device_start(&c, &client_id, "TVDEVICE03");
    assert_eq!(start["expires_in"], 1);
    std::thread::sleep(Duration::from_millis(1500));
    let resp = device_poll(&c, &client_id, start["device_code"].as_str().unwrap());
    assert!(
        matches!(resp.body["error"].as_str(), Some("expired_token" | "invalid_grant")),
        "{}",
        resp.text
    );
}

#[test]
fn oauth_account_page_lists_and_signs_out_devices() {
    let s = TestServer::start();
    let c = s.client();
    let mut alice = s.user("alice", "secret-pw");
    let device = alice.device_id.clone().unwrap();
    let mut b = Browser::new(&s.base);
    let path = format!("/_hearth/account/?action=org.matrix.device_delete&device_id={device}");
    let login = b.get(&path);
    let next = location(&b.post(
        "/_hearth/account/login",
        &[
            ("csrf", &hidden(&login.text, "csrf")),
            ("next", &hidden(&login.text, "next")),
            ("username", "alice"),
            ("password", "secret-pw"),
        ],
    ));
    assert_eq!(next, path);
    let page = b.get(&next);
    assert!(page.text.contains("Sign out this session?"), "{}", page.text);
    assert!(page.text.contains(&device));
    let resp = b.post(
        "/_hearth/account/devices/delete",
        &[("csrf", &hidden(&page.text, "csrf")), ("device_id", &device)],
    );
    assert!(location(&resp).starts_with("/_hearth/account/"));
    alice.whoami().expect_err(401, "M_UNKNOWN_TOKEN");

    // Change password.
    let page = b.get("/_hearth/account/");
    let resp = b.post(
        "/_hearth/account/password",
        &[
            ("csrf", &hidden(&page.text, "csrf")),
            ("current", "secret-pw"),
            ("new", "better-pw"),
        ],
    );
    location(&resp);
    c.login_with("alice", "better-pw", json!({})).ok();
    alice.token = None;
    let _ = alice.login("alice", "better-pw");
}

#[test]
fn oauth_native_redirect_uris_private_scheme_and_loopback_any_port() {
    let s = TestServer::start();
    let c = s.client();
    s.user("alice", "secret-pw");
    let resp = c.post(
        "/_hearth/oauth2/register",
        json!({
            "client_name": "Element X",
            "client_uri": "https://element.io",
            "redirect_uris": ["io.element.elementx:/", "http://127.0.0.1/callback"],
            "application_type": "native",
            "grant_types": ["authorization_code", "refresh_token"],
        }),
    );
    assert_eq!(resp.status, 201, "{}", resp.text);
    let client_id = resp.body["client_id"].as_str().unwrap().to_owned();
    let mut b = Browser::new(&s.base);
    for (i, redirect) in ["io.element.elementx:/", "http://127.0.0.1:5555/callback"]
        .into_iter()
        .enumerate()
    {
        let (verifier, challenge) = pkce();
        let device = format!("NATIVEDEV{i}");
        let path = format!(
            "/_hearth/oauth2/authorize?{}",
            form(&[
                ("response_type", "code"),
                ("client_id", &client_id),
                ("redirect_uri", redirect),
                ("scope", &scope(&device)),
                ("state", "st4te"),
                ("code_challenge", &challenge),
                ("code_challenge_method", "S256"),
            ])
        );
        let consent = location(&b.get(&path));
        if b.get(&consent).text.contains("<label for=\"password\">") {
            let login = b.get(&consent);
            location(&b.post(
                "/_hearth/account/login",
                &[
                    ("csrf", &hidden(&login.text, "csrf")),
                    ("next", &consent),
                    ("username", "alice"),
                    ("password", "secret-pw"),
                ],
            ));
        }
        let back = consent_allow(&mut b, &consent);
        assert!(back.starts_with(redirect), "{back}");
        let code = query_of(&back)["code"].clone();
        let tokens = token(
            &c,
            &[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", redirect),
                ("client_id", &client_id),
                ("code_verifier", &verifier),
            ],
        )
        .ok()
        .clone();
        assert_eq!(
            whoami(&c, tokens["access_token"].as_str().unwrap()).ok()["device_id"],
            device.as_str()
        );
    }
    // A loopback URI on another path, or https on loopback, is not registered.
    let (_, challenge) = pkce();
    for redirect in [
        "http://127.0.0.1:5555/other",
        "https://127.0.0.1:5555/callback",
        "http://localhost:5555/callback",
    ] {
        let path = format!(
            "/_hearth/oauth2/authorize?{}",
            form(&[
                ("response_type", "code"),
                ("client_id", &client_id),
                ("redirect_uri", redirect),
                ("scope", &scope("NATIVEDEVX")),
                ("code_challenge", &challenge),
                ("code_challenge_method", "S256"),
            ])
        );
        let page = b.get(&path);
        assert_eq!(page.status, 400, "{redirect}");
    }
}
