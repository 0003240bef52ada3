//! The built-in OAuth 2.0 authorization server of the Matrix OAuth 2.0 API (client-server API
//! "OAuth 2.0 API"): registered clients, pending authorization requests, authorization codes,
//! device authorizations, browser sessions of the sign-in pages and their CSRF tokens.
//!
//! Tokens are not new here: an authorization ends in an ordinary device with an access token
//! and a refresh token from [`super::sessions`], the device id taken from the
//! `urn:matrix:client:device:<id>` scope token, so the whole client-server API, `whoami`,
//! `/refresh`, logout and the device list treat them like any other. What this module keeps:
//!
//! - Clients (RFC 7591) are stored (`clientid_oauthclient`); their metadata is checked against
//!   the spec's rules (https `client_uri`; every other URI on its host or a subdomain; redirect
//!   URIs https on that base, a private-use scheme in the reverse-DNS form of its host, or
//!   `http` on a loopback host without a port, which then matches any port).
//! - Pending authorization requests, codes and device authorizations live in memory, bounded,
//!   and expire: losing them on restart costs the user one more sign-in. A code is single use
//!   and bound to its client, redirect URI and PKCE challenge (S256 only); presenting it again
//!   fails and revokes the device it issued (OAuth 2.0 security BCP).
//! - Browser sessions: a random cookie, stored as its SHA-256, names the signed-in user for 12
//!   hours. Every form carries a CSRF token derived from the cookie and a per-process secret,
//!   so no state is kept for visitors who are not signed in.
//!
//! `rules.rs` checks scopes and redirect URIs; `device.rs` is the device authorization grant.

use std::{
    collections::BTreeSet,
    sync::Arc,
    time::{Duration, Instant},
};

use base64::Engine;
use ruma::{OwnedDeviceId, OwnedUserId};
use url::Url;

use crate::{
    Error,
    config::Config,
    storage::{
        Db,
        tables::oauth_clients::{OAuthClientRecord, OAuthClientsTable},
    },
    util::{
        self,
        bounded::{BoundedMap, Evict},
    },
};

mod device;
mod rules;

use self::device::{DeviceGrant, UserCode};
use self::rules::{check_redirect_uri, is_loopback_host, on_host};
pub use self::{
    device::{DeviceAuthorization, PendingDevice},
    rules::{Scope, parse_scope},
};

/// The grant type of RFC 8628.
pub const DEVICE_CODE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

/// Pending authorization requests, codes, device authorizations, browser sessions: each map
/// holds at most this many.
const MAX_PENDING: usize = 10_000;
/// How long a pending authorization request (sign-in in progress) lives.
const REQUEST_LIFETIME: Duration = Duration::from_secs(3600);
/// How long a browser stays signed in to the account pages.
const BROWSER_SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);

/// An error with the name OAuth gives it (RFC 6749 §5.2 and friends), or any other failure.
#[derive(Debug)]
pub enum OAuthError {
    /// `{"error": code, "error_description": description}` with 400.
    OAuth {
        /// The RFC's error code (`invalid_grant`, …).
        code: &'static str,
        /// For humans.
        description: String,
    },
    /// A failure of the server or a Matrix error.
    Other(Error),
}

impl From<Error> for OAuthError {
    fn from(e: Error) -> Self {
        OAuthError::Other(e)
    }
}

impl From<crate::storage::StorageError> for OAuthError {
    fn from(e: crate::storage::StorageError) -> Self {
        OAuthError::Other(e.into())
    }
}

fn oauth(code: &'static str, description: impl Into<String>) -> OAuthError {
    OAuthError::OAuth {
        code,
        description: description.into(),
    }
}

/// What an OAuth endpoint answers with.
pub type OAuthResult<T> = std::result::Result<T, OAuthError>;

/// A client as the pages and endpoints need it.
#[derive(Clone, Debug)]
pub struct Client {
    /// Its id.
    pub client_id: String,
    /// What is stored.
    pub record: OAuthClientRecord,
}

impl Client {
    /// The name to show: `client_name`, else the host of `client_uri`.
    pub fn display_name(&self) -> String {
        self.record.client_name.clone().unwrap_or_else(|| {
            Url::parse(&self.record.client_uri)
                .ok()
                .and_then(|u| u.host_str().map(str::to_owned))
                .unwrap_or_else(|| self.client_id.clone())
        })
    }

    fn may_use(&self, grant_type: &str) -> bool {
        self.record.grant_types.iter().any(|g| g == grant_type)
    }

    /// Whether `redirect_uri` is one of the registered ones; a registered `http` loopback URI
    /// matches with any port.
    pub fn redirect_uri_allowed(&self, redirect_uri: &str) -> bool {
        if self.record.redirect_uris.iter().any(|r| r == redirect_uri) {
            return true;
        }
        let Ok(mut asked) = Url::parse(redirect_uri) else {
            return false;
        };
        if asked.scheme() != "http" || !is_loopback_host(&asked) || asked.port().is_none() {
            return false;
        }
        let _ = asked.set_port(None);
        self.record
            .redirect_uris
            .iter()
            .filter_map(|r| Url::parse(r).ok())
            .any(|r| r == asked)
    }
}

/// A validated authorization request, waiting for the user.
#[derive(Clone, Debug)]
pub struct AuthRequest {
    /// The client.
    pub client: Client,
    /// Where to send the answer.
    pub redirect_uri: String,
    /// The client's `state`, returned as given.
    pub state: Option<String>,
    /// Answer in the fragment instead of the query.
    pub fragment: bool,
    /// The scope asked for.
    pub scope: Scope,
    /// The PKCE S256 challenge.
    pub code_challenge: String,
    /// `prompt=create`: the user wants to sign up.
    pub prompt_create: bool,
    /// `login_hint=mxid:@user:server`: the user id to fill in.
    pub login_hint: Option<String>,
    expires: Instant,
}

impl Evict for AuthRequest {
    fn stale(&self, now: Instant) -> bool {
        self.expires <= now
    }
}

impl AuthRequest {
    /// The redirect carrying `params` (and the state) in the query or fragment.
    pub fn redirect_with(&self, params: &[(&str, &str)]) -> String {
        let mut url = match Url::parse(&self.redirect_uri) {
            Ok(url) => url,
            Err(_) => return self.redirect_uri.clone(),
        };
        let mut pairs: Vec<(&str, &str)> = params.to_vec();
        if let Some(state) = &self.state {
            pairs.push(("state", state));
        }
        if self.fragment {
            let encoded = url::form_urlencoded::Serializer::new(String::new())
                .extend_pairs(pairs)
                .finish();
            url.set_fragment(Some(&encoded));
        } else {
            url.query_pairs_mut().extend_pairs(pairs);
        }
        url.to_string()
    }
}

/// What the authorization endpoint's parameters were.
#[derive(Debug, Default)]
pub struct AuthParams {
    /// `response_type`.
    pub response_type: Option<String>,
    /// `client_id`.
    pub client_id: Option<String>,
    /// `redirect_uri`.
    pub redirect_uri: Option<String>,
    /// `scope`.
    pub scope: Option<String>,
    /// `state`.
    pub state: Option<String>,
    /// `response_mode`.
    pub response_mode: Option<String>,
    /// `code_challenge`.
    pub code_challenge: Option<String>,
    /// `code_challenge_method`.
    pub code_challenge_method: Option<String>,
    /// `prompt`.
    pub prompt: Option<String>,
    /// `login_hint`.
    pub login_hint: Option<String>,
}

/// How an authorization request failed.
#[derive(Debug)]
pub enum AuthorizeError {
    /// The client or redirect URI cannot be trusted: show the error, never redirect.
    Page(String),
    /// Redirect to the client with `error` (and the state).
    Redirect {
        /// Where to.
        location: String,
    },
    /// The server failed.
    Other(Error),
}

struct CodeEntry {
    request: AuthRequest,
    user_id: OwnedUserId,
    expires: Instant,
    state: CodeState,
}

#[derive(PartialEq)]
enum CodeState {
    Fresh,
    /// Exchanged; the device it issued once that is known, and whether it was presented again.
    Used {
        issued: Option<OwnedDeviceId>,
        replayed: bool,
    },
}

impl Evict for CodeEntry {
    fn stale(&self, now: Instant) -> bool {
        // A used code is kept until it would have expired, so a replay is recognised.
        self.expires + Duration::from_secs(600) <= now
    }
}

/// What a code exchange yields before tokens are issued.
#[derive(Debug)]
pub struct Exchange {
    /// The code's hash, to report the issued device with [`OAuth::code_issued`].
    pub code_hash: [u8; 32],
    /// The user who consented.
    pub user_id: OwnedUserId,
    /// The scope granted.
    pub scope: Scope,
    /// The client's name (the new device's display name).
    pub client_name: String,
    /// The client the tokens are issued to (its refresh tokens are good for it only).
    pub client_id: String,
}

struct BrowserSession {
    user_id: OwnedUserId,
    expires: Instant,
}

impl Evict for BrowserSession {
    fn stale(&self, now: Instant) -> bool {
        self.expires <= now
    }
}

/// The service.
pub struct OAuth {
    db: Arc<Db>,
    clients: OAuthClientsTable,
    config: Arc<Config>,
    /// Keys the CSRF tokens; new at every start.
    secret: String,
    requests: BoundedMap<String, AuthRequest>,
    codes: BoundedMap<[u8; 32], CodeEntry>,
    devices: BoundedMap<[u8; 32], DeviceGrant>,
    user_codes: BoundedMap<String, UserCode>,
    browsers: BoundedMap<[u8; 32], BrowserSession>,
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Compares two secrets without an early exit.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn is_pkce_string(s: &str) -> bool {
    (43..=128).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

impl OAuth {
    /// Builds the service.
    pub fn new(db: Arc<Db>, config: Arc<Config>) -> Self {
        Self {
            clients: OAuthClientsTable::new(Arc::clone(&db)),
            db,
            config,
            secret: util::random_string(43),
            requests: BoundedMap::new(MAX_PENDING),
            codes: BoundedMap::new(MAX_PENDING),
            devices: BoundedMap::new(MAX_PENDING),
            user_codes: BoundedMap::new(MAX_PENDING),
            browsers: BoundedMap::new(MAX_PENDING),
        }
    }

    /// Whether the OAuth 2.0 API is switched on.
    pub fn enabled(&self) -> bool {
        self.config.oauth.enabled
    }

    // ---- Clients ----

    /// Dynamic client registration (RFC 7591 with the Matrix spec's rules): the metadata
    /// accepted, with its new `client_id`.
    pub async fn register_client(&self, metadata: serde_json::Value) -> OAuthResult<serde_json::Value> {
        let serde_json::Value::Object(input) = metadata else {
            return Err(oauth("invalid_client_metadata", "The body must be a JSON object"));
        };
        let bad = |d: &str| oauth("invalid_client_metadata", d);
        let text = |key: &str| -> OAuthResult<Option<String>> {
            match input.get(key) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(oauth("invalid_client_metadata", format!("{key} must be a string"))),
            }
        };
        let list = |key: &str| -> OAuthResult<Option<Vec<String>>> {
            match input.get(key) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(serde_json::Value::Array(items)) => items
                    .iter()
                    .map(|i| {
                        i.as_str()
                            .map(str::to_owned)
                            .ok_or_else(|| oauth("invalid_client_metadata", format!("{key} must hold strings")))
                    })
                    .collect::<OAuthResult<Vec<_>>>()
                    .map(Some),
                Some(_) => Err(oauth("invalid_client_metadata", format!("{key} must be an array"))),
            }
        };
        let client_uri_text = text("client_uri")?.ok_or_else(|| bad("client_uri is required"))?;
        let client_uri = Url::parse(&client_uri_text).map_err(|_| bad("client_uri is not a valid URL"))?;
        if client_uri.scheme() != "https" || !client_uri.username().is_empty() || client_uri.password().is_some() {
            return Err(bad("client_uri must be an https URL without user or password"));
        }
        let base_host = client_uri
            .host_str()
            .ok_or_else(|| bad("client_uri has no host"))?
            .to_ascii_lowercase();
        let mut output = serde_json::Map::new();
        output.insert("client_uri".into(), client_uri_text.clone().into());
        for key in ["logo_uri", "tos_uri", "policy_uri"] {
            if let Some(value) = text(key)? {
                let url = Url::parse(&value).map_err(|_| bad(&format!("{key} is not a valid URL")))?;
                let host_ok = url
                    .host_str()
                    .is_some_and(|h| on_host(&h.to_ascii_lowercase(), &base_host));
                if url.scheme() != "https" || !url.username().is_empty() || url.password().is_some() || !host_ok {
                    return Err(bad(&format!(
                        "{key} must be an https URL on the host of client_uri or a subdomain"
                    )));
                }
                output.insert(key.into(), value.into());
            }
        }
        let client_name = text("client_name")?;
        if let Some(name) = &client_name {
            if name.chars().count() > 200 {
                return Err(bad("client_name is too long"));
            }
            output.insert("client_name".into(), name.clone().into());
        }
        let application_type = text("application_type")?.unwrap_or_else(|| "web".into());
        if !matches!(application_type.as_str(), "web" | "native") {
            return Err(bad("application_type must be web or native"));
        }
        output.insert("application_type".into(), application_type.clone().into());
        match text("token_endpoint_auth_method")?.as_deref() {
            None | Some("none") => {}
            Some(_) => return Err(bad("Only the token_endpoint_auth_method none is supported")),
        }
        output.insert("token_endpoint_auth_method".into(), "none".into());
        // Unknown values are ignored, as RFC 7591 and the spec ask.
        let known_grants = ["authorization_code", "refresh_token", DEVICE_CODE_GRANT];
        let grant_types: Vec<String> = list("grant_types")?
            .unwrap_or_else(|| vec!["authorization_code".into()])
            .into_iter()
            .filter(|g| known_grants.contains(&g.as_str()))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let response_types: Vec<String> = list("response_types")?
            .unwrap_or_else(|| vec!["code".into()])
            .into_iter()
            .filter(|r| r == "code")
            .take(1)
            .collect();
        let wants_code = grant_types.iter().any(|g| g == "authorization_code");
        if wants_code && response_types.is_empty() {
            return Err(bad("The authorization_code grant needs the response type code"));
        }
        let redirect_uris = list("redirect_uris")?.unwrap_or_default();
        if wants_code && redirect_uris.is_empty() {
            return Err(oauth(
                "invalid_redirect_uri",
                "The authorization_code grant needs at least one redirect URI",
            ));
        }
        if redirect_uris.len() > 20 {
            return Err(oauth("invalid_redirect_uri", "At most 20 redirect URIs"));
        }
        for uri in &redirect_uris {
            check_redirect_uri(uri, &application_type, &base_host)
                .map_err(|why| oauth("invalid_redirect_uri", format!("{uri}: {why}")))?;
        }
        output.insert("redirect_uris".into(), redirect_uris.clone().into());
        output.insert("grant_types".into(), grant_types.clone().into());
        output.insert("response_types".into(), response_types.into());
        let client_id = util::random_string(24);
        let record = OAuthClientRecord {
            metadata_json: serde_json::Value::Object(output.clone()).to_string(),
            redirect_uris,
            grant_types,
            client_name,
            client_uri: client_uri_text,
            created_ms: util::now_ms(),
        };
        let mut batch = self.db.batch();
        self.clients.put(&mut batch, &client_id, &record)?;
        batch.commit().await.map_err(Error::from)?;
        tracing::info!(%client_id, client_uri = %record.client_uri, "registered an OAuth client");
        output.insert("client_id".into(), client_id.into());
        output.insert("client_id_issued_at".into(), (record.created_ms / 1000).into());
        Ok(serde_json::Value::Object(output))
    }

    /// A registered client.
    pub fn client(&self, client_id: &str) -> OAuthResult<Option<Client>> {
        Ok(self.clients.get(client_id)?.map(|record| Client {
            client_id: client_id.to_owned(),
            record,
        }))
    }

    fn known_client(&self, client_id: Option<&str>) -> OAuthResult<Client> {
        let id = client_id.ok_or_else(|| oauth("invalid_request", "client_id is required"))?;
        self.client(id)?
            .ok_or_else(|| oauth("invalid_client", "Unknown client_id"))
    }

    // ---- Authorization code grant ----

    /// Validates an authorization request (RFC 6749 §4.1.1 with PKCE) and keeps it; returns its
    /// id, which the pages carry until the user consents.
    pub fn start_authorization(&self, p: AuthParams) -> std::result::Result<(String, AuthRequest), AuthorizeError> {
        let client_id = p
            .client_id
            .as_deref()
            .ok_or_else(|| AuthorizeError::Page("The request names no client (client_id).".into()))?;
        let client = self
            .client(client_id)
            .map_err(|e| match e {
                OAuthError::Other(e) => AuthorizeError::Other(e),
                OAuthError::OAuth { description, .. } => AuthorizeError::Page(description),
            })?
            .ok_or_else(|| AuthorizeError::Page("This application is not registered with this server.".into()))?;
        let redirect_uri = p
            .redirect_uri
            .clone()
            .ok_or_else(|| AuthorizeError::Page("The request names no redirect URI.".into()))?;
        if !client.redirect_uri_allowed(&redirect_uri) {
            return Err(AuthorizeError::Page(
                "The redirect URI is not one this application registered.".into(),
            ));
        }
        let fragment = match p.response_mode.as_deref() {
            None | Some("query") => false,
            Some("fragment") => true,
            Some(_) => {
                return Err(AuthorizeError::Page("Unsupported response_mode.".into()));
            }
        };
        let mut request = AuthRequest {
            client,
            redirect_uri,
            state: p.state.clone(),
            fragment,
            scope: Scope {
                device_id: OwnedDeviceId::from(""),
                granted: String::new(),
            },
            code_challenge: String::new(),
            prompt_create: false,
            login_hint: None,
            expires: Instant::now() + REQUEST_LIFETIME,
        };
        let fail = |request: &AuthRequest, code: &str, description: &str| AuthorizeError::Redirect {
            location: request.redirect_with(&[("error", code), ("error_description", description)]),
        };
        if p.response_type.as_deref() != Some("code") {
            return Err(fail(
                &request,
                "unsupported_response_type",
                "Only response_type=code is supported",
            ));
        }
        if !request.client.may_use("authorization_code") {
            return Err(fail(
                &request,
                "unauthorized_client",
                "The client did not register for the authorization_code grant",
            ));
        }
        match p.code_challenge_method.as_deref() {
            Some("S256") => {}
            _ => {
                return Err(fail(
                    &request,
                    "invalid_request",
                    "PKCE with code_challenge_method=S256 is required",
                ));
            }
        }
        match p.code_challenge.as_deref() {
            Some(c) if c.len() == 43 && is_pkce_string(c) => request.code_challenge = c.to_owned(),
            _ => {
                return Err(fail(
                    &request,
                    "invalid_request",
                    "code_challenge is missing or malformed",
                ));
            }
        }
        request.scope = match parse_scope(p.scope.as_deref().unwrap_or("")) {
            Ok(scope) => scope,
            Err(OAuthError::OAuth { code, description }) => return Err(fail(&request, code, &description)),
            Err(OAuthError::Other(e)) => return Err(AuthorizeError::Other(e)),
        };
        if let Some(prompt) = &p.prompt {
            for value in prompt.split(' ').filter(|v| !v.is_empty()) {
                match value {
                    "create" => request.prompt_create = true,
                    "login" | "consent" => {}
                    _ => return Err(fail(&request, "invalid_request", "Unsupported prompt value")),
                }
            }
        }
        request.login_hint = p
            .login_hint
            .as_deref()
            .and_then(|h| h.strip_prefix("mxid:"))
            .filter(|id| ruma::UserId::parse(*id).is_ok())
            .map(str::to_owned);
        let id = util::random_string(32);
        self.requests.insert(id.clone(), request.clone());
        Ok((id, request))
    }

    /// A pending authorization request.
    pub fn authorization(&self, id: &str) -> Option<AuthRequest> {
        self.requests
            .with(id, |r| r.filter(|r| r.expires > Instant::now()).map(|r| r.clone()))
    }

    /// The user answered: on consent, a code is issued and the redirect carries it; on refusal
    /// the redirect carries `access_denied`. The request is used up either way.
    pub fn finish_authorization(&self, id: &str, user_id: Option<&OwnedUserId>) -> Option<String> {
        let request = self.requests.remove(id).filter(|r| r.expires > Instant::now())?;
        let Some(user_id) = user_id else {
            return Some(request.redirect_with(&[
                ("error", "access_denied"),
                ("error_description", "The user refused the request"),
            ]));
        };
        let code = util::random_string(40);
        let location = request.redirect_with(&[("code", &code)]);
        self.codes.insert(
            util::sha256(code.as_bytes()),
            CodeEntry {
                request,
                user_id: user_id.clone(),
                expires: Instant::now() + self.config.oauth.code_lifetime,
                state: CodeState::Fresh,
            },
        );
        Some(location)
    }

    /// Checks a code exchange (RFC 6749 §4.1.3, RFC 7636 §4.6) and marks the code used. A code
    /// presented again makes [`Self::code_issued`]'s device revocable: the caller gets its id.
    pub fn exchange_code(
        &self,
        code: Option<&str>,
        client_id: Option<&str>,
        redirect_uri: Option<&str>,
        verifier: Option<&str>,
    ) -> OAuthResult<std::result::Result<Exchange, Option<(OwnedUserId, OwnedDeviceId)>>> {
        let client = self.known_client(client_id)?;
        let code = code.ok_or_else(|| oauth("invalid_request", "code is required"))?;
        let hash = util::sha256(code.as_bytes());
        let now = Instant::now();
        self.codes.with(&hash, |entry| {
            let entry = entry.ok_or_else(|| oauth("invalid_grant", "Unknown or expired code"))?;
            if let CodeState::Used { issued, replayed } = &mut entry.state {
                *replayed = true;
                let revoke = issued.clone().map(|d| (entry.user_id.clone(), d));
                return Ok(Err(revoke));
            }
            if entry.request.client.client_id != client.client_id {
                return Err(oauth("invalid_grant", "The code was issued to another client"));
            }
            if entry.expires <= now {
                return Err(oauth("invalid_grant", "The code has expired"));
            }
            if redirect_uri != Some(entry.request.redirect_uri.as_str()) {
                return Err(oauth(
                    "invalid_grant",
                    "redirect_uri differs from the authorization request's",
                ));
            }
            let verifier = verifier.ok_or_else(|| oauth("invalid_request", "code_verifier is required"))?;
            let computed = b64url(&util::sha256(verifier.as_bytes()));
            if !is_pkce_string(verifier) || !same(computed.as_bytes(), entry.request.code_challenge.as_bytes()) {
                // A wrong verifier burns the code too: whoever holds it is not the client.
                entry.state = CodeState::Used {
                    issued: None,
                    replayed: false,
                };
                return Err(oauth(
                    "invalid_grant",
                    "The code_verifier does not match the code_challenge",
                ));
            }
            entry.state = CodeState::Used {
                issued: None,
                replayed: false,
            };
            Ok(Ok(Exchange {
                code_hash: hash,
                user_id: entry.user_id.clone(),
                scope: entry.request.scope.clone(),
                client_name: entry.request.client.display_name(),
                client_id: entry.request.client.client_id.clone(),
            }))
        })
    }

    /// Records the device a code issued; `true` when the code was presented again meanwhile
    /// (the caller then revokes the device).
    pub fn code_issued(&self, code_hash: &[u8; 32], device_id: &OwnedDeviceId) -> bool {
        self.codes.with(code_hash, |entry| match entry {
            Some(CodeEntry {
                state: CodeState::Used { issued, replayed },
                ..
            }) => {
                *issued = Some(device_id.clone());
                *replayed
            }
            _ => false,
        })
    }

    /// Checks the client of a refresh token request.
    /// Whether `client_id` may refresh the tokens of `owner` (the user and device the refresh
    /// token belongs to, `None` for an unknown token): a registered client with the
    /// `refresh_token` grant, and the one the device was issued to (RFC 9700 §4.14.2: a public
    /// client's refresh tokens are bound to it). A device signed in with a password has no
    /// client and is refreshed through `/refresh`, not here.
    pub fn check_refresh_client(&self, client_id: Option<&str>, owner: Option<(&str, &str)>) -> OAuthResult<()> {
        let client = self.known_client(client_id)?;
        if !client.may_use("refresh_token") {
            return Err(oauth(
                "unauthorized_client",
                "The client did not register for the refresh_token grant",
            ));
        }
        if let Some((user_id, device_id)) = owner
            && self.clients.device_client(user_id, device_id)?.as_deref() != Some(client.client_id.as_str())
        {
            return Err(oauth("invalid_grant", "The refresh token was issued to another client"));
        }
        Ok(())
    }

    /// Records that `user_id`'s device `device_id` was issued to `client_id`.
    pub async fn bind_device(&self, user_id: &str, device_id: &str, client_id: &str) -> crate::Result<()> {
        let mut batch = self.db.batch();
        self.clients
            .put_device_client(&mut batch, user_id, device_id, client_id);
        batch.commit().await?;
        Ok(())
    }

    // ---- Browser sessions and CSRF ----

    /// A new browser session cookie value (not yet signed in).
    pub fn new_cookie(&self) -> String {
        util::random_string(43)
    }

    /// The CSRF token of the forms shown to the holder of `cookie`.
    pub fn csrf_token(&self, cookie: &str) -> String {
        b64url(&util::sha256(format!("csrf\0{}\0{cookie}", self.secret).as_bytes()))
    }

    /// Whether `token` is the CSRF token of `cookie`.
    pub fn csrf_ok(&self, cookie: &str, token: &str) -> bool {
        same(self.csrf_token(cookie).as_bytes(), token.as_bytes())
    }

    /// The user signed in with `cookie`.
    pub fn browser_user(&self, cookie: &str) -> Option<OwnedUserId> {
        let now = Instant::now();
        self.browsers.with(&util::sha256(cookie.as_bytes()), |s| {
            s.filter(|s| s.expires > now).map(|s| s.user_id.clone())
        })
    }

    /// Signs the browser holding `cookie` in as `user_id`.
    pub fn browser_sign_in(&self, cookie: &str, user_id: OwnedUserId) {
        self.browsers.insert(
            util::sha256(cookie.as_bytes()),
            BrowserSession {
                user_id,
                expires: Instant::now() + BROWSER_SESSION_LIFETIME,
            },
        );
    }

    /// Signs the browser holding `cookie` out.
    pub fn browser_sign_out(&self, cookie: &str) {
        self.browsers.remove(&util::sha256(cookie.as_bytes()));
    }
}
