//! Server discovery (spec, server-server API, "Resolving server names"): from a server name to
//! the addresses to connect to, the `Host` header to send and the name the TLS certificate must
//! be valid for ([`Destination`]).
//!
//! The steps, in the spec's order:
//! 1. an IP literal (with or without port): that address, port 8448 by default; `Host` is the
//!    server name, the certificate is for the IP address;
//! 2. a host name with an explicit port: its A/AAAA records (CNAMEs followed), `Host` is the
//!    server name, the certificate is for the host name;
//! 3. `https://<hostname>/.well-known/matrix/server` (port 443, at most
//!    [`MAX_WELL_KNOWN_REDIRECTS`] redirects to `https://` URLs, at most
//!    [`MAX_WELL_KNOWN_BYTES`], within [`WELL_KNOWN_TIMEOUT`]). A valid `m.server` is resolved
//!    as (3.1) an IP literal, (3.2) a host name with port, (3.3) `_matrix-fed._tcp` SRV,
//!    (3.4) the deprecated `_matrix._tcp` SRV, (3.5) A/AAAA on 8448 — `Host` and certificate are
//!    the delegated name (with its port in 3.1 and 3.2). Anything else (no answer, non-200, bad
//!    JSON, `m.server` not a server name) is an error and the next steps run on the original
//!    name;
//! 4. `_matrix-fed._tcp.<hostname>` SRV, 5. the deprecated `_matrix._tcp.<hostname>` SRV,
//! 6. A/AAAA on 8448 — `Host` and certificate are the original host name.
//!
//! SRV targets are used in order of priority, then of weight (heaviest first); a target of `.`
//! means "no service". `.well-known` answers are cached per the spec's recommendations: the
//! answer's `Cache-Control: max-age` or `Expires` (no-store/no-cache count as zero), 24 hours by
//! default, at least [`WELL_KNOWN_MIN_CACHE`] (as Synapse does), at most 48 hours; errors are
//! cached for 10 minutes, doubled on each consecutive failure, up to an hour. The final
//! destination is cached as long as its DNS records (and its `.well-known` answer) are valid,
//! at most an hour. Both caches are bounded maps. Concurrent resolutions of one server name
//! wait for the first one and share its result.

use std::{
    collections::HashSet,
    net::{IpAddr, Ipv6Addr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use hickory_resolver::{
    TokioResolver,
    config::{LookupIpStrategy, NameServerConfigGroup, ResolveHosts, ResolverConfig, ResolverOpts},
    name_server::TokioConnectionProvider,
};
use ruma::{OwnedServerName, ServerName};

use super::transport::{Destination, Transport, failed};
use crate::{
    Result,
    util::bounded::{BoundedMap, Evict},
};

/// The default port of federation.
pub const DEFAULT_PORT: u16 = 8448;
/// The largest `.well-known/matrix/server` body read.
pub const MAX_WELL_KNOWN_BYTES: usize = 50 * 1024;
/// Redirects followed when fetching `.well-known/matrix/server`.
pub const MAX_WELL_KNOWN_REDIRECTS: usize = 5;
/// The time for the whole `.well-known` fetch, redirects included.
pub const WELL_KNOWN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a `.well-known` answer without cache headers is kept.
pub const WELL_KNOWN_DEFAULT_CACHE: Duration = Duration::from_secs(24 * 3600);
/// The longest a `.well-known` answer is kept.
pub const WELL_KNOWN_MAX_CACHE: Duration = Duration::from_secs(48 * 3600);
/// The shortest a valid `.well-known` answer is kept.
pub const WELL_KNOWN_MIN_CACHE: Duration = Duration::from_secs(5 * 60);
/// How long the first `.well-known` error is kept (doubled for each consecutive one).
pub const WELL_KNOWN_ERROR_CACHE: Duration = Duration::from_secs(10 * 60);
/// The longest a `.well-known` error is kept.
pub const WELL_KNOWN_MAX_ERROR_CACHE: Duration = Duration::from_secs(3600);
/// The longest a resolved destination is kept.
pub const MAX_DESTINATION_CACHE: Duration = Duration::from_secs(3600);
/// The time for a whole resolution (`.well-known` and DNS).
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(30);
/// Entries of each cache.
pub const CACHE_ENTRIES: usize = 10_000;

/// How the resolver finds things.
#[derive(Clone, Debug, Default)]
pub struct ResolverSettings {
    /// Ask this DNS server (UDP and TCP) instead of the system's.
    pub dns_server: Option<SocketAddr>,
    /// DER certificates trusted besides the public web's roots.
    pub extra_roots: Vec<Vec<u8>>,
    /// Whether non-public addresses (loopback, private networks…) may be contacted.
    pub allow_private: bool,
}

/// The server-name resolver, with its caches and the transport it fetches `.well-known` with.
pub struct Resolver {
    dns: TokioResolver,
    transport: Transport,
    well_known: BoundedMap<String, WellKnownEntry>,
    destinations: BoundedMap<OwnedServerName, DestinationEntry>,
    /// One resolution at a time per server name: others wait for it and read the cache.
    in_flight: BoundedMap<OwnedServerName, Arc<tokio::sync::Mutex<()>>>,
}

/// A cached `.well-known` outcome: the delegated server name, or `None` after an error.
struct WellKnownEntry {
    delegated: Option<OwnedServerName>,
    expires: Instant,
    /// Consecutive failures (for the back-off).
    failures: u32,
}

impl Evict for WellKnownEntry {
    fn stale(&self, now: Instant) -> bool {
        self.expires <= now
    }
}

struct DestinationEntry {
    destination: Destination,
    expires: Instant,
}

impl Evict for DestinationEntry {
    fn stale(&self, now: Instant) -> bool {
        self.expires <= now
    }
}

/// A host taken apart: an IP address or a DNS name.
enum Host {
    Ip(IpAddr),
    Name(String),
}

fn parse_host(host: &str) -> Host {
    if let Some(Ok(ip)) = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .map(|inner| inner.parse::<Ipv6Addr>())
    {
        return Host::Ip(IpAddr::V6(ip));
    }
    match host.parse::<std::net::Ipv4Addr>() {
        Ok(ip) => Host::Ip(IpAddr::V4(ip)),
        Err(_) => Host::Name(host.to_owned()),
    }
}

/// The name as a fully qualified DNS name (no search domains).
fn fqdn(name: &str) -> String {
    if name.ends_with('.') {
        name.to_owned()
    } else {
        format!("{name}.")
    }
}

impl Resolver {
    /// A resolver with `settings`.
    pub fn new(settings: ResolverSettings) -> Result<Resolver> {
        let mut options = ResolverOpts::default();
        options.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        options.cache_size = 1024;
        options.timeout = Duration::from_secs(5);
        options.attempts = 2;
        let builder = match settings.dns_server {
            Some(server) => {
                options.use_hosts_file = ResolveHosts::Never;
                let servers = NameServerConfigGroup::from_ips_clear(&[server.ip()], server.port(), true);
                let config = ResolverConfig::from_parts(None, vec![], servers);
                TokioResolver::builder_with_config(config, TokioConnectionProvider::default())
            }
            None => TokioResolver::builder_tokio()
                .map_err(|e| crate::Error::Internal(format!("Cannot read the system's DNS configuration: {e}")))?,
        };
        Ok(Resolver {
            dns: builder.with_options(options).build(),
            transport: Transport::new(&settings.extra_roots, settings.allow_private),
            well_known: BoundedMap::new(CACHE_ENTRIES),
            destinations: BoundedMap::new(CACHE_ENTRIES),
            in_flight: BoundedMap::new(CACHE_ENTRIES),
        })
    }

    /// The transport `.well-known` is fetched with (same trust and address rules).
    pub fn transport(&self) -> &Transport {
        &self.transport
    }

    /// Where to send requests for `server_name`.
    pub async fn resolve(&self, server_name: &ServerName) -> Result<Destination> {
        if let Some(destination) = self.cached(server_name) {
            return Ok(destination);
        }
        let lock = self.in_flight.get_or_insert_with(
            server_name,
            || server_name.to_owned(),
            || Arc::new(tokio::sync::Mutex::new(())),
            |lock| Arc::clone(lock),
        );
        let _resolving = lock.lock().await;
        if let Some(destination) = self.cached(server_name) {
            return Ok(destination);
        }
        let (destination, valid_until) = tokio::time::timeout(RESOLVE_TIMEOUT, self.resolve_uncached(server_name))
            .await
            .map_err(|_| failed(format!("Timed out resolving {server_name}")))??;
        let valid_until = valid_until.min(Instant::now() + MAX_DESTINATION_CACHE);
        if valid_until > Instant::now() {
            self.destinations.insert(
                server_name.to_owned(),
                DestinationEntry {
                    destination: destination.clone(),
                    expires: valid_until,
                },
            );
        }
        Ok(destination)
    }

    /// Forgets the cached destination of `server_name` (say, after it could not be reached),
    /// so the next [`resolve`](Self::resolve) looks it up again (`.well-known` answers stay
    /// cached).
    pub fn forget(&self, server_name: &ServerName) {
        self.destinations.remove(server_name);
    }

    fn cached(&self, server_name: &ServerName) -> Option<Destination> {
        let now = Instant::now();
        self.destinations.with(server_name, |entry| {
            entry.filter(|e| e.expires > now).map(|e| e.destination.clone())
        })
    }

    async fn resolve_uncached(&self, server_name: &ServerName) -> Result<(Destination, Instant)> {
        let port = server_name.port();
        let hostname = match parse_host(server_name.host()) {
            // Step 1: an IP literal.
            Host::Ip(ip) => {
                let destination = Destination {
                    addrs: vec![SocketAddr::new(ip, port.unwrap_or(DEFAULT_PORT))],
                    host: server_name.to_string(),
                    tls_name: ip.to_string(),
                };
                return Ok((destination, Instant::now() + MAX_DESTINATION_CACHE));
            }
            Host::Name(name) => name,
        };
        // Step 2: a host name with an explicit port.
        if let Some(port) = port {
            let (addrs, valid_until) = self.lookup_ip(&hostname, port).await?;
            let destination = Destination {
                addrs,
                host: server_name.to_string(),
                tls_name: hostname,
            };
            return Ok((destination, valid_until));
        }
        // Step 3: .well-known.
        let (delegated, well_known_until) = self.well_known(&hostname).await;
        if let Some(delegated) = delegated {
            let port = delegated.port();
            let (destination, valid_until) = match parse_host(delegated.host()) {
                // 3.1: an IP literal.
                Host::Ip(ip) => (
                    Destination {
                        addrs: vec![SocketAddr::new(ip, port.unwrap_or(DEFAULT_PORT))],
                        host: delegated.to_string(),
                        tls_name: ip.to_string(),
                    },
                    Instant::now() + MAX_DESTINATION_CACHE,
                ),
                // 3.2: a host name with a port.
                Host::Name(name) if port.is_some() => {
                    let (addrs, valid_until) = self.lookup_ip(&name, port.unwrap_or(DEFAULT_PORT)).await?;
                    (
                        Destination {
                            addrs,
                            host: delegated.to_string(),
                            tls_name: name,
                        },
                        valid_until,
                    )
                }
                // 3.3 to 3.5: SRV, deprecated SRV, A/AAAA on 8448.
                Host::Name(name) => self.srv_or_default(&name).await?,
            };
            return Ok((destination, valid_until.min(well_known_until)));
        }
        // Steps 4 to 6.
        let (destination, valid_until) = self.srv_or_default(&hostname).await?;
        Ok((destination, valid_until.min(well_known_until)))
    }

    /// SRV `_matrix-fed._tcp`, then `_matrix._tcp`, then A/AAAA on 8448; `Host` and the
    /// certificate name are `name`.
    async fn srv_or_default(&self, name: &str) -> Result<(Destination, Instant)> {
        let (addrs, valid_until) = match self.srv(name).await? {
            Some(found) => found,
            None => self.lookup_ip(name, DEFAULT_PORT).await?,
        };
        Ok((
            Destination {
                addrs,
                host: name.to_owned(),
                tls_name: name.to_owned(),
            },
            valid_until,
        ))
    }

    /// The addresses of the SRV records of `name` (`_matrix-fed._tcp`, then `_matrix._tcp`),
    /// `None` when there are none.
    async fn srv(&self, name: &str) -> Result<Option<(Vec<SocketAddr>, Instant)>> {
        for service in ["_matrix-fed._tcp.", "_matrix._tcp."] {
            let query = fqdn(&format!("{service}{name}"));
            let lookup = match self.dns.srv_lookup(query.as_str()).await {
                Ok(lookup) => lookup,
                Err(e) if e.is_no_records_found() || e.is_nx_domain() => continue,
                Err(e) => return Err(failed(format!("Cannot look up {query}: {e}"))),
            };
            let mut records: Vec<_> = lookup.iter().cloned().collect();
            if records.is_empty() {
                continue;
            }
            records.sort_by_key(|r| (r.priority(), std::cmp::Reverse(r.weight())));
            let mut valid_until = lookup.as_lookup().valid_until();
            let mut addrs = Vec::new();
            let mut last_error = None;
            for record in &records {
                let target = record.target().to_ascii();
                if target == "." || target.is_empty() {
                    continue;
                }
                match self.lookup_ip(&target, record.port()).await {
                    Ok((found, until)) => {
                        valid_until = valid_until.min(until);
                        for addr in found {
                            if !addrs.contains(&addr) {
                                addrs.push(addr);
                            }
                        }
                    }
                    Err(e) => last_error = Some(e),
                }
            }
            if addrs.is_empty() {
                return Err(last_error.unwrap_or_else(|| failed(format!("{query} says there is no service"))));
            }
            return Ok(Some((addrs, valid_until)));
        }
        Ok(None)
    }

    /// The A/AAAA addresses of `host` (an IP literal stands for itself) with `port`.
    async fn lookup_ip(&self, host: &str, port: u16) -> Result<(Vec<SocketAddr>, Instant)> {
        if let Host::Ip(ip) = parse_host(host) {
            return Ok((vec![SocketAddr::new(ip, port)], Instant::now() + MAX_DESTINATION_CACHE));
        }
        let query = fqdn(host);
        let lookup = self
            .dns
            .lookup_ip(query.as_str())
            .await
            .map_err(|e| failed(format!("Cannot resolve {host}: {e}")))?;
        let addrs: Vec<SocketAddr> = lookup.iter().map(|ip| SocketAddr::new(ip, port)).collect();
        if addrs.is_empty() {
            return Err(failed(format!("{host} has no address")));
        }
        Ok((addrs, lookup.valid_until()))
    }

    /// The delegated server name of `hostname` per its `.well-known/matrix/server` (`None` after
    /// an error), from the cache or fetched, and until when that holds.
    async fn well_known(&self, hostname: &str) -> (Option<OwnedServerName>, Instant) {
        let now = Instant::now();
        let cached = self.well_known.with(hostname, |entry| {
            let entry = entry?;
            Some((
                (entry.expires > now).then(|| (entry.delegated.clone(), entry.expires)),
                entry.failures,
            ))
        });
        let previous_failures = match cached {
            Some((Some(hit), _)) => return hit,
            Some((None, failures)) => failures,
            None => 0,
        };
        let fetched = tokio::time::timeout(WELL_KNOWN_TIMEOUT, self.fetch_well_known(hostname))
            .await
            .unwrap_or_else(|_| Err(failed(format!("Timed out fetching the .well-known of {hostname}"))));
        let now = Instant::now();
        let entry = match fetched {
            Ok((delegated, lifetime)) => WellKnownEntry {
                delegated: Some(delegated),
                expires: now + lifetime.clamp(WELL_KNOWN_MIN_CACHE, WELL_KNOWN_MAX_CACHE),
                failures: 0,
            },
            Err(e) => {
                tracing::debug!(hostname, error = %e, "no usable .well-known/matrix/server");
                let failures = previous_failures.saturating_add(1);
                let backoff = WELL_KNOWN_ERROR_CACHE
                    .saturating_mul(1 << (failures - 1).min(16))
                    .min(WELL_KNOWN_MAX_ERROR_CACHE);
                WellKnownEntry {
                    delegated: None,
                    expires: now + backoff,
                    failures,
                }
            }
        };
        let result = (entry.delegated.clone(), entry.expires);
        self.well_known.insert(hostname.to_owned(), entry);
        result
    }

    /// Fetches and checks `https://<hostname>/.well-known/matrix/server`: the delegated server
    /// name and how long to keep it.
    async fn fetch_well_known(&self, hostname: &str) -> Result<(OwnedServerName, Duration)> {
        let mut host = hostname.to_owned();
        let mut port = 443;
        let mut path = String::from("/.well-known/matrix/server");
        let mut visited = HashSet::new();
        for _ in 0..=MAX_WELL_KNOWN_REDIRECTS {
            if !visited.insert((host.clone(), port, path.clone())) {
                return Err(failed(format!("The .well-known of {hostname} redirects in a loop")));
            }
            let (addrs, _) = self.lookup_ip(&host, port).await?;
            let bare = host.trim_matches(['[', ']']).to_owned();
            let destination = Destination {
                addrs,
                host: if port == 443 {
                    host.clone()
                } else {
                    format!("{host}:{port}")
                },
                tls_name: bare,
            };
            let request = http::Request::get(path.as_str())
                .header(http::header::ACCEPT, "application/json")
                .body(Vec::new())
                .map_err(|e| failed(format!("Cannot build the .well-known request: {e}")))?;
            let response = self
                .transport
                .send(&destination, request, MAX_WELL_KNOWN_BYTES, WELL_KNOWN_TIMEOUT)
                .await?;
            let status = response.status();
            if status.is_redirection() {
                let location = response
                    .headers()
                    .get(http::header::LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .ok_or_else(|| failed("A .well-known redirect without a Location"))?;
                (host, port, path) = redirect_target(&host, port, location)?;
                continue;
            }
            if status != http::StatusCode::OK {
                return Err(failed(format!("The .well-known of {hostname} answered {status}")));
            }
            let delegated = parse_well_known(response.body())?;
            let lifetime = cache_lifetime(response.headers());
            return Ok((delegated, lifetime));
        }
        Err(failed(format!("The .well-known of {hostname} redirects too often")))
    }
}

/// The `m.server` of a `.well-known/matrix/server` body.
fn parse_well_known(body: &[u8]) -> Result<OwnedServerName> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| failed(format!("The .well-known is not JSON: {e}")))?;
    let server = value
        .as_object()
        .ok_or_else(|| failed("The .well-known is not a JSON object"))?
        .get("m.server")
        .and_then(|s| s.as_str())
        .ok_or_else(|| failed("The .well-known has no m.server string"))?;
    OwnedServerName::try_from(server).map_err(|e| failed(format!("m.server {server:?} is not a server name: {e}")))
}

/// Where a redirect of a `.well-known` fetch at `host:port` leads: an `https://` URL or a path
/// on the same host.
fn redirect_target(host: &str, port: u16, location: &str) -> Result<(String, u16, String)> {
    let bad = || {
        failed(format!(
            "The .well-known redirects to an unusable location {location:?}"
        ))
    };
    if location.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(bad());
    }
    if location.starts_with('/') && !location.starts_with("//") {
        return Ok((host.to_owned(), port, location.to_owned()));
    }
    let (scheme, rest) = location.split_once("://").ok_or_else(bad)?;
    if !scheme.eq_ignore_ascii_case("https") {
        return Err(bad());
    }
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    if authority.contains('@') {
        return Err(bad());
    }
    // The authority has the grammar of a server name (host and optional port).
    let name = <&ServerName>::try_from(authority).map_err(|_| bad())?;
    let path = path.split('#').next().unwrap_or_default();
    let path = if path.is_empty() || path.starts_with('?') {
        format!("/{path}")
    } else {
        path.to_owned()
    };
    Ok((name.host().to_ascii_lowercase(), name.port().unwrap_or(443), path))
}

/// How long a `.well-known` answer may be kept per its headers (`Cache-Control` first, then
/// `Expires`), before the minimum and maximum are applied.
fn cache_lifetime(headers: &http::HeaderMap) -> Duration {
    let mut max_age = None;
    for value in headers.get_all(http::header::CACHE_CONTROL) {
        let Ok(value) = value.to_str() else { continue };
        for directive in value.split(',') {
            let directive = directive.trim().to_ascii_lowercase();
            if directive == "no-store" || directive == "no-cache" {
                return Duration::ZERO;
            }
            if let Some(Ok(seconds)) = directive
                .strip_prefix("max-age=")
                .map(|s| s.trim_matches('"').parse::<u64>())
            {
                max_age = Some(Duration::from_secs(seconds));
            }
        }
    }
    if let Some(max_age) = max_age {
        return max_age;
    }
    if let Some(expires) = headers.get(http::header::EXPIRES).and_then(|v| v.to_str().ok()) {
        // An unparsable Expires means "already expired" (RFC 9111 5.3).
        return parse_http_date(expires)
            .and_then(|at| at.duration_since(SystemTime::now()).ok())
            .unwrap_or(Duration::ZERO);
    }
    WELL_KNOWN_DEFAULT_CACHE
}

/// An IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), the HTTP date format servers must send.
fn parse_http_date(text: &str) -> Option<SystemTime> {
    let parts: Vec<&str> = text.split_ascii_whitespace().collect();
    let [_, day, month, year, time, "GMT"] = parts.as_slice() else {
        return None;
    };
    let day: u32 = day.parse().ok()?;
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .iter()
    .position(|m| m == month)? as u32
        + 1;
    let year: i64 = year.parse().ok()?;
    let mut hms = time.split(':').map(|p| p.parse::<u64>().ok());
    let (h, m, s) = (hms.next()??, hms.next()??, hms.next()??);
    if !(1..=31).contains(&day) || h > 23 || m > 59 || s > 60 || !(1970..=9999).contains(&year) {
        return None;
    }
    // Days since the epoch of a proleptic Gregorian date (Howard Hinnant's algorithm).
    let (y, mo) = if month <= 2 {
        (year - 1, month + 9)
    } else {
        (year, month - 3)
    };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * i64::from(mo) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = u64::try_from(era * 146_097 + doe - 719_468).ok()?;
    Some(UNIX_EPOCH + Duration::from_secs(days * 86_400 + h * 3600 + m * 60 + s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_dates_parse() {
        let t = parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        assert_eq!(t.duration_since(UNIX_EPOCH).unwrap().as_secs(), 784_111_777);
        assert!(parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT").is_none());
        assert!(parse_http_date("garbage").is_none());
    }

    #[test]
    fn cache_headers_decide_the_lifetime() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(cache_lifetime(&headers), WELL_KNOWN_DEFAULT_CACHE);
        headers.insert(http::header::CACHE_CONTROL, "public, max-age=600".parse().unwrap());
        assert_eq!(cache_lifetime(&headers), Duration::from_secs(600));
        headers.insert(http::header::CACHE_CONTROL, "no-store".parse().unwrap());
        assert_eq!(cache_lifetime(&headers), Duration::ZERO);
        let mut headers = http::HeaderMap::new();
        headers.insert(http::header::EXPIRES, "Sun, 06 Nov 1994 08:49:37 GMT".parse().unwrap());
        assert_eq!(cache_lifetime(&headers), Duration::ZERO);
    }

    #[test]
    fn well_known_bodies_are_checked() {
        assert_eq!(
            parse_well_known(br#"{"m.server":"example.org:443"}"#).unwrap(),
            "example.org:443"
        );
        assert!(parse_well_known(b"[]").is_err());
        assert!(parse_well_known(br#"{"m.server":"not a name"}"#).is_err());
        assert!(parse_well_known(br#"{"m.server":1}"#).is_err());
        assert!(parse_well_known(b"\xff\xfe").is_err());
    }

    #[test]
    fn redirects_stay_on_https() {
        assert_eq!(
            redirect_target("a.org", 443, "/x").unwrap(),
            ("a.org".into(), 443, "/x".into())
        );
        assert_eq!(
            redirect_target("a.org", 443, "https://B.org:8443/y?z").unwrap(),
            ("b.org".into(), 8443, "/y?z".into())
        );
        assert_eq!(
            redirect_target("a.org", 443, "https://[::1]").unwrap(),
            ("[::1]".into(), 443, "/".into())
        );
        assert!(redirect_target("a.org", 443, "http://b.org/").is_err());
        assert!(redirect_target("a.org", 443, "https://u@b.org/").is_err());
        assert!(redirect_target("a.org", 443, "//b.org/").is_err());
    }
}
