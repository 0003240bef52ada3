//! Acceptance test of Hearth with matrix-rust-sdk, the core of Element X (the `matrix-sdk` and
//! `matrix-sdk-ui` crates, configured as Element X uses them).
//!
//! Usage: `hearth-rust-sdk-test HOMESERVER_URL` (loopback only).
//!
//! 1. alice and bob each sign up through the OAuth 2.0 flow: the SDK discovers the server
//!    metadata, registers a native client and builds the authorization URL with
//!    `prompt=create`; this program plays the browser (it reads Hearth's sign-up and consent
//!    pages and posts their forms, cookie and CSRF token included) until Hearth redirects to
//!    the client's loopback redirect URI with a code, which the SDK exchanges
//!    (`finish_login`). `whoami` then answers with the new account.
//! 2. Both start the `SyncService` (simplified sliding sync: the room-list connection and the
//!    encryption connection) and wait for the `RoomListService` to load.
//! 3. alice creates an encrypted room and invites bob; bob sees the invite in his room list
//!    and joins; alice sees him joined.
//! 4. bob sends a message: alice's client receives it, and the room's notification count
//!    (from the server) rises; alice sends a read receipt for it and the count clears.
//! 5. alice sends an encrypted message; bob's client decrypts it.
//!
//! Each step prints `ok: <step>`; the first failure prints `FAIL: <step>: <why>` and the
//! program exits 1. Every wait is bounded.

use std::{
    collections::HashMap,
    net::IpAddr,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, bail};
use matrix_sdk::{
    Client, RoomState,
    authentication::oauth::{
        ClientRegistrationData,
        registration::{ApplicationType, ClientMetadata, Localized, OAuthGrantType},
    },
    ruma::{
        OwnedEventId, OwnedRoomId, RoomId,
        api::client::{
            discovery::get_authorization_server_metadata::v1::Prompt,
            receipt::create_receipt::v3::ReceiptType,
            room::create_room::v3::Request as CreateRoomRequest,
        },
        events::{
            AnySyncTimelineEvent, InitialStateEvent, receipt::ReceiptThread,
            room::{encryption::RoomEncryptionEventContent, message::RoomMessageEventContent},
        },
        serde::Raw,
    },
};
use matrix_sdk_ui::sync_service::SyncService;
use url::Url;

const WAIT: Duration = Duration::from_secs(30);

fn ok(step: &str) {
    println!("ok: {step}");
}

/// Polls `check` every 200 ms until it gives `Some`, at most `WAIT`.
async fn wait_for<T, F, Fut>(what: &str, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(value) = check().await? {
            return Ok(value);
        }
        if Instant::now() > deadline {
            bail!("timed out after {}s waiting for {what}", WAIT.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// The browser: GET pages, keep the session cookie, post forms, follow redirects by hand.

struct Browser {
    http: reqwest::Client,
    cookies: HashMap<String, String>,
}

/// A form on a page: where it posts and its hidden and visible fields.
struct Form {
    action: String,
    fields: Vec<(String, String)>,
    buttons: Vec<(String, String)>,
}

impl Browser {
    fn new() -> Result<Self> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(15))
            .build()?;
        Ok(Browser { http, cookies: HashMap::new() })
    }

    fn cookie_header(&self) -> String {
        self.cookies.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("; ")
    }

    fn keep_cookies(&mut self, response: &reqwest::Response) {
        for value in response.headers().get_all(reqwest::header::SET_COOKIE) {
            let Ok(text) = value.to_str() else { continue };
            if let Some((name, rest)) = text.split_once('=') {
                let value = rest.split(';').next().unwrap_or("").to_owned();
                self.cookies.insert(name.trim().to_owned(), value);
            }
        }
    }

    /// Sends a request; (status, Location header resolved against the URL, body).
    async fn send(&mut self, request: reqwest::RequestBuilder, url: &Url) -> Result<(u16, Option<Url>, String)> {
        let response = request.header(reqwest::header::COOKIE, self.cookie_header()).send().await?;
        self.keep_cookies(&response);
        let status = response.status().as_u16();
        let location = response
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|l| l.to_str().ok())
            .map(|l| url.join(l))
            .transpose()?;
        Ok((status, location, response.text().await?))
    }

    /// Follows the browser's path from `url` until a redirect leaves for `stop_prefix` (the
    /// client's redirect URI), filling in each form with `answer`. The final URL.
    async fn drive(&mut self, mut url: Url, stop_prefix: &str, answer: &dyn Fn(&str, &Form) -> Option<Vec<(String, String)>>) -> Result<Url> {
        let mut body: Option<(Url, Vec<(String, String)>)> = None;
        for _ in 0..12 {
            if url.as_str().starts_with(stop_prefix) {
                return Ok(url);
            }
            let (status, location, page) = match body.take() {
                None => self.send(self.http.get(url.clone()), &url).await?,
                Some((action, fields)) => self.send(self.http.post(action.clone()).form(&fields), &action).await?,
            };
            if let Some(next) = location.filter(|_| (300..400).contains(&status)) {
                url = next;
                continue;
            }
            if status != 200 {
                bail!("{url} answered {status}: {}", page.chars().take(300).collect::<String>());
            }
            let form = parse_form(&page).with_context(|| format!("no form on the page at {url}"))?;
            let fields = answer(&page, &form).with_context(|| format!("don't know how to fill the form on {url}"))?;
            let action = url.join(&form.action)?;
            body = Some((action.clone(), fields));
            url = action;
        }
        bail!("too many pages before reaching the redirect URI")
    }
}

/// The attribute `name` of a tag's text (`<input name="x" value="y">`).
fn attribute(tag: &str, name: &str) -> Option<String> {
    let needle = format!(" {name}=\"");
    let start = tag.find(&needle)? + needle.len();
    let end = tag[start..].find('"')? + start;
    Some(html_unescape(&tag[start..end]))
}

fn html_unescape(text: &str) -> String {
    text.replace("&quot;", "\"").replace("&#39;", "'").replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
}

/// The first form with `method="post"` on the page.
fn parse_form(page: &str) -> Option<Form> {
    let start = page.find("<form method=\"post\"")?;
    let end = page[start..].find("</form>")? + start;
    let html = &page[start..end];
    let action = attribute(&html[..html.find('>')?], "action")?;
    let mut fields = Vec::new();
    let mut buttons = Vec::new();
    for (kind, list) in [("<input", &mut fields), ("<button", &mut buttons)] {
        let mut rest = html;
        while let Some(at) = rest.find(kind) {
            let tag = &rest[at..at + rest[at..].find('>').unwrap_or(rest.len() - at)];
            if let Some(name) = attribute(tag, "name") {
                list.push((name, attribute(tag, "value").unwrap_or_default()));
            }
            rest = &rest[at + kind.len()..];
        }
    }
    Some(Form { action, fields, buttons })
}

// ---------------------------------------------------------------------------------------------
// Sign-up through OAuth.

const PASSWORD: &str = "rust sdk test password 42";

/// A client for `hs`, signed up as `username` through the OAuth flow (prompt=create).
async fn sign_up(hs: &Url, username: &str) -> Result<Client> {
    let client = Client::builder().homeserver_url(hs.as_str()).handle_refresh_tokens().build().await?;
    let oauth = client.oauth();
    oauth.server_metadata().await.context("the SDK reads the server's OAuth metadata")?;
    let redirect_uri = Url::parse(&format!("http://127.0.0.1:{}/callback", hs.port().unwrap_or(80)))?;
    let metadata = ClientMetadata::new(
        ApplicationType::Native,
        vec![OAuthGrantType::AuthorizationCode { redirect_uris: vec![Url::parse("http://127.0.0.1/callback")?] }],
        Localized::new(Url::parse("https://example.org/")?, []),
    );
    let registration = ClientRegistrationData::new(Raw::new(&metadata)?);
    let auth = oauth
        .login(redirect_uri.clone(), None, Some(registration), None)
        .prompt(vec![Prompt::Create])
        .build()
        .await
        .context("the SDK registers its client and builds the authorization URL")?;
    let mut browser = Browser::new()?;
    let answer = |_page: &str, form: &Form| -> Option<Vec<(String, String)>> {
        let names: Vec<&str> = form.fields.iter().map(|(n, _)| n.as_str()).collect();
        let mut fields: Vec<(String, String)> = form.fields.clone();
        if names.contains(&"username") && names.contains(&"password") {
            for (name, value) in &mut fields {
                match name.as_str() {
                    "username" => *value = username.to_owned(),
                    "password" => *value = PASSWORD.to_owned(),
                    _ => {}
                }
            }
            Some(fields)
        } else {
            // The consent page: press Allow.
            let allow = form.buttons.iter().find(|(_, v)| v == "allow")?;
            fields.push(allow.clone());
            Some(fields)
        }
    };
    let landed = browser.drive(auth.url.clone(), redirect_uri.as_str(), &answer).await?;
    if !landed.query_pairs().any(|(k, _)| k == "code") {
        bail!("the redirect carries no code: {landed}");
    }
    oauth.finish_login(landed.into()).await.context("the SDK exchanges the code for tokens")?;
    Ok(client)
}

// ---------------------------------------------------------------------------------------------

async fn start_sync(client: &Client, who: &str) -> Result<SyncService> {
    let sync = SyncService::builder(client.clone()).build().await?;
    sync.start().await;
    let list = sync.room_list_service().all_rooms().await?;
    let state = list.loading_state();
    wait_for(&format!("{who}'s room list to load"), || {
        let loaded = matches!(state.get(), matrix_sdk_ui::room_list_service::RoomListLoadingState::Loaded { .. });
        async move { Ok(loaded.then_some(())) }
    })
    .await?;
    Ok(sync)
}

fn latest_body(event: &matrix_sdk::deserialized_responses::TimelineEvent) -> Option<String> {
    let raw: Raw<AnySyncTimelineEvent> = event.raw().clone();
    let value: serde_json::Value = raw.deserialize_as().ok()?;
    value["content"]["body"].as_str().map(str::to_owned)
}

async fn run(hs: Url) -> Result<()> {
    let tag: String = format!("{:x}", std::process::id() ^ (Instant::now().elapsed().as_nanos() as u32));
    let mut step = "1. alice signs up through OAuth (prompt=create) and the SDK logs in".to_owned();
    let alice = sign_up(&hs, &format!("alice_rs_{tag}")).await.context(step.clone())?;
    let me = alice.whoami().await.context("whoami")?;
    if me.user_id.localpart() != format!("alice_rs_{tag}") {
        bail!("{step}: whoami says {}", me.user_id);
    }
    ok(&step);
    step = "1. bob signs up through OAuth".to_owned();
    let bob = sign_up(&hs, &format!("bob_rs_{tag}")).await.context(step.clone())?;
    let bob_id = bob.user_id().context("bob's user id")?.to_owned();
    ok(&step);

    step = "2. both start the SyncService (sliding sync) and their room lists load".to_owned();
    let alice_sync = start_sync(&alice, "alice").await.context(step.clone())?;
    let bob_sync = start_sync(&bob, "bob").await.context(step.clone())?;
    ok(&step);

    step = "3. alice creates an encrypted room and invites bob; he sees the invite and joins".to_owned();
    let mut request = CreateRoomRequest::new();
    request.name = Some(format!("rust sdk {tag}"));
    request.invite = vec![bob_id.clone()];
    request.initial_state = vec![InitialStateEvent::with_empty_state_key(RoomEncryptionEventContent::with_recommended_defaults()).to_raw_any()];
    let room = alice.create_room(request).await.context(step.clone())?;
    let room_id: OwnedRoomId = room.room_id().to_owned();
    let bob_room = wait_for("the invite in bob's client", || {
        let room = bob.get_room(&room_id).filter(|r| r.state() == RoomState::Invited);
        async move { Ok(room) }
    })
    .await
    .context(step.clone())?;
    bob_room.join().await.context("bob joins")?;
    wait_for("bob joined, seen by alice (two joined members)", || {
        let count = alice.get_room(&room_id).map(|room| room.joined_members_count());
        async move { Ok(count.filter(|count| *count >= 2).map(|_| ())) }
    })
    .await
    .context(step.clone())?;
    ok(&step);

    step = "4. bob sends a message; alice receives it and her notification count rises".to_owned();
    let bob_room = bob.get_room(&room_id).context("bob's room")?;
    let sent = bob_room.send(RoomMessageEventContent::text_plain(format!("hello alice {tag}"))).await.context(step.clone())?;
    let bob_event: OwnedEventId = sent.response.event_id;
    let alice_room = alice.get_room(&room_id).context("alice's room")?;
    wait_for("a notification count of at least 1 in alice's room", || {
        let count = alice_room.unread_notification_counts().notification_count;
        async move { Ok((count >= 1).then_some(())) }
    })
    .await
    .context(step.clone())?;
    let received = alice_room.event(&bob_event, None).await.context("alice fetches bob's message")?;
    if latest_body(&received).as_deref() != Some(format!("hello alice {tag}").as_str()) {
        bail!("{step}: alice cannot read bob's message: {:?}", received.raw());
    }
    ok(&step);

    step = "4. alice reads it (read receipt) and the count clears".to_owned();
    alice_room
        .send_single_receipt(ReceiptType::Read, ReceiptThread::Unthreaded, bob_event.clone())
        .await
        .context(step.clone())?;
    wait_for("alice's notification count back to 0", || {
        let count = alice_room.unread_notification_counts().notification_count;
        async move { Ok((count == 0).then_some(())) }
    })
    .await
    .context(step.clone())?;
    ok(&step);

    step = "5. alice sends an encrypted message and bob's client decrypts it".to_owned();
    let secret = format!("the secret is {tag}");
    let sent = alice_room.send(RoomMessageEventContent::text_plain(secret.clone())).await.context(step.clone())?;
    let alice_event = sent.response.event_id;
    let raw_on_server = bob_room.event(&alice_event, None).await.context("bob fetches alice's message")?;
    let _ = raw_on_server;
    wait_for("bob to decrypt alice's message", || {
        let bob_room = bob_room.clone();
        let alice_event = alice_event.clone();
        let secret = secret.clone();
        async move {
            let event = bob_room.event(&alice_event, None).await?;
            Ok((event.encryption_info().is_some() && latest_body(&event).as_deref() == Some(secret.as_str())).then_some(()))
        }
    })
    .await
    .context(step.clone())?;
    ok(&step);

    alice_sync.stop().await;
    bob_sync.stop().await;
    let _ = RoomId::parse("!unused:example.org");
    Ok(())
}

fn main() {
    let Some(hs) = std::env::args().nth(1) else {
        eprintln!("usage: hearth-rust-sdk-test HOMESERVER_URL");
        std::process::exit(2);
    };
    let hs = match Url::parse(&hs) {
        Ok(url) => url,
        Err(e) => {
            eprintln!("bad URL {hs}: {e}");
            std::process::exit(2);
        }
    };
    let loopback = match hs.host() {
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        Some(url::Host::Domain(d)) => d == "localhost",
        None => false,
    };
    if !loopback {
        eprintln!("refusing non-loopback homeserver {hs}");
        std::process::exit(2);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let result = runtime.block_on(async { tokio::time::timeout(Duration::from_secs(240), run(hs)).await });
    match result {
        Ok(Ok(())) => println!("rust-sdk: all steps passed"),
        Ok(Err(e)) => {
            println!("FAIL: {e:#}");
            std::process::exit(1);
        }
        Err(_) => {
            println!("FAIL: timed out after 240 s");
            std::process::exit(1);
        }
    }
    let _ = anyhow!("");
}
