//! The browser side of the OAuth 2.0 API (client-server API "OAuth 2.0 API": authorization
//! code flow, device authorisation flow, user registration, account management): pages Hearth
//! renders itself, small and accessible, with one inline stylesheet and no script.
//!
//! - `GET /_hearth/oauth2/authorize`: the authorization endpoint (RFC 6749 §4.1.1)
//! - `GET/POST /_hearth/oauth2/consent`: sign-in (when needed) and consent; the answer
//!   redirects to the client with a code or `access_denied`
//! - `GET/POST /_hearth/account/login`, `GET/POST /_hearth/account/register` (`prompt=create`)
//! - `GET/POST /_hearth/account/device`: the device grant's verification page (RFC 8628)
//! - `GET /_hearth/account/` (account management URL, with `action` deep links),
//!   `POST /_hearth/account/devices/delete`, `POST /_hearth/account/password`,
//!   `POST /_hearth/account/logout`
//!
//! Every form carries a CSRF token bound to the browser's session cookie (`HttpOnly`,
//! `SameSite=Lax`, `Secure` when the public base URL is https); a sign-in replaces the cookie.
//! The password forms are rate-limited per address and per account (the `login` limit).

use std::{collections::HashMap, fmt::Write, sync::Arc};

use actix_web::{HttpRequest, HttpResponse, http::StatusCode, web};
use ruma::OwnedUserId;

use super::oauth::{ACCOUNT, AUTHORIZE, DEVICE_VERIFY, base_url, check_enabled, parse_form};
use crate::{
    Error,
    api::{
        extract::{self, AuthRequirement, Ctx},
        respond,
    },
    config::RegistrationMode,
    services::{
        Services,
        accounts::LoginCheck,
        oauth::{AuthParams, AuthorizeError},
        rate_limit::{LimitClass, address_key},
    },
};

const CONSENT: &str = "/_hearth/oauth2/consent";
const LOGIN: &str = "/_hearth/account/login";
const SIGNUP: &str = "/_hearth/account/register";
const DEVICES_DELETE: &str = "/_hearth/account/devices/delete";
const PASSWORD: &str = "/_hearth/account/password";
const LOGOUT: &str = "/_hearth/account/logout";
const COOKIE: &str = "hearth_session";

type Handler = std::pin::Pin<Box<dyn std::future::Future<Output = HttpResponse>>>;
type PageFn = fn(HttpRequest, web::Payload, web::Data<Services>) -> Handler;

/// Registers the pages.
pub fn configure(cfg: &mut web::ServiceConfig) {
    let pages: [(&str, Option<PageFn>, Option<PageFn>); 9] = [
        (AUTHORIZE, Some(authorize), None),
        (CONSENT, Some(consent_page), Some(consent_post)),
        (LOGIN, Some(login_page), Some(login_post)),
        (SIGNUP, Some(signup_page), Some(signup_post)),
        (DEVICE_VERIFY, Some(device_page), Some(device_post)),
        (ACCOUNT, Some(account_page), None),
        (DEVICES_DELETE, None, Some(devices_delete)),
        (PASSWORD, None, Some(password_post)),
        (LOGOUT, None, Some(logout_post)),
    ];
    for (path, get, post) in pages {
        let mut resource = web::resource(path);
        if let Some(get) = get {
            resource = resource.route(web::get().to(get));
        }
        if let Some(post) = post {
            resource = resource.route(web::post().to(post));
        }
        cfg.service(resource.default_service(web::to(respond::method_not_allowed)));
    }
    cfg.service(web::resource("/_hearth/account").route(web::get().to(|| async {
        HttpResponse::MovedPermanently()
            .insert_header(("Location", ACCOUNT))
            .finish()
    })));
}

// ---- HTML ----

/// Escapes text for HTML element content and quoted attribute values.
fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn enc(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:30rem;margin:2rem auto;padding:0 1rem;\
line-height:1.5;color:#1b1d22;background:#fff}h1{font-size:1.5rem}label{display:block;margin-top:.8rem;\
font-weight:600}input{display:block;width:100%;box-sizing:border-box;padding:.5rem;font-size:1rem;\
border:1px solid #737d8c;border-radius:4px}button{margin-top:1rem;padding:.5rem 1rem;font-size:1rem;\
border-radius:4px;border:1px solid #0a6;background:#0a6;color:#fff;cursor:pointer}\
button.secondary{background:#fff;color:#1b1d22;border-color:#737d8c}.error{color:#b00020;font-weight:600}\
table{width:100%;border-collapse:collapse}td,th{text-align:left;padding:.3rem;border-bottom:1px solid #ddd}\
:focus{outline:3px solid #1a73e8;outline-offset:2px}.box{border:1px solid #ddd;border-radius:6px;padding:1rem;margin:1rem 0}";

/// A page: the shell, the status, the cookie to set (if new) and the security headers.
struct Page {
    status: StatusCode,
    title: String,
    body: String,
}

impl Page {
    fn new(title: impl Into<String>, body: String) -> Self {
        Self {
            status: StatusCode::OK,
            title: title.into(),
            body,
        }
    }

    fn status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }
}

fn error_page(status: StatusCode, message: &str) -> Page {
    Page::new(
        "Something went wrong",
        format!(
            "<h1>Something went wrong</h1><p class=\"error\" role=\"alert\">{}</p>",
            esc(message)
        ),
    )
    .status(status)
}

fn error_message(e: &Error) -> String {
    match e {
        Error::Matrix { message, .. } => message.clone(),
        Error::Uiaa(_) => "Authentication required".into(),
        Error::Internal(_) => "Internal server error".into(),
    }
}

fn from_error(e: Error) -> Page {
    if let Error::Internal(detail) = &e {
        tracing::error!("internal error: {detail}");
    }
    let status = e.status();
    let status = StatusCode::from_u16(status.as_u16()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    error_page(status, &error_message(&e))
}

/// What every page handler knows about the browser.
struct Browser {
    services: Arc<Services>,
    cookie: String,
    /// The cookie was made for this response and must be set.
    set_cookie: bool,
    user: Option<OwnedUserId>,
    secure: bool,
    ctx_ip: Option<String>,
    base: String,
}

impl Browser {
    fn csrf_field(&self) -> String {
        format!(
            "<input type=\"hidden\" name=\"csrf\" value=\"{}\">",
            esc(&self.services.oauth.csrf_token(&self.cookie))
        )
    }

    fn render(&self, page: Page) -> HttpResponse {
        let html = format!(
            "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<meta name=\"referrer\" content=\"no-referrer\"><title>{} · {}</title><style>{STYLE}</style></head>\
<body><main>{}</main></body></html>",
            esc(&page.title),
            esc(self.services.config.server_name.as_str()),
            page.body
        );
        let mut response = HttpResponse::build(page.status);
        self.headers(&mut response);
        response.content_type("text/html; charset=utf-8").body(html)
    }

    fn redirect(&self, location: &str) -> HttpResponse {
        let mut response = HttpResponse::SeeOther();
        self.headers(&mut response);
        response.insert_header(("Location", location)).finish()
    }

    fn headers(&self, response: &mut actix_web::HttpResponseBuilder) {
        response
            .insert_header(("Cache-Control", "no-store"))
            .insert_header((
                "Content-Security-Policy",
                "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'",
            ))
            .insert_header(("X-Frame-Options", "DENY"))
            .insert_header(("X-Content-Type-Options", "nosniff"))
            .insert_header(("Referrer-Policy", "no-referrer"));
        if self.set_cookie {
            response.insert_header(("Set-Cookie", cookie_header(&self.cookie, self.secure)));
        }
    }

    /// Signs the browser in under a fresh cookie (no session fixation).
    fn sign_in(&mut self, user_id: OwnedUserId) {
        self.services.oauth.browser_sign_out(&self.cookie);
        self.cookie = self.services.oauth.new_cookie();
        self.set_cookie = true;
        self.services.oauth.browser_sign_in(&self.cookie, user_id.clone());
        self.user = Some(user_id);
    }

    fn registration_open(&self) -> bool {
        self.services.registration.mode() != RegistrationMode::Closed
    }
}

fn cookie_header(value: &str, secure: bool) -> String {
    format!(
        "{COOKIE}={value}; Path=/_hearth/; HttpOnly; SameSite=Lax{}",
        if secure { "; Secure" } else { "" }
    )
}

fn read_cookie(req: &HttpRequest) -> Option<String> {
    req.headers()
        .get_all(actix_web::http::header::COOKIE)
        .filter_map(|h| h.to_str().ok())
        .flat_map(|h| h.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_owned())
        .filter(|v| (20..=100).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_alphanumeric()))
}

/// Reads the request (body for POST), rate-limits with `limit`, and finds the browser session.
async fn browser(
    req: &HttpRequest,
    payload: web::Payload,
    services: web::Data<Services>,
    limit: Option<LimitClass>,
) -> Result<(Browser, HashMap<String, String>), HttpResponse> {
    let services = services.into_inner();
    let fail = |e: Error| {
        let b = bare(&services, req);
        Err(b.render(from_error(e)))
    };
    if let Err(e) = check_enabled(&services) {
        return Err(respond::error(e));
    }
    let path: &'static str = "/_hearth/";
    let prepared = match extract::prepare(req, payload, &services, AuthRequirement::None, limit, path).await {
        Ok(p) => p,
        Err(e) => return fail(e),
    };
    let source = if req.method() == actix_web::http::Method::POST {
        prepared.body().to_vec()
    } else {
        req.query_string().as_bytes().to_vec()
    };
    let form = match parse_form(&source) {
        Ok(form) => form,
        Err(_) => return fail(Error::invalid_param("A parameter is repeated")),
    };
    let Ctx { ip, .. } = prepared.ctx;
    let mut b = bare(&services, req);
    b.ctx_ip = ip;
    if let Some(cookie) = read_cookie(req) {
        b.user = services.oauth.browser_user(&cookie);
        b.cookie = cookie;
        b.set_cookie = false;
    }
    if req.method() == actix_web::http::Method::POST {
        let ok = !b.set_cookie && form.get("csrf").is_some_and(|t| services.oauth.csrf_ok(&b.cookie, t));
        if !ok {
            return Err(b.render(error_page(
                StatusCode::FORBIDDEN,
                "This form has expired or did not come from this site (CSRF check failed). Go back, reload the page and try again.",
            )));
        }
    }
    Ok((b, form))
}

fn bare(services: &Arc<Services>, req: &HttpRequest) -> Browser {
    let base = base_url(req, services);
    Browser {
        cookie: services.oauth.new_cookie(),
        set_cookie: true,
        user: None,
        secure: base.starts_with("https://"),
        ctx_ip: None,
        base,
        services: Arc::clone(services),
    }
}

/// A `next` target must be one of our own pages.
fn safe_next(next: Option<&String>) -> String {
    next.filter(|n| n.starts_with("/_hearth/") && !n.contains("//") && !n.contains('\\'))
        .cloned()
        .unwrap_or_else(|| ACCOUNT.to_owned())
}

// ---- Sign-in and sign-up ----

fn login_form(b: &Browser, next: &str, username: &str, error: Option<&str>, context: Option<&str>) -> Page {
    let mut body = format!("<h1>Sign in to {}</h1>", esc(b.services.config.server_name.as_str()));
    if let Some(context) = context {
        let _ = write!(body, "<p>{}</p>", esc(context));
    }
    if let Some(error) = error {
        let _ = write!(body, "<p class=\"error\" role=\"alert\">{}</p>", esc(error));
    }
    let _ = write!(
        body,
        "<form method=\"post\" action=\"{LOGIN}\">{}<input type=\"hidden\" name=\"next\" value=\"{}\">\
<label for=\"username\">Username</label><input id=\"username\" name=\"username\" autocomplete=\"username\" \
autocapitalize=\"none\" required value=\"{}\">\
<label for=\"password\">Password</label><input id=\"password\" name=\"password\" type=\"password\" \
autocomplete=\"current-password\" required>\
<button type=\"submit\">Sign in</button></form>",
        b.csrf_field(),
        esc(next),
        esc(username)
    );
    if b.registration_open() {
        let _ = write!(
            body,
            "<p>No account yet? <a href=\"{SIGNUP}?next={}\">Create an account</a></p>",
            enc(next)
        );
    }
    Page::new("Sign in", body)
}

fn signup_form(b: &Browser, next: &str, username: &str, error: Option<&str>) -> Page {
    let mut body = format!(
        "<h1>Create an account on {}</h1>",
        esc(b.services.config.server_name.as_str())
    );
    if let Some(error) = error {
        let _ = write!(body, "<p class=\"error\" role=\"alert\">{}</p>", esc(error));
    }
    let _ = write!(
        body,
        "<form method=\"post\" action=\"{SIGNUP}\">{}<input type=\"hidden\" name=\"next\" value=\"{}\">\
<label for=\"username\">Username</label><input id=\"username\" name=\"username\" autocomplete=\"username\" \
autocapitalize=\"none\" required value=\"{}\">\
<label for=\"password\">Password</label><input id=\"password\" name=\"password\" type=\"password\" \
autocomplete=\"new-password\" required>",
        b.csrf_field(),
        esc(next),
        esc(username)
    );
    if b.services.registration.mode() == RegistrationMode::Token {
        body.push_str(
            "<label for=\"token\">Registration token</label><input id=\"token\" name=\"token\" \
autocomplete=\"off\" required aria-describedby=\"token-help\">\
<p id=\"token-help\">This server needs a registration token from its administrators.</p>",
        );
    }
    let _ = write!(
        body,
        "<button type=\"submit\">Create account</button></form>\
<p>Already have an account? <a href=\"{LOGIN}?next={}\">Sign in</a></p>",
        enc(next)
    );
    Page::new("Create an account", body)
}

fn login_page(req: HttpRequest, payload: web::Payload, services: web::Data<Services>) -> Handler {
    Box::pin(async move {
        let (b, form) = match browser(&req, payload, services, None).await {
            Ok(x) => x,
            Err(r) => return r,
        };
        let next = safe_next(form.get("next"));
        b.render(login_form(&b, &next, "", None, None))
    })
}

fn login_post(req: HttpRequest, payload: web::Payload, services: web::Data<Services>) -> Handler {
    Box::pin(async move {
        let (mut b, form) = match browser(&req, payload, services, None).await {
            Ok(x) => x,
            Err(r) => return r,
        };
        let next = safe_next(form.get("next"));
        let username = form.get("username").map(|u| u.trim().to_owned()).unwrap_or_default();
        let password = form.get("password").cloned().unwrap_or_default();
        // Brute-force limits: per address and per account name.
        let address = b
            .ctx_ip
            .as_deref()
            .and_then(|ip| ip.parse().ok())
            .map(address_key)
            .unwrap_or_default();
        let limits = &b.services.rate_limit;
        let account_key = match b.services.accounts.resolve_local_user(&username) {
            Ok(Some(user_id)) => format!("account:{user_id}"),
            _ => format!("account:{}", username.to_lowercase()),
        };
        if limits.check(LimitClass::Login, &address).is_err() || limits.check(LimitClass::Login, &account_key).is_err()
        {
            return b.render(
                login_form(
                    &b,
                    &next,
                    &username,
                    Some("Too many attempts. Wait a minute and try again."),
                    None,
                )
                .status(StatusCode::TOO_MANY_REQUESTS),
            );
        }
        match b.services.accounts.check_login(&username, &password).await {
            Ok(LoginCheck::Valid(user_id)) => {
                tracing::info!(%user_id, "signed in to the account pages");
                b.sign_in(user_id);
                b.redirect(&next)
            }
            Ok(LoginCheck::Deactivated) => b.render(
                login_form(&b, &next, &username, Some("This account has been deactivated."), None)
                    .status(StatusCode::FORBIDDEN),
            ),
            Ok(LoginCheck::Invalid) => b.render(
                login_form(&b, &next, &username, Some("Wrong username or password."), None)
                    .status(StatusCode::UNAUTHORIZED),
            ),
            Err(e) => b.render(from_error(e)),
        }
    })
}

fn signup_page(req: HttpRequest, payload: web::Payload, services: web::Data<Services>) -> Handler {
    Box::pin(async move {
        let (b, form) = match browser(&req, payload, services, None).await {
            Ok(x) => x,
            Err(r) => return r,
        };
        let next = safe_next(form.get("next"));
        if !b.registration_open() {
            return b.render(error_page(
                StatusCode::FORBIDDEN,
                "Registration is disabled on this server.",
            ));
        }
        b.render(signup_form(&b, &next, "", None))
    })
}

fn signup_post(req: HttpRequest, payload: web::Payload, services: web::Data<Services>) -> Handler {
    Box::pin(async move {
        let (mut b, form) = match browser(&req, payload, services, Some(LimitClass::Register)).await {
            Ok(x) => x,
            Err(r) => return r,
        };
        let next = safe_next(form.get("next"));
        if !b.registration_open() {
            return b.render(error_page(
                StatusCode::FORBIDDEN,
                "Registration is disabled on this server.",
            ));
        }
        let username = form.get("username").map(|u| u.trim().to_owned()).unwrap_or_default();
        let password = form.get("password").cloned().unwrap_or_default();
        let token = form.get("token").map(|t| t.trim().to_owned());
        let services = Arc::clone(&b.services);
        let result: Result<OwnedUserId, Error> = async {
            if password.is_empty() {
                return Err(Error::invalid_param("Choose a password"));
            }
            if password.len() > 512 {
                return Err(Error::invalid_param("The password is too long"));
            }
            let user_id = crate::services::appservice::client_server::check_available(&services, &username)?;
            let mut batch = services.new_account_batch(&user_id)?;
            let _token_use = match services.registration.mode() {
                RegistrationMode::Token => {
                    let token = token
                        .filter(|t| !t.is_empty())
                        .ok_or_else(|| Error::forbidden("A registration token is required"))?;
                    Some(services.registration.queue_use(&mut batch, &token).await?)
                }
                _ => None,
            };
            services
                .accounts
                .create(&user_id, Some(&password), false, batch)
                .await?;
            Ok(user_id)
        }
        .await;
        match result {
            Ok(user_id) => {
                tracing::info!(%user_id, "registered a new account through the sign-up page");
                b.sign_in(user_id);
                b.redirect(&next)
            }
            Err(Error::Internal(detail)) => b.render(from_error(Error::Internal(detail))),
            Err(e) => {
                let status = StatusCode::from_u16(e.status().as_u16()).unwrap_or(StatusCode::BAD_REQUEST);
                b.render(signup_form(&b, &next, &username, Some(&error_message(&e))).status(status))
            }
        }
    })
}

// ---- Authorization and consent ----

fn authorize(req: HttpRequest, payload: web::Payload, services: web::Data<Services>) -> Handler {
    Box::pin(async move {
        let (b, form) = match browser(&req, payload, services, Some(LimitClass::Client)).await {
            Ok(x) => x,
            Err(r) => return r,
        };
        let get = |k: &str| form.get(k).cloned();
        let params = AuthParams {
            response_type: get("response_type"),
            client_id: get("client_id"),
            redirect_uri: get("redirect_uri"),
            scope: get("scope"),
            state: get("state"),
            response_mode: get("response_mode"),
            code_challenge: get("code_challenge"),
            code_challenge_method: get("code_challenge_method"),
            prompt: get("prompt"),
            login_hint: get("login_hint"),
        };
        match b.services.oauth.start_authorization(params) {
            Ok((id, request)) => {
                let next = format!("{CONSENT}?request={}", enc(&id));
                if request.prompt_create && b.registration_open() {
                    b.redirect(&format!("{SIGNUP}?next={}", enc(&next)))
                } else {
                    b.redirect(&next)
                }
            }
            Err(AuthorizeError::Page(message)) => b.render(error_page(StatusCode::BAD_REQUEST, &message)),
            Err(AuthorizeError::Redirect { location }) => b.redirect(&location),
            Err(AuthorizeError::Other(e)) => b.render(from_error(e)),
        }
    })
}

fn expired() -> Page {
    error_page(
        StatusCode::BAD_REQUEST,
        "This sign-in request is unknown or has expired. Go back to the application and start again.",
    )
}

fn consent_page(req: HttpRequest, payload: web::Payload, services: web::Data<Services>) -> Handler {
    Box::pin(async move {
        let (b, form) = match browser(&req, payload, services, None).await {
            Ok(x) => x,
            Err(r) => return r,
        };
        let id = form.get("request").cloned().unwrap_or_default();
        let Some(request) = b.services.oauth.authorization(&id) else {
            return b.render(expired());
        };
        let here = format!("{CONSENT}?request={}", enc(&id));
        let client = request.client.display_name();
        let Some(user) = &b.user else {
            let hint = request.login_hint.clone().unwrap_or_default();
            let context = format!("{client} wants to sign in to your account.");
            return b.render(login_form(&b, &here, &hint, None, Some(&context)));
        };
        let mut body = format!(
            "<h1>Allow access?</h1><div class=\"box\"><p><strong>{}</strong> (<a href=\"{}\" rel=\"noreferrer\">{}</a>) \
wants full access to your account <strong>{}</strong> as a new session <code>{}</code>.</p>\
<p>It will be able to read and send messages on your behalf.</p></div>",
            esc(&client),
            esc(&request.client.record.client_uri),
            esc(&request.client.record.client_uri),
            esc(user.as_str()),
            esc(request.scope.device_id.as_str())
        );
        let _ = write!(
            body,
            "<form method=\"post\" action=\"{CONSENT}\">{}<input type=\"hidden\" name=\"request\" value=\"{}\">\
<button type=\"submit\" name=\"action\" value=\"allow\">Allow</button> \
<button type=\"submit\" name=\"action\" value=\"deny\" class=\"secondary\">Deny</button></form>\
<form method=\"post\" action=\"{LOGOUT}\">{}<input type=\"hidden\" name=\"next\" value=\"{}\">\
<button type=\"submit\" class=\"secondary\">Use another account</button></form>",
            b.csrf_field(),
            esc(&id),
            b.csrf_field(),
            esc(&here)
        );
        b.render(Page::new("Allow access?", body))
    })
}

fn consent_post(req: HttpRequest, payload: web::Payload, services: web::Data<Services>) -> Handler {
    Box::pin(async move {
        let (b, form) = match browser(&req, payload, services, None).await {
            Ok(x) => x,
            Err(r) => return r,
        };
        let Some(user) = b.user.clone() else {
            return b.render(error_page(StatusCode::FORBIDDEN, "You are not signed in."));
        };
        let id = form.get("request").cloned().unwrap_or_default();
        let allow = form.get("action").map(String::as_str) == Some("allow");
        match b.services.oauth.finish_authorization(&id, allow.then_some(&user)) {
            Some(location) => b.redirect(&location),
            None => b.render(expired()),
        }
    })
}

// ---- Device verification ----

fn device_page(req: HttpRequest, payload: web::Payload, services: web::Data<Services>) -> Handler {
    Box::pin(async move {
        let (b, form) = match browser(&req, payload, services, None).await {
            Ok(x) => x,
            Err(r) => return r,
        };
        let code = form.get("user_code").cloned().unwrap_or_default();
        let here = if code.is_empty() {
            DEVICE_VERIFY.to_owned()
        } else {
            format!("{DEVICE_VERIFY}?user_code={}", enc(&code))
        };
        if b.user.is_none() {
            return b.render(login_form(
                &b,
                &here,
                "",
                None,
                Some("Sign in to connect your other device."),
            ));
        }
        let pending = (!code.is_empty())
            .then(|| b.services.oauth.pending_device(&code))
            .flatten();
        let Some(pending) = pending else {
            let error = if code.is_empty() {
                String::new()
            } else {
                "<p class=\"error\" role=\"alert\">That code is unknown or has expired.</p>".to_owned()
            };
            return b.render(Page::new(
                "Connect a device",
                format!(
                    "<h1>Connect a device</h1>{error}<form method=\"get\" action=\"{DEVICE_VERIFY}\">\
<label for=\"user_code\">Code shown on your device</label><input id=\"user_code\" name=\"user_code\" \
autocomplete=\"off\" autocapitalize=\"characters\" required value=\"{}\">\
<button type=\"submit\">Continue</button></form>",
                    esc(&code)
                ),
            ));
        };
        let body = format!(
            "<h1>Allow access?</h1><div class=\"box\"><p><strong>{}</strong> on another device wants full access \
to your account <strong>{}</strong> as session <code>{}</code>.</p><p>Only allow this if you started it \
yourself and the code <strong>{}</strong> is shown on that device.</p></div>\
<form method=\"post\" action=\"{DEVICE_VERIFY}\">{}<input type=\"hidden\" name=\"user_code\" value=\"{}\">\
<button type=\"submit\" name=\"action\" value=\"allow\">Allow</button> \
<button type=\"submit\" name=\"action\" value=\"deny\" class=\"secondary\">Deny</button></form>",
            esc(&pending.client_name),
            esc(b.user.as_ref().map(|u| u.as_str()).unwrap_or_default()),
            esc(pending.device_id.as_str()),
            esc(&code),
            b.csrf_field(),
            esc(&code)
        );
        b.render(Page::new("Allow access?", body))
    })
}

fn device_post(req: HttpRequest, payload: web::Payload, services: web::Data<Services>) -> Handler {
    Box::pin(async move {
        let (b, form) = match browser(&req, payload, services, None).await {
            Ok(x) => x,
            Err(r) => return r,
        };
        let Some(user) = b.user.clone() else {
            return b.render(error_page(StatusCode::FORBIDDEN, "You are not signed in."));
        };
        let code = form.get("user_code").cloned().unwrap_or_default();
        let allow = form.get("action").map(String::as_str) == Some("allow");
        if !b.services.oauth.answer_device(&code, allow.then_some(&user)) {
            return b.render(error_page(
                StatusCode::BAD_REQUEST,
                "That code is unknown or has expired.",
            ));
        }
        let message = if allow {
            "Your device is being signed in. You can close this page and return to it."
        } else {
            "The request was denied. Nothing was signed in."
        };
        b.render(Page::new(
            "Done",
            format!("<h1>Done</h1><p role=\"status\">{message}</p>"),
        ))
    })
}

// ---- Account management ----

fn account_page(req: HttpRequest, payload: web::Payload, services: web::Data<Services>) -> Handler {
    Box::pin(async move {
        let (b, form) = match browser(&req, payload, services, None).await {
            Ok(x) => x,
            Err(r) => return r,
        };
        let Some(user) = b.user.clone() else {
            let query = req.query_string();
            let here = if query.is_empty() {
                ACCOUNT.to_owned()
            } else {
                format!("{ACCOUNT}?{query}")
            };
            return b.render(login_form(&b, &here, "", None, None));
        };
        let devices = match b.services.sessions.list_devices(&user) {
            Ok(d) => d,
            Err(e) => return b.render(from_error(e)),
        };
        let action = form.get("action").map(String::as_str).unwrap_or("");
        let focus = form.get("device_id").cloned();
        let mut body = format!(
            "<h1>Your account</h1><p>Signed in as <strong>{}</strong>.</p>",
            esc(user.as_str())
        );
        if let Some(notice) = form.get("notice") {
            let text = match notice.as_str() {
                "signed_out" => "The session was signed out.",
                "password" => "Your password was changed.",
                _ => "",
            };
            let _ = write!(body, "<p role=\"status\">{text}</p>");
        }
        let device_form = |id: &str, label: &str| {
            format!(
                "<form method=\"post\" action=\"{DEVICES_DELETE}\">{}<input type=\"hidden\" name=\"device_id\" value=\"{}\">\
<button type=\"submit\" class=\"secondary\" aria-label=\"Sign out session {}\">{label}</button></form>",
                b.csrf_field(),
                esc(id),
                esc(id)
            )
        };
        if let Some(id) = &focus
            && let Some(device) = devices.iter().find(|d| d.device_id.as_str() == id)
        {
            let name = device.display_name.clone().unwrap_or_default();
            match action {
                "org.matrix.device_delete" | "org.matrix.session_end" => {
                    let _ = write!(
                        body,
                        "<div class=\"box\"><h2>Sign out this session?</h2><p><code>{}</code> {}</p>{}</div>",
                        esc(id),
                        esc(&name),
                        device_form(id, "Sign out")
                    );
                }
                "org.matrix.device_view" | "org.matrix.session_view" => {
                    let _ = write!(
                        body,
                        "<div class=\"box\"><h2>Session <code>{}</code></h2><p>{}</p><p>Last seen from {}</p>{}</div>",
                        esc(id),
                        esc(&name),
                        esc(device.last_seen_ip.as_deref().unwrap_or("unknown")),
                        device_form(id, "Sign out")
                    );
                }
                _ => {}
            }
        }
        body.push_str("<h2 id=\"sessions\">Sessions</h2><table><thead><tr><th scope=\"col\">Session</th><th scope=\"col\">Name</th><th scope=\"col\"><span class=\"visually-hidden\">Actions</span></th></tr></thead><tbody>");
        for device in &devices {
            let _ = write!(
                body,
                "<tr><td><code>{}</code></td><td>{}</td><td>{}</td></tr>",
                esc(device.device_id.as_str()),
                esc(device.display_name.as_deref().unwrap_or("")),
                device_form(device.device_id.as_str(), "Sign out")
            );
        }
        body.push_str("</tbody></table>");
        let _ = write!(
            body,
            "<h2>Change password</h2><form method=\"post\" action=\"{PASSWORD}\">{}\
<label for=\"current\">Current password</label><input id=\"current\" name=\"current\" type=\"password\" autocomplete=\"current-password\" required>\
<label for=\"new\">New password</label><input id=\"new\" name=\"new\" type=\"password\" autocomplete=\"new-password\" required>\
<p><input id=\"sign_out\" name=\"sign_out\" type=\"checkbox\" value=\"on\" checked> \
<label for=\"sign_out\">Sign out all my devices</label></p>\
<button type=\"submit\">Change password</button></form>\
<form method=\"post\" action=\"{LOGOUT}\">{}<button type=\"submit\" class=\"secondary\">Sign out of this page</button></form>",
            b.csrf_field(),
            b.csrf_field()
        );
        b.render(Page::new("Your account", body))
    })
}

fn devices_delete(req: HttpRequest, payload: web::Payload, services: web::Data<Services>) -> Handler {
    Box::pin(async move {
        let (b, form) = match browser(&req, payload, services, None).await {
            Ok(x) => x,
            Err(r) => return r,
        };
        let Some(user) = b.user.clone() else {
            return b.render(error_page(StatusCode::FORBIDDEN, "You are not signed in."));
        };
        let Some(device_id) = form.get("device_id").cloned() else {
            return b.render(error_page(StatusCode::BAD_REQUEST, "No session was named."));
        };
        if let Err(e) = b
            .services
            .delete_devices(&user, Some(std::slice::from_ref(&device_id)), None)
            .await
        {
            return b.render(from_error(e));
        }
        tracing::info!(%user, %device_id, "session signed out from the account page");
        b.redirect(&format!("{ACCOUNT}?notice=signed_out"))
    })
}

fn password_post(req: HttpRequest, payload: web::Payload, services: web::Data<Services>) -> Handler {
    Box::pin(async move {
        let (b, form) = match browser(&req, payload, services, None).await {
            Ok(x) => x,
            Err(r) => return r,
        };
        let Some(user) = b.user.clone() else {
            return b.render(error_page(StatusCode::FORBIDDEN, "You are not signed in."));
        };
        let current = form.get("current").cloned().unwrap_or_default();
        let new = form.get("new").cloned().unwrap_or_default();
        let limits = &b.services.rate_limit;
        if limits.check(LimitClass::Login, &format!("account:{user}")).is_err() {
            return b.render(error_page(
                StatusCode::TOO_MANY_REQUESTS,
                "Too many attempts. Wait a minute and try again.",
            ));
        }
        match b.services.accounts.verify_password(&user, &current).await {
            Ok(true) => {}
            Ok(false) => return b.render(error_page(StatusCode::UNAUTHORIZED, "The current password is wrong.")),
            Err(e) => return b.render(from_error(e)),
        }
        if new.is_empty() || new.len() > 512 {
            return b.render(error_page(
                StatusCode::BAD_REQUEST,
                "Choose a new password of 1 to 512 bytes.",
            ));
        }
        let sign_out = form.get("sign_out").is_some_and(|v| v == "on");
        if let Err(e) = b.services.change_password(&user, &new, sign_out, None).await {
            return b.render(from_error(e));
        }
        tracing::info!(%user, "password changed from the account page");
        b.redirect(&format!("{ACCOUNT}?notice=password"))
    })
}

fn logout_post(req: HttpRequest, payload: web::Payload, services: web::Data<Services>) -> Handler {
    Box::pin(async move {
        let (mut b, form) = match browser(&req, payload, services, None).await {
            Ok(x) => x,
            Err(r) => return r,
        };
        let next = safe_next(form.get("next"));
        b.services.oauth.browser_sign_out(&b.cookie);
        b.user = None;
        let _ = &b.base;
        b.redirect(&next)
    })
}
