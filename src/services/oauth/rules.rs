//! The grammar checks of the OAuth 2.0 API: the Matrix scope a client asks for (the API
//! scope and exactly one device scope, stable or MSC2967 names) and the spec's redirect URI
//! rules for web and native clients.

use ruma::OwnedDeviceId;
use url::Url;

use super::{OAuthResult, oauth};

/// The stable and unstable (MSC2967) scope prefixes, in that order.
const API_SCOPES: [&str; 2] = ["urn:matrix:client:api:*", "urn:matrix:org.matrix.msc2967.client:api:*"];
const DEVICE_SCOPE_PREFIXES: [&str; 2] = [
    "urn:matrix:client:device:",
    "urn:matrix:org.matrix.msc2967.client:device:",
];

/// The Matrix scope of a grant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scope {
    /// The device id to allocate.
    pub device_id: OwnedDeviceId,
    /// The scope tokens granted, space-separated, as the token response names them (in the
    /// stable or unstable form the client asked for).
    pub granted: String,
}

/// Parses a requested scope: exactly one device scope and the API scope are required (either
/// the stable or the MSC2967 names); other tokens (`openid`, …) are ignored.
pub fn parse_scope(scope: &str) -> OAuthResult<Scope> {
    let mut api = None;
    let mut device = None;
    for token in scope.split(' ').filter(|t| !t.is_empty()) {
        if API_SCOPES.contains(&token) {
            api = Some(token);
        } else if let Some(id) = DEVICE_SCOPE_PREFIXES.iter().find_map(|p| token.strip_prefix(p)) {
            if device.is_some() {
                return Err(oauth("invalid_scope", "Exactly one device scope token is allowed"));
            }
            let valid = !id.is_empty()
                && id.len() <= 255
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'));
            if !valid {
                return Err(oauth(
                    "invalid_scope",
                    "The device id must be 1-255 characters of A-Z, a-z, 0-9, '-', '.', '_', '~'",
                ));
            }
            device = Some((token, id));
        }
    }
    let api = api.ok_or_else(|| oauth("invalid_scope", "The scope must include urn:matrix:client:api:*"))?;
    let (device_token, id) = device.ok_or_else(|| {
        oauth(
            "invalid_scope",
            "The scope must include exactly one urn:matrix:client:device:<device_id>",
        )
    })?;
    Ok(Scope {
        device_id: OwnedDeviceId::from(id),
        granted: format!("{api} {device_token}"),
    })
}

pub(super) fn is_loopback_host(url: &Url) -> bool {
    matches!(url.host_str(), Some("localhost" | "127.0.0.1" | "[::1]"))
}

/// Whether `host` is `base` or one of its subdomains.
pub(super) fn on_host(host: &str, base: &str) -> bool {
    host == base || host.strip_suffix(base).is_some_and(|rest| rest.ends_with('.'))
}

/// The spec's redirect URI rules ("Redirect URI validation").
pub(super) fn check_redirect_uri(
    uri: &str,
    application_type: &str,
    base_host: &str,
) -> std::result::Result<(), &'static str> {
    let url = Url::parse(uri).map_err(|_| "not a valid URL")?;
    if url.fragment().is_some() {
        return Err("a redirect URI must not have a fragment");
    }
    let web_rule = |url: &Url| {
        url.scheme() == "https"
            && url.username().is_empty()
            && url.password().is_none()
            && url
                .host_str()
                .is_some_and(|h| on_host(&h.to_ascii_lowercase(), base_host))
    };
    if web_rule(&url) {
        return Ok(());
    }
    if application_type != "native" {
        return Err("a web client's redirect URI must be https on the client_uri's host or a subdomain");
    }
    match url.scheme() {
        "http" => {
            if !is_loopback_host(&url) {
                return Err("an http redirect URI must be on localhost, 127.0.0.1 or [::1]");
            }
            if url.port().is_some()
                || uri.contains("]:")
                || uri.split("://").nth(1).is_some_and(|r| {
                    r.split('/')
                        .next()
                        .is_some_and(|authority| authority.contains(':') && !authority.starts_with('['))
                })
            {
                return Err("a loopback redirect URI must not name a port");
            }
            Ok(())
        }
        "https" => Err("an https redirect URI must be on the client_uri's host or a subdomain"),
        scheme => {
            let reversed: String = base_host.split('.').rev().collect::<Vec<_>>().join(".");
            let prefix_ok = scheme == reversed || scheme.starts_with(&format!("{reversed}."));
            if !prefix_ok {
                return Err("a private-use scheme must be the client_uri's host in reverse-DNS order");
            }
            // No authority: the scheme is followed by one slash or none.
            let rest = &uri[scheme.len() + 1..];
            if rest.starts_with("//") {
                return Err("a private-use scheme redirect URI must have no authority");
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirect_uris_follow_the_spec_examples() {
        let host = "example.com";
        for ok in [
            "https://example.com/callback",
            "https://app.example.com/callback",
            "https://example.com:5173/?query=value",
        ] {
            assert_eq!(check_redirect_uri(ok, "web", host), Ok(()), "{ok}");
        }
        for bad in [
            "https://example.com/callback#fragment",
            "http://example.com/callback",
            "http://localhost/",
            "https://app.com/callback",
            "https://user:pw@example.com/",
        ] {
            assert!(check_redirect_uri(bad, "web", host).is_err(), "{bad}");
        }
        for ok in [
            "com.example.app:/callback",
            "com.example:/",
            "com.example:callback",
            "http://localhost/callback",
            "http://127.0.0.1/callback",
            "http://[::1]/callback",
        ] {
            assert_eq!(check_redirect_uri(ok, "native", host), Ok(()), "{ok}");
        }
        for bad in [
            "example:/callback",
            "com.example.app://callback",
            "https://localhost/callback",
            "http://localhost:1234/callback",
            "http://[::1]:80/callback",
        ] {
            assert!(check_redirect_uri(bad, "native", host).is_err(), "{bad}");
        }
    }

    #[test]
    fn scopes_need_api_and_one_device() {
        let s = parse_scope("urn:matrix:client:api:* urn:matrix:client:device:ABCDEFGHIJ").unwrap();
        assert_eq!(s.device_id.as_str(), "ABCDEFGHIJ");
        let s = parse_scope(
            "openid urn:matrix:org.matrix.msc2967.client:api:* urn:matrix:org.matrix.msc2967.client:device:X1",
        )
        .unwrap();
        assert_eq!(s.device_id.as_str(), "X1");
        assert_eq!(
            s.granted,
            "urn:matrix:org.matrix.msc2967.client:api:* urn:matrix:org.matrix.msc2967.client:device:X1"
        );
        for bad in [
            "",
            "urn:matrix:client:api:*",
            "urn:matrix:client:device:A",
            "urn:matrix:client:api:* urn:matrix:client:device:A urn:matrix:client:device:B",
            "urn:matrix:client:api:* urn:matrix:client:device:a/b",
        ] {
            assert!(parse_scope(bad).is_err(), "{bad}");
        }
    }
}
