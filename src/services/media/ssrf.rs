//! The address policy of URL previews (server-side request forgery protection): which IP
//! addresses the server may connect to on a user's behalf.
//!
//! Every address a host name resolves to is classified, and the fetch connects only to a vetted
//! address (never re-resolving the name), on the first request and on every redirect. Denied by
//! default: anything that is not a public unicast address (loopback, RFC 1918 private, link-local
//! including the cloud metadata address 169.254.169.254, CGNAT, benchmarking, documentation,
//! multicast, broadcast, unspecified, IPv6 unique-local and link-local, …) and IPv4-mapped or
//! other IPv4-embedding IPv6 addresses whose IPv4 address is denied. A configured allow list
//! wins over the built-in rules; a configured deny list wins over everything.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// An address range in CIDR notation (`10.0.0.0/8`, `::1/128`, or a bare address).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpRange {
    addr: IpAddr,
    prefix: u8,
}

impl IpRange {
    /// Parses `address[/prefix]`.
    pub fn parse(text: &str) -> Result<IpRange, String> {
        let bad = || format!("\"{text}\" is not an address range such as 10.0.0.0/8 or fc00::/7");
        let (addr, prefix) = match text.trim().split_once('/') {
            Some((a, p)) => (a, Some(p.parse::<u8>().map_err(|_| bad())?)),
            None => (text.trim(), None),
        };
        let addr: IpAddr = addr.trim_matches(['[', ']']).parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        if prefix > max {
            return Err(bad());
        }
        Ok(IpRange { addr, prefix })
    }

    /// Whether `ip` is in the range (IPv4 and IPv6 ranges never contain each other's addresses).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// The configured lists on top of the built-in rules.
#[derive(Clone, Debug, Default)]
pub struct AddressPolicy {
    /// Ranges allowed although the built-in rules deny them.
    pub allow: Vec<IpRange>,
    /// Ranges always denied.
    pub deny: Vec<IpRange>,
}

impl AddressPolicy {
    /// Whether the server may connect to `ip`.
    pub fn permits(&self, ip: IpAddr) -> bool {
        if self.deny.iter().any(|r| r.contains(ip)) {
            return false;
        }
        self.allow.iter().any(|r| r.contains(ip)) || is_public(ip)
    }
}

/// Whether `ip` is a public unicast address (the built-in rules, without the configured lists).
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn in_v4(ip: Ipv4Addr, net: [u8; 4], prefix: u32) -> bool {
    let mask = u32::MAX.checked_shl(32 - prefix).unwrap_or(0);
    u32::from(ip) & mask == u32::from(Ipv4Addr::from(net)) & mask
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    const DENIED: &[([u8; 4], u32)] = &[
        ([0, 0, 0, 0], 8),       // "this network", unspecified
        ([10, 0, 0, 0], 8),      // private
        ([100, 64, 0, 0], 10),   // CGNAT (shared address space)
        ([127, 0, 0, 0], 8),     // loopback
        ([169, 254, 0, 0], 16),  // link-local, cloud metadata (169.254.169.254)
        ([172, 16, 0, 0], 12),   // private
        ([192, 0, 0, 0], 24),    // IETF protocol assignments
        ([192, 0, 2, 0], 24),    // documentation
        ([192, 88, 99, 0], 24),  // 6to4 relay anycast
        ([192, 168, 0, 0], 16),  // private
        ([198, 18, 0, 0], 15),   // benchmarking
        ([198, 51, 100, 0], 24), // documentation
        ([203, 0, 113, 0], 24),  // documentation
        ([224, 0, 0, 0], 4),     // multicast
        ([240, 0, 0, 0], 4),     // reserved, broadcast
    ];
    !DENIED.iter().any(|(net, prefix)| in_v4(ip, *net, *prefix))
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    // IPv6 forms that carry an IPv4 address are judged by that address.
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    let s = ip.segments();
    let bits = u128::from(ip);
    let in_net = |net: u128, prefix: u32| {
        let mask = u128::MAX.checked_shl(128 - prefix).unwrap_or(0);
        bits & mask == net & mask
    };
    if ip.is_unspecified() || ip.is_loopback() {
        return false;
    }
    // IPv4-compatible (deprecated, ::a.b.c.d), NAT64 (64:ff9b::/96) and 6to4 (2002::/16).
    if in_net(0, 96) || in_net(0x0064_ff9b << 96, 96) {
        let v4 = Ipv4Addr::from((bits & 0xffff_ffff) as u32);
        return is_public_v4(v4);
    }
    if s[0] == 0x2002 {
        let v4 = Ipv4Addr::new((s[1] >> 8) as u8, s[1] as u8, (s[2] >> 8) as u8, s[2] as u8);
        return is_public_v4(v4);
    }
    const DENIED: &[(u128, u32)] = &[
        (0x0064_ff9b_0001 << 80, 48), // local-use NAT64
        (0x0100 << 112, 64),          // discard-only
        (0x2001_0000 << 96, 32),      // Teredo
        (0x2001_0002 << 96, 48),      // benchmarking
        (0x2001_0db8 << 96, 32),      // documentation
        (0x2001_0010 << 96, 28),      // ORCHID
        (0xfc00 << 112, 7),           // unique-local
        (0xfe80 << 112, 10),          // link-local
        (0xfec0 << 112, 10),          // site-local (deprecated)
        (0xff00 << 112, 8),           // multicast
    ];
    !DENIED.iter().any(|(net, prefix)| in_net(*net, *prefix))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_classifier_denies_special_addresses_and_allows_public_ones() {
        for denied in [
            "127.0.0.1",
            "127.1.2.3",
            "0.0.0.0",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "169.254.0.1",
            "100.64.0.1",
            "100.127.255.254",
            "224.0.0.1",
            "255.255.255.255",
            "198.18.0.1",
            "192.0.2.1",
            "::",
            "::1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::ffff:10.0.0.1",
            "::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::",
            "2001:db8::1",
        ] {
            assert!(!is_public(ip(denied)), "{denied} must be denied");
            assert!(!AddressPolicy::default().permits(ip(denied)), "{denied} must be denied");
        }
        for public in [
            "1.1.1.1",
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700:4700::1111",
            "::ffff:8.8.8.8",
            "2002:0808:0808::",
        ] {
            assert!(is_public(ip(public)), "{public} is public");
        }
    }

    #[test]
    fn configured_lists_override_the_rules() {
        let policy = AddressPolicy {
            allow: vec![IpRange::parse("127.0.0.2/32").unwrap()],
            deny: vec![
                IpRange::parse("8.8.0.0/16").unwrap(),
                IpRange::parse("2606:4700::/32").unwrap(),
            ],
        };
        assert!(policy.permits(ip("127.0.0.2")));
        assert!(!policy.permits(ip("127.0.0.1")));
        assert!(!policy.permits(ip("::ffff:127.0.0.1")));
        assert!(!policy.permits(ip("8.8.8.8")));
        assert!(!policy.permits(ip("2606:4700:4700::1111")));
        assert!(policy.permits(ip("1.1.1.1")));
    }

    #[test]
    fn ranges_parse() {
        assert!(IpRange::parse("10.0.0.0/8").unwrap().contains(ip("10.200.0.1")));
        assert!(IpRange::parse("[::1]").unwrap().contains(ip("::1")));
        assert!(!IpRange::parse("10.0.0.0/8").unwrap().contains(ip("::ffff:10.0.0.1")));
        assert!(IpRange::parse("0.0.0.0/0").unwrap().contains(ip("1.2.3.4")));
        assert!(IpRange::parse("10.0.0.0/33").is_err());
        assert!(IpRange::parse("nope").is_err());
    }
}
