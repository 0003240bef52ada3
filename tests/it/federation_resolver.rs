//! Server discovery and the outbound transport of federation (spec, server-server API,
//! "Resolving server names"), called as a library: a DNS server (hickory-server, zone `test.`)
//! and TLS servers with certificates of a test CA run in this process on 127.0.0.x addresses;
//! each test resolves a server name, sends a real request through the transport and checks the
//! addresses, the `Host` header and the SNI the server saw. Every test uses its own 127.0.0.x
//! addresses so they run in parallel (ports 443 and 8448 need root, which the tests run as).

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    str::FromStr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use hearth::services::federation::{
    resolver::{Resolver, ResolverSettings},
    transport::{Destination, Transport},
};
use hickory_server::{
    ServerFuture,
    authority::{Catalog, ZoneType},
    proto::rr::{
        Name, RData, Record,
        rdata::{A, AAAA, CNAME, SOA, SRV},
    },
    store::in_memory::InMemoryAuthority,
};
use rcgen::{BasicConstraints, Certificate, CertificateParams, IsCa, KeyPair};
use ruma::ServerName;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream, UdpSocket},
};
use tokio_rustls::{
    TlsAcceptor,
    rustls::{
        ServerConfig,
        pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer},
    },
};

const TIMEOUT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------------
// DNS

/// A DNS record of the test zone.
enum Rec {
    A(&'static str, Ipv4Addr),
    Aaaa(&'static str, Ipv6Addr),
    Cname(&'static str, &'static str),
    /// name, priority, weight, port, target
    Srv(&'static str, u16, u16, u16, &'static str),
}

fn name(text: &str) -> Name {
    Name::from_str(&format!("{text}.")).unwrap()
}

/// Starts a DNS server for zone `test.` with `records` (TTL `ttl`) on 127.0.0.1, UDP and TCP.
async fn dns(records: &[Rec], ttl: u32) -> SocketAddr {
    let origin = name("test");
    let mut authority = InMemoryAuthority::empty(origin.clone(), ZoneType::Primary, false);
    let soa = SOA::new(name("ns.test"), name("admin.test"), 1, 3600, 600, 86400, 0);
    authority.upsert_mut(Record::from_rdata(origin.clone(), 3600, RData::SOA(soa)), 1);
    for rec in records {
        let record = match rec {
            Rec::A(n, ip) => Record::from_rdata(name(n), ttl, RData::A(A(*ip))),
            Rec::Aaaa(n, ip) => Record::from_rdata(name(n), ttl, RData::AAAA(AAAA(*ip))),
            Rec::Cname(n, target) => Record::from_rdata(name(n), ttl, RData::CNAME(CNAME(name(target)))),
            Rec::Srv(n, priority, weight, port, target) => Record::from_rdata(
                name(n),
                ttl,
                RData::SRV(SRV::new(*priority, *weight, *port, name(target))),
            ),
        };
        assert!(authority.upsert_mut(record, 1));
    }
    let mut catalog = Catalog::new();
    catalog.upsert(origin.into(), vec![Arc::new(authority)]);
    // A UDP port whose TCP twin is free too (tried again when another test holds it).
    let mut sockets = None;
    for _ in 0..50 {
        let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let port = udp.local_addr().unwrap().port();
        if let Ok(tcp) = TcpListener::bind(("127.0.0.1", port)).await {
            sockets = Some((udp, tcp, port));
            break;
        }
    }
    let (udp, tcp, port) = sockets.expect("a UDP and TCP port pair on 127.0.0.1");
    let mut server = ServerFuture::new(catalog);
    server.register_socket(udp);
    server.register_listener(tcp, Duration::from_secs(5));
    tokio::spawn(async move {
        let _ = server.block_until_done().await;
    });
    SocketAddr::from(([127, 0, 0, 1], port))
}

// ---------------------------------------------------------------------------------------------
// Certificates

struct Ca {
    cert: Certificate,
    key: KeyPair,
}

impl Ca {
    fn new() -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        Ca { cert, key }
    }

    fn der(&self) -> Vec<u8> {
        self.cert.der().to_vec()
    }

    /// A TLS acceptor whose certificate is valid for `names` (host names or IP addresses).
    fn acceptor(&self, names: &[&str]) -> TlsAcceptor {
        let key = KeyPair::generate().unwrap();
        let params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone(), CertificateDer::from(self.der())],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .unwrap();
        TlsAcceptor::from(Arc::new(config))
    }
}

// ---------------------------------------------------------------------------------------------
// TLS test servers

/// A request a test server received.
#[derive(Clone, Debug)]
struct Seen {
    sni: Option<String>,
    host: String,
    path: String,
}

/// A canned answer: status, extra headers, body.
type Answer = (u16, Vec<(&'static str, String)>, Vec<u8>);

/// What a test server answers.
#[derive(Clone, Default)]
struct Script {
    /// The answer to `GET /.well-known/matrix/server` (404 if none).
    well_known: Option<Answer>,
    /// Reads requests and never answers.
    silent: bool,
    /// Answers with bytes that are not HTTP.
    garbage: bool,
    /// Closes the connection after one answer (without saying so in the answer).
    close_after_one: bool,
    /// Answers any request with these bytes, then closes.
    raw: Option<Vec<u8>>,
}

fn well_known(body: &str) -> Script {
    Script {
        well_known: Some((200, vec![], body.as_bytes().to_vec())),
        ..Script::default()
    }
}

struct TestServer {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    connections: Arc<AtomicUsize>,
}

impl TestServer {
    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn well_known_fetches(&self) -> usize {
        self.seen()
            .iter()
            .filter(|s| s.path == "/.well-known/matrix/server")
            .count()
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// Starts a TLS server on `addr` (port 0: any) with a certificate for `names`.
async fn serve(addr: SocketAddr, acceptor: TlsAcceptor, script: Script) -> TestServer {
    let listener = TcpListener::bind(addr).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let connections = Arc::new(AtomicUsize::new(0));
    let (seen2, connections2) = (seen.clone(), connections.clone());
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { return };
            connections2.fetch_add(1, Ordering::SeqCst);
            let (acceptor, script, seen) = (acceptor.clone(), script.clone(), seen2.clone());
            tokio::spawn(async move {
                let _ = tokio::time::timeout(TIMEOUT, connection(tcp, acceptor, script, seen)).await;
            });
        }
    });
    TestServer {
        addr,
        seen,
        connections,
    }
}

async fn connection(tcp: TcpStream, acceptor: TlsAcceptor, script: Script, seen: Arc<Mutex<Vec<Seen>>>) {
    let Ok(mut tls) = acceptor.accept(tcp).await else {
        return;
    };
    let sni = tls.get_ref().1.server_name().map(str::to_owned);
    let mut buf = Vec::new();
    for _ in 0..100 {
        // One request head.
        let (host, path) = loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut request = httparse::Request::new(&mut headers);
            if let Ok(httparse::Status::Complete(len)) = request.parse(&buf) {
                let host = request
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("host"))
                    .map(|h| String::from_utf8_lossy(h.value).into_owned())
                    .unwrap_or_default();
                let path = request.path.unwrap_or_default().to_owned();
                buf.drain(..len);
                break (host, path);
            }
            let mut chunk = [0u8; 4096];
            match tls.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        seen.lock().unwrap().push(Seen {
            sni: sni.clone(),
            host,
            path: path.clone(),
        });
        if script.silent {
            tokio::time::sleep(TIMEOUT).await;
            return;
        }
        if let Some(raw) = &script.raw {
            let _ = tls.write_all(raw).await;
            let _ = tls.shutdown().await;
            return;
        }
        if script.garbage {
            let _ = tls.write_all(b"\x00\xffHTTP/9 \r\n\r\n\r\n\x01garbage").await;
            let _ = tls.shutdown().await;
            return;
        }
        let response = if path == "/.well-known/matrix/server" {
            match &script.well_known {
                Some((status, headers, body)) => {
                    let mut head = format!("HTTP/1.1 {status} X\r\nContent-Length: {}\r\n", body.len());
                    for (k, v) in headers {
                        head.push_str(&format!("{k}: {v}\r\n"));
                    }
                    head.push_str("\r\n");
                    let mut out = head.into_bytes();
                    out.extend_from_slice(body);
                    out
                }
                None => b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\n{}".to_vec(),
            }
        } else if path == "/chunked" {
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{\"ok\"\r\n6;ext=1\r\n:true}\r\n0\r\nX-Trailer: 1\r\n\r\n"
                .to_vec()
        } else {
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{\"ok\":true}".to_vec()
        };
        if tls.write_all(&response).await.is_err() || tls.flush().await.is_err() {
            return;
        }
        if script.close_after_one {
            let _ = tls.shutdown().await;
            return;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers

fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, last)
}

fn at(last: u8, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(ip(last)), port)
}

/// A free TCP port on 127.0.0.`last`.
async fn free_port(last: u8) -> u16 {
    TcpListener::bind(at(last, 0))
        .await
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn resolver(ca: &Ca, dns_server: SocketAddr) -> Resolver {
    Resolver::new(ResolverSettings {
        dns_server: Some(dns_server),
        extra_roots: vec![ca.der()],
        allow_private: true,
    })
    .unwrap()
}

async fn get(transport: &Transport, dest: &Destination, path: &str) -> hearth::Result<http::Response<Vec<u8>>> {
    let request = http::Request::get(path).body(Vec::new()).unwrap();
    transport.send(dest, request, 64 * 1024, TIMEOUT).await
}

/// Resolves `server_name`, sends `GET /_matrix/test` and checks what the server at `expected`
/// saw: the Host header and the SNI.
async fn resolve_and_check(
    resolver: &Resolver,
    server_name: &str,
    target: &TestServer,
    expected_addrs: &[SocketAddr],
    host: &str,
    sni: Option<&str>,
) {
    let server_name = <&ServerName>::try_from(server_name).unwrap();
    let dest = tokio::time::timeout(TIMEOUT, resolver.resolve(server_name))
        .await
        .expect("resolution finishes")
        .unwrap();
    assert_eq!(dest.addrs, expected_addrs, "addresses of {server_name}");
    assert_eq!(dest.host, host, "Host of {server_name}");
    let response = get(resolver.transport(), &dest, "/_matrix/test").await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.body(), br#"{"ok":true}"#);
    let seen = target.seen();
    let request = seen
        .iter()
        .find(|s| s.path == "/_matrix/test")
        .expect("the target server saw the request");
    assert_eq!(request.host, host);
    assert_eq!(request.sni.as_deref(), sni);
}

// ---------------------------------------------------------------------------------------------
// Step 1: IP literals

#[tokio::test]
async fn step_1_ip_literal_uses_port_8448_and_the_ip_certificate() {
    let ca = Ca::new();
    let target = serve(at(11, 8448), ca.acceptor(&["127.0.0.11"]), Script::default()).await;
    let resolver = resolver(&ca, dns(&[], 60).await);
    resolve_and_check(&resolver, "127.0.0.11", &target, &[at(11, 8448)], "127.0.0.11", None).await;
}

#[tokio::test]
async fn step_1_ip_literal_with_port_keeps_the_port_in_host() {
    let ca = Ca::new();
    let port = free_port(12).await;
    let target = serve(at(12, port), ca.acceptor(&["127.0.0.12"]), Script::default()).await;
    let resolver = resolver(&ca, dns(&[], 60).await);
    let name = format!("127.0.0.12:{port}");
    resolve_and_check(&resolver, &name, &target, &[at(12, port)], &name, None).await;
}

#[tokio::test]
async fn step_1_ipv6_literal() {
    let ca = Ca::new();
    let loopback = SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 0);
    let target = serve(loopback, ca.acceptor(&["::1"]), Script::default()).await;
    let port = target.addr.port();
    let resolver = resolver(&ca, dns(&[], 60).await);
    let name = format!("[::1]:{port}");
    let expected = SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), port);
    resolve_and_check(&resolver, &name, &target, &[expected], &name, None).await;
    let dest = resolver
        .resolve(<&ServerName>::try_from("[::1]").unwrap())
        .await
        .unwrap();
    assert_eq!(dest.addrs, [SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 8448)]);
    assert_eq!((dest.host.as_str(), dest.tls_name.as_str()), ("[::1]", "::1"));
}

// ---------------------------------------------------------------------------------------------
// Step 2: a host name with a port (through a CNAME)

#[tokio::test]
async fn step_2_hostname_with_port_follows_cnames_and_keeps_the_port_in_host() {
    let ca = Ca::new();
    let port = free_port(13).await;
    let target = serve(at(13, port), ca.acceptor(&["alias13.test"]), Script::default()).await;
    let dns = dns(
        &[Rec::Cname("alias13.test", "real13.test"), Rec::A("real13.test", ip(13))],
        60,
    )
    .await;
    let resolver = resolver(&ca, dns);
    let name = format!("alias13.test:{port}");
    resolve_and_check(&resolver, &name, &target, &[at(13, port)], &name, Some("alias13.test")).await;
    // No .well-known was asked for: the explicit port skips it.
    assert_eq!(target.well_known_fetches(), 0);
}

// ---------------------------------------------------------------------------------------------
// Step 3: .well-known delegation

#[tokio::test]
async fn step_3_1_well_known_to_an_ip_literal_with_port() {
    let ca = Ca::new();
    let port = free_port(15).await;
    let wk = serve(
        at(14, 443),
        ca.acceptor(&["wk14.test"]),
        well_known(&format!(r#"{{"m.server":"127.0.0.15:{port}"}}"#)),
    )
    .await;
    let target = serve(at(15, port), ca.acceptor(&["127.0.0.15"]), Script::default()).await;
    let resolver = resolver(&ca, dns(&[Rec::A("wk14.test", ip(14))], 60).await);
    let host = format!("127.0.0.15:{port}");
    resolve_and_check(&resolver, "wk14.test", &target, &[at(15, port)], &host, None).await;
    let fetch = &wk.seen()[0];
    assert_eq!(
        (fetch.host.as_str(), fetch.sni.as_deref()),
        ("wk14.test", Some("wk14.test"))
    );
}

#[tokio::test]
async fn step_3_2_well_known_to_a_hostname_with_port() {
    let ca = Ca::new();
    let port = free_port(17).await;
    let _wk = serve(
        at(16, 443),
        ca.acceptor(&["wk16.test"]),
        well_known(&format!(r#"{{"m.server":"target17.test:{port}"}}"#)),
    )
    .await;
    let target = serve(at(17, port), ca.acceptor(&["target17.test"]), Script::default()).await;
    let dns = dns(&[Rec::A("wk16.test", ip(16)), Rec::A("target17.test", ip(17))], 60).await;
    let resolver = resolver(&ca, dns);
    let host = format!("target17.test:{port}");
    resolve_and_check(
        &resolver,
        "wk16.test",
        &target,
        &[at(17, port)],
        &host,
        Some("target17.test"),
    )
    .await;
}

#[tokio::test]
async fn step_3_3_well_known_to_a_hostname_with_matrix_fed_srv() {
    let ca = Ca::new();
    let port = free_port(19).await;
    let _wk = serve(
        at(18, 443),
        ca.acceptor(&["wk18.test"]),
        well_known(r#"{"m.server":"deleg18.test"}"#),
    )
    .await;
    let target = serve(at(19, port), ca.acceptor(&["deleg18.test"]), Script::default()).await;
    let dns = dns(
        &[
            Rec::A("wk18.test", ip(18)),
            // Priority first, then weight: 19 comes before 29, which comes before 39.
            Rec::Srv("_matrix-fed._tcp.deleg18.test", 20, 100, 8448, "srv39.test"),
            Rec::Srv("_matrix-fed._tcp.deleg18.test", 10, 1, 8448, "srv29.test"),
            Rec::Srv("_matrix-fed._tcp.deleg18.test", 10, 50, port, "srv19.test"),
            // The deprecated service is not used when the new one exists.
            Rec::Srv("_matrix._tcp.deleg18.test", 0, 0, 8448, "srv39.test"),
            Rec::A("srv19.test", ip(19)),
            Rec::A("srv29.test", ip(29)),
            Rec::A("srv39.test", ip(39)),
            Rec::A("deleg18.test", ip(49)),
        ],
        60,
    )
    .await;
    let resolver = resolver(&ca, dns);
    let expected = [at(19, port), at(29, 8448), at(39, 8448)];
    resolve_and_check(
        &resolver,
        "wk18.test",
        &target,
        &expected,
        "deleg18.test",
        Some("deleg18.test"),
    )
    .await;
}

#[tokio::test]
async fn step_3_4_well_known_to_a_hostname_with_deprecated_matrix_srv() {
    let ca = Ca::new();
    let port = free_port(21).await;
    let _wk = serve(
        at(20, 443),
        ca.acceptor(&["wk20.test"]),
        well_known(r#"{"m.server":"deleg20.test"}"#),
    )
    .await;
    let target = serve(at(21, port), ca.acceptor(&["deleg20.test"]), Script::default()).await;
    let dns = dns(
        &[
            Rec::A("wk20.test", ip(20)),
            Rec::Srv("_matrix._tcp.deleg20.test", 10, 10, port, "srv21.test"),
            Rec::A("srv21.test", ip(21)),
        ],
        60,
    )
    .await;
    let resolver = resolver(&ca, dns);
    resolve_and_check(
        &resolver,
        "wk20.test",
        &target,
        &[at(21, port)],
        "deleg20.test",
        Some("deleg20.test"),
    )
    .await;
}

#[tokio::test]
async fn step_3_5_well_known_to_a_hostname_without_srv_uses_8448() {
    let ca = Ca::new();
    let _wk = serve(
        at(22, 443),
        ca.acceptor(&["wk22.test"]),
        well_known(r#"{"m.server":"deleg22.test"}"#),
    )
    .await;
    let target = serve(at(23, 8448), ca.acceptor(&["deleg22.test"]), Script::default()).await;
    let dns = dns(&[Rec::A("wk22.test", ip(22)), Rec::A("deleg22.test", ip(23))], 60).await;
    let resolver = resolver(&ca, dns);
    resolve_and_check(
        &resolver,
        "wk22.test",
        &target,
        &[at(23, 8448)],
        "deleg22.test",
        Some("deleg22.test"),
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// Steps 4 to 6: no (valid) .well-known

#[tokio::test]
async fn step_4_no_well_known_then_matrix_fed_srv_of_the_hostname() {
    let ca = Ca::new();
    let port = free_port(25).await;
    // The .well-known answers 404.
    let wk = serve(at(24, 443), ca.acceptor(&["host24.test"]), Script::default()).await;
    let target = serve(at(25, port), ca.acceptor(&["host24.test"]), Script::default()).await;
    let dns = dns(
        &[
            Rec::A("host24.test", ip(24)),
            Rec::Srv("_matrix-fed._tcp.host24.test", 0, 0, port, "srv25.test"),
            Rec::A("srv25.test", ip(25)),
        ],
        60,
    )
    .await;
    let resolver = resolver(&ca, dns);
    resolve_and_check(
        &resolver,
        "host24.test",
        &target,
        &[at(25, port)],
        "host24.test",
        Some("host24.test"),
    )
    .await;
    assert_eq!(wk.well_known_fetches(), 1);
}

#[tokio::test]
async fn step_5_no_well_known_then_deprecated_matrix_srv_of_the_hostname() {
    let ca = Ca::new();
    let port = free_port(27).await;
    // Nothing listens on 127.0.0.26:443 at all.
    let target = serve(at(27, port), ca.acceptor(&["host26.test"]), Script::default()).await;
    let dns = dns(
        &[
            Rec::A("host26.test", ip(26)),
            Rec::Srv("_matrix._tcp.host26.test", 0, 0, port, "srv27.test"),
            Rec::A("srv27.test", ip(27)),
        ],
        60,
    )
    .await;
    let resolver = resolver(&ca, dns);
    resolve_and_check(
        &resolver,
        "host26.test",
        &target,
        &[at(27, port)],
        "host26.test",
        Some("host26.test"),
    )
    .await;
}

#[tokio::test]
async fn step_6_invalid_well_known_then_a_records_on_8448() {
    let ca = Ca::new();
    // Not JSON.
    let wk = serve(at(28, 443), ca.acceptor(&["host28.test"]), well_known("{not json")).await;
    let target = serve(at(28, 8448), ca.acceptor(&["host28.test"]), Script::default()).await;
    let resolver = resolver(&ca, dns(&[Rec::A("host28.test", ip(28))], 60).await);
    resolve_and_check(
        &resolver,
        "host28.test",
        &target,
        &[at(28, 8448)],
        "host28.test",
        Some("host28.test"),
    )
    .await;
    assert_eq!(wk.well_known_fetches(), 1);
}

#[tokio::test]
async fn step_6_aaaa_records_on_8448() {
    let ca = Ca::new();
    let v6 = SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 8448);
    let target = serve(v6, ca.acceptor(&["v6only.test"]), Script::default()).await;
    let resolver = resolver(&ca, dns(&[Rec::Aaaa("v6only.test", Ipv6Addr::LOCALHOST)], 60).await);
    resolve_and_check(
        &resolver,
        "v6only.test",
        &target,
        &[v6],
        "v6only.test",
        Some("v6only.test"),
    )
    .await;
}

#[tokio::test]
async fn a_well_known_whose_m_server_is_not_a_server_name_is_ignored() {
    let ca = Ca::new();
    let port = free_port(51).await;
    let _wk = serve(
        at(50, 443),
        ca.acceptor(&["host50.test"]),
        well_known(r#"{"m.server":"bad name:99999999"}"#),
    )
    .await;
    let target = serve(at(51, port), ca.acceptor(&["host50.test"]), Script::default()).await;
    let dns = dns(
        &[
            Rec::A("host50.test", ip(50)),
            Rec::Srv("_matrix-fed._tcp.host50.test", 0, 0, port, "srv51.test"),
            Rec::A("srv51.test", ip(51)),
        ],
        60,
    )
    .await;
    let resolver = resolver(&ca, dns);
    resolve_and_check(
        &resolver,
        "host50.test",
        &target,
        &[at(51, port)],
        "host50.test",
        Some("host50.test"),
    )
    .await;
}

#[tokio::test]
async fn well_known_redirects_are_followed_with_the_new_host() {
    let ca = Ca::new();
    let script = Script {
        well_known: Some((
            301,
            vec![("Location", "https://other53.test/.well-known/matrix/server".to_owned())],
            Vec::new(),
        )),
        ..Script::default()
    };
    let first = serve(at(52, 443), ca.acceptor(&["host52.test"]), script).await;
    let second = serve(
        at(53, 443),
        ca.acceptor(&["other53.test"]),
        well_known(r#"{"m.server":"127.0.0.54:8448"}"#),
    )
    .await;
    let target = serve(at(54, 8448), ca.acceptor(&["127.0.0.54"]), Script::default()).await;
    let dns = dns(&[Rec::A("host52.test", ip(52)), Rec::A("other53.test", ip(53))], 60).await;
    let resolver = resolver(&ca, dns);
    resolve_and_check(
        &resolver,
        "host52.test",
        &target,
        &[at(54, 8448)],
        "127.0.0.54:8448",
        None,
    )
    .await;
    assert_eq!(first.well_known_fetches(), 1);
    let redirected = &second.seen()[0];
    assert_eq!(
        (redirected.host.as_str(), redirected.sni.as_deref()),
        ("other53.test", Some("other53.test"))
    );
}

// ---------------------------------------------------------------------------------------------
// Caching

#[tokio::test]
async fn a_well_known_answer_with_max_age_is_not_fetched_twice() {
    let ca = Ca::new();
    let mut script = well_known(r#"{"m.server":"deleg31.test"}"#);
    if let Some((_, headers, _)) = &mut script.well_known {
        headers.push(("Cache-Control", "public, max-age=3600".to_owned()));
    }
    let wk = serve(at(30, 443), ca.acceptor(&["host30.test"]), script).await;
    let target = serve(at(31, 8448), ca.acceptor(&["deleg31.test"]), Script::default()).await;
    // TTL 0: the DNS answers are not kept, so only the .well-known cache avoids the fetch.
    let dns = dns(&[Rec::A("host30.test", ip(30)), Rec::A("deleg31.test", ip(31))], 0).await;
    let resolver = resolver(&ca, dns);
    for _ in 0..3 {
        resolve_and_check(
            &resolver,
            "host30.test",
            &target,
            &[at(31, 8448)],
            "deleg31.test",
            Some("deleg31.test"),
        )
        .await;
    }
    assert_eq!(wk.well_known_fetches(), 1);
}

#[tokio::test]
async fn a_well_known_error_is_not_retried_at_once() {
    let ca = Ca::new();
    let script = Script {
        well_known: Some((500, vec![], b"{}".to_vec())),
        ..Script::default()
    };
    let wk = serve(at(32, 443), ca.acceptor(&["host32.test"]), script).await;
    let target = serve(at(32, 8448), ca.acceptor(&["host32.test"]), Script::default()).await;
    let resolver = resolver(&ca, dns(&[Rec::A("host32.test", ip(32))], 0).await);
    for _ in 0..3 {
        resolve_and_check(
            &resolver,
            "host32.test",
            &target,
            &[at(32, 8448)],
            "host32.test",
            Some("host32.test"),
        )
        .await;
    }
    assert_eq!(wk.well_known_fetches(), 1);
}

// ---------------------------------------------------------------------------------------------
// Refusals and bad answers

#[tokio::test]
async fn private_addresses_are_refused_without_connecting() {
    let ca = Ca::new();
    let port = free_port(33).await;
    let target = serve(
        at(33, port),
        ca.acceptor(&["127.0.0.33", "host33.test"]),
        Script::default(),
    )
    .await;
    let resolver = Resolver::new(ResolverSettings {
        dns_server: Some(dns(&[Rec::A("host33.test", ip(33))], 60).await),
        extra_roots: vec![ca.der()],
        allow_private: false,
    })
    .unwrap();
    for name in [format!("127.0.0.33:{port}"), format!("host33.test:{port}")] {
        let dest = resolver
            .resolve(<&ServerName>::try_from(name.as_str()).unwrap())
            .await
            .unwrap();
        assert_eq!(dest.addrs, [at(33, port)]);
        assert!(get(resolver.transport(), &dest, "/_matrix/test").await.is_err());
    }
    // A well-known on a private address is not fetched either.
    let dest = resolver
        .resolve(<&ServerName>::try_from("host33.test").unwrap())
        .await
        .unwrap();
    assert_eq!(dest.addrs, [at(33, 8448)]);
    assert_eq!(target.connections(), 0);
}

#[tokio::test]
async fn a_certificate_from_an_unknown_ca_is_refused() {
    let ca = Ca::new();
    let stranger = Ca::new();
    let port = free_port(34).await;
    let _target = serve(at(34, port), stranger.acceptor(&["127.0.0.34"]), Script::default()).await;
    let resolver = resolver(&ca, dns(&[], 60).await);
    let dest = resolver
        .resolve(<&ServerName>::try_from(format!("127.0.0.34:{port}").as_str()).unwrap())
        .await
        .unwrap();
    let error = get(resolver.transport(), &dest, "/_matrix/test").await.unwrap_err();
    assert!(error.to_string().contains("TLS"), "{error}");
}

#[tokio::test]
async fn a_certificate_for_another_name_is_refused() {
    let ca = Ca::new();
    let port = free_port(35).await;
    let _target = serve(at(35, port), ca.acceptor(&["other.test"]), Script::default()).await;
    let resolver = resolver(&ca, dns(&[Rec::A("host35.test", ip(35))], 60).await);
    for name in [format!("127.0.0.35:{port}"), format!("host35.test:{port}")] {
        let dest = resolver
            .resolve(<&ServerName>::try_from(name.as_str()).unwrap())
            .await
            .unwrap();
        assert!(get(resolver.transport(), &dest, "/_matrix/test").await.is_err());
    }
}

#[tokio::test]
async fn an_oversized_well_known_is_an_error_and_resolution_goes_on() {
    let ca = Ca::new();
    let big = format!(r#"{{"m.server":"127.0.0.99","pad":"{}"}}"#, "x".repeat(60 * 1024));
    let wk = serve(at(36, 443), ca.acceptor(&["host36.test"]), well_known(&big)).await;
    let target = serve(at(36, 8448), ca.acceptor(&["host36.test"]), Script::default()).await;
    let resolver = resolver(&ca, dns(&[Rec::A("host36.test", ip(36))], 60).await);
    resolve_and_check(
        &resolver,
        "host36.test",
        &target,
        &[at(36, 8448)],
        "host36.test",
        Some("host36.test"),
    )
    .await;
    assert_eq!(wk.well_known_fetches(), 1);
    // The transport itself refuses a body over the limit.
    let dest = Destination {
        addrs: vec![at(36, 443)],
        host: "host36.test".into(),
        tls_name: "host36.test".into(),
    };
    let request = http::Request::get("/.well-known/matrix/server")
        .body(Vec::new())
        .unwrap();
    let error = resolver
        .transport()
        .send(&dest, request, 50 * 1024, TIMEOUT)
        .await
        .unwrap_err();
    assert!(error.to_string().contains("exceeds"), "{error}");
}

#[tokio::test]
async fn a_server_that_never_answers_times_out() {
    let ca = Ca::new();
    let port = free_port(37).await;
    let silent = Script {
        silent: true,
        ..Script::default()
    };
    let target = serve(at(37, port), ca.acceptor(&["127.0.0.37"]), silent).await;
    let transport = Transport::new(&[ca.der()], true);
    let dest = Destination {
        addrs: vec![at(37, port)],
        host: "127.0.0.37".into(),
        tls_name: "127.0.0.37".into(),
    };
    let request = http::Request::get("/_matrix/test").body(Vec::new()).unwrap();
    let error = transport
        .send(&dest, request, 1024, Duration::from_secs(1))
        .await
        .unwrap_err();
    assert!(error.to_string().contains("Timed out"), "{error}");
    assert_eq!(target.seen().len(), 1);
}

#[tokio::test]
async fn garbage_answers_are_errors() {
    let ca = Ca::new();
    let port = free_port(38).await;
    let garbage = Script {
        garbage: true,
        ..Script::default()
    };
    let _target = serve(at(38, port), ca.acceptor(&["127.0.0.38"]), garbage).await;
    let transport = Transport::new(&[ca.der()], true);
    let dest = Destination {
        addrs: vec![at(38, port)],
        host: "127.0.0.38".into(),
        tls_name: "127.0.0.38".into(),
    };
    assert!(get(&transport, &dest, "/_matrix/test").await.is_err());
}

#[tokio::test]
async fn chunked_bodies_are_read_and_connections_are_reused() {
    let ca = Ca::new();
    let port = free_port(40).await;
    let target = serve(at(40, port), ca.acceptor(&["127.0.0.40"]), Script::default()).await;
    let transport = Transport::new(&[ca.der()], true);
    let dest = Destination {
        // The first address refuses connections: the next one is tried.
        addrs: vec![at(41, 1), at(40, port)],
        host: format!("127.0.0.40:{port}"),
        tls_name: "127.0.0.40".into(),
    };
    let response = get(&transport, &dest, "/chunked").await.unwrap();
    assert_eq!(response.body(), br#"{"ok":true}"#);
    for _ in 0..3 {
        let response = get(&transport, &dest, "/_matrix/test").await.unwrap();
        assert_eq!(response.body(), br#"{"ok":true}"#);
        assert_eq!(response.headers()["content-type"], "application/json");
    }
    assert_eq!(target.seen().len(), 4);
    assert_eq!(target.connections(), 1);
}

#[tokio::test]
async fn a_kept_connection_the_server_closed_is_replaced() {
    let ca = Ca::new();
    let port = free_port(42).await;
    let script = Script {
        close_after_one: true,
        ..Script::default()
    };
    let target = serve(at(42, port), ca.acceptor(&["127.0.0.42"]), script).await;
    let transport = Transport::new(&[ca.der()], true);
    let dest = Destination {
        addrs: vec![at(42, port)],
        host: "127.0.0.42".into(),
        tls_name: "127.0.0.42".into(),
    };
    for _ in 0..3 {
        let response = get(&transport, &dest, "/_matrix/test").await.unwrap();
        assert_eq!(response.body(), br#"{"ok":true}"#);
    }
    assert_eq!(target.seen().len(), 3);
    assert_eq!(target.connections(), 3);
}

#[tokio::test]
async fn concurrent_resolutions_of_one_name_fetch_the_well_known_once() {
    let ca = Ca::new();
    let wk = serve(
        at(43, 443),
        ca.acceptor(&["host43.test"]),
        well_known(r#"{"m.server":"127.0.0.44:8448"}"#),
    )
    .await;
    let resolver = resolver(&ca, dns(&[Rec::A("host43.test", ip(43))], 60).await);
    let name = <&ServerName>::try_from("host43.test").unwrap();
    let (a, b, c, d) = tokio::join!(
        resolver.resolve(name),
        resolver.resolve(name),
        resolver.resolve(name),
        resolver.resolve(name)
    );
    for dest in [a, b, c, d] {
        let dest = dest.unwrap();
        assert_eq!(dest.addrs, [at(44, 8448)]);
        assert_eq!(dest.host, "127.0.0.44:8448");
    }
    assert_eq!(wk.well_known_fetches(), 1);
    // Forgetting the destination resolves again, but the .well-known answer stays cached.
    resolver.forget(name);
    assert_eq!(resolver.resolve(name).await.unwrap().addrs, [at(44, 8448)]);
    assert_eq!(wk.well_known_fetches(), 1);
}

#[tokio::test]
async fn a_well_known_server_that_never_answers_is_given_up_on() {
    let ca = Ca::new();
    let silent = Script {
        silent: true,
        ..Script::default()
    };
    let wk = serve(at(45, 443), ca.acceptor(&["host45.test"]), silent).await;
    let target = serve(at(45, 8448), ca.acceptor(&["host45.test"]), Script::default()).await;
    let resolver = resolver(&ca, dns(&[Rec::A("host45.test", ip(45))], 60).await);
    resolve_and_check(
        &resolver,
        "host45.test",
        &target,
        &[at(45, 8448)],
        "host45.test",
        Some("host45.test"),
    )
    .await;
    assert_eq!(wk.well_known_fetches(), 1);
}

#[tokio::test]
async fn malformed_and_hostile_answers_are_errors_without_panics() {
    let ca = Ca::new();
    let acceptor = ca.acceptor(&["127.0.0.46"]);
    let transport = Transport::new(&[ca.der()], true);
    let huge_head = format!("HTTP/1.1 200 OK\r\nX-A: {}\r\n\r\n", "a".repeat(40 * 1024));
    let many_headers = format!("HTTP/1.1 200 OK\r\n{}\r\n", "X-A: 1\r\n".repeat(101));
    let mut cases: Vec<(Vec<u8>, bool)> = vec![
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n".to_vec(),
            false,
        ),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2000\r\n\r\n".to_vec(), false),
        (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n".to_vec(), false),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc".to_vec(), false),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n".to_vec(),
            false,
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\n".to_vec(),
            false,
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n800\r\n".to_vec(),
            false,
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcXX0\r\n\r\n".to_vec(),
            false,
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc".to_vec(),
            false,
        ),
        (b"HTTP/1.1 101 Switching Protocols\r\n\r\n".to_vec(), false),
        (b"HTTP/1.1 200 OK\r\n".to_vec(), false),
        (b"".to_vec(), false),
        (huge_head.into_bytes(), false),
        (many_headers.into_bytes(), false),
        (
            format!("HTTP/1.1 200 OK\r\n\r\n{}", "x".repeat(2000)).into_bytes(),
            false,
        ),
        // Fine: a body up to the end of the connection, an informational answer first.
        (b"HTTP/1.1 200 OK\r\n\r\n{\"ok\":true}".to_vec(), true),
        (
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n".to_vec(),
            true,
        ),
    ];
    // Random bytes, some behind a valid status line: any outcome but a panic or a hang.
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in 0..40 {
        let mut bytes = if i % 2 == 0 {
            b"HTTP/1.1 200 OK\r\n".to_vec()
        } else {
            Vec::new()
        };
        for _ in 0..(i * 37 % 500) {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let alphabet = b"\r\n:0123456789abcdefHTTP/ \x00\xff";
            bytes.push(alphabet[(seed % alphabet.len() as u64) as usize]);
        }
        cases.push((bytes, false));
    }
    for (i, (raw, fine)) in cases.into_iter().enumerate() {
        let script = Script {
            raw: Some(raw),
            ..Script::default()
        };
        let server = serve(at(46, 0), acceptor.clone(), script).await;
        let dest = Destination {
            addrs: vec![server.addr],
            host: "127.0.0.46".into(),
            tls_name: "127.0.0.46".into(),
        };
        let request = http::Request::get("/_matrix/test").body(Vec::new()).unwrap();
        let outcome = transport.send(&dest, request, 1024, Duration::from_secs(5)).await;
        if fine {
            assert!(outcome.is_ok(), "case {i}: {outcome:?}");
        } else if i < 15 {
            assert!(outcome.is_err(), "case {i} must fail");
        }
    }
}
