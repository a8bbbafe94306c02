//! Address lists for allowlists: parsed once (configuration time, or when a
//! record is fetched), matched per request by walking prebuilt
//! address/mask pairs, like nginx's access module.

use std::net::IpAddr;

/// Most entries in one list (a record's `allow` field or `env=VAR`).
pub const MAX_ENTRIES: usize = 1024;

/// One network: address bits already masked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cidr {
    V4 { addr: u32, mask: u32 },
    V6 { addr: u128, mask: u128 },
}

impl Cidr {
    /// `10.0.0.0/8`, `2001:db8::/32`, or a single address (`/32`, `/128`).
    /// Host bits set below the prefix are an error, as in nginx ("low
    /// address bits are meaningless") but fatal here: a typo in an
    /// allowlist should not silently widen or narrow it.
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let s = s.trim();
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let ip: IpAddr = addr
            .parse()
            .map_err(|_| format!("\"{s}\" is not an IP address or CIDR"))?;
        let len = match len {
            Some(l) => Some(
                l.parse::<u8>()
                    .map_err(|_| format!("\"{s}\" has an invalid prefix length"))?,
            ),
            None => None,
        };
        match ip {
            IpAddr::V4(v4) => {
                let len = len.unwrap_or(32);
                if len > 32 {
                    return Err(format!("\"{s}\" has a prefix longer than 32"));
                }
                let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
                let addr = u32::from(v4);
                if addr & !mask != 0 {
                    return Err(format!("\"{s}\" has host bits set below /{len}"));
                }
                Ok(Cidr::V4 { addr, mask })
            }
            IpAddr::V6(v6) => {
                let len = len.unwrap_or(128);
                if len > 128 {
                    return Err(format!("\"{s}\" has a prefix longer than 128"));
                }
                let mask = if len == 0 {
                    0
                } else {
                    u128::MAX << (128 - len)
                };
                let addr = u128::from(v6);
                if addr & !mask != 0 {
                    return Err(format!("\"{s}\" has host bits set below /{len}"));
                }
                Ok(Cidr::V6 { addr, mask })
            }
        }
    }

    /// Whether `ip` is inside. An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`)
    /// matches IPv4 networks, as nginx's access module does.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self, normalize(ip)) {
            (Cidr::V4 { addr, mask }, IpAddr::V4(v4)) => u32::from(v4) & mask == *addr,
            (Cidr::V6 { addr, mask }, IpAddr::V6(v6)) => u128::from(v6) & mask == *addr,
            _ => false,
        }
    }
}

/// Whether `list` admits every address of `ip`'s family (holds a `/0` of
/// it, as `dyncert_allow all` does): then where a client says it comes
/// from makes no difference.
pub fn admits_any_address_like(list: &[Cidr], ip: IpAddr) -> bool {
    list.iter().any(|c| {
        matches!(
            (c, normalize(ip)),
            (Cidr::V4 { mask: 0, .. }, IpAddr::V4(_)) | (Cidr::V6 { mask: 0, .. }, IpAddr::V6(_))
        )
    })
}

fn normalize(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// Parses a comma- (or space-) separated list, as found in `env=VAR` and
/// in a record's `allow` field. Empty items are skipped; an empty list is
/// valid and then nothing matches: a list that names no address (empty,
/// blank, only separators) admits no one, never everyone.
pub fn parse_list(s: &str) -> Result<Vec<Cidr>, String> {
    let items: Vec<&str> = s
        .split(|c: char| c == ',' || c.is_ascii_whitespace())
        .filter(|i| !i.is_empty())
        .collect();
    if items.len() > MAX_ENTRIES {
        return Err(format!("more than {MAX_ENTRIES} addresses"));
    }
    items.into_iter().map(Cidr::parse).collect()
}

/// Whether any network of `list` contains `ip`.
pub fn matches(list: &[Cidr], ip: IpAddr) -> bool {
    list.iter().any(|c| c.contains(ip))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(a, b, c, d))
    }

    fn v6(s: &str) -> Option<IpAddr> {
        s.parse::<Ipv6Addr>().ok().map(IpAddr::V6)
    }

    #[test]
    fn ipv4_networks_and_single_addresses_match() {
        let net = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(net.contains(v4(10, 1, 2, 3)));
        assert!(!net.contains(v4(11, 0, 0, 1)));
        let one = Cidr::parse("192.0.2.7").unwrap();
        assert!(one.contains(v4(192, 0, 2, 7)));
        assert!(!one.contains(v4(192, 0, 2, 8)));
        let all = Cidr::parse("0.0.0.0/0").unwrap();
        assert!(all.contains(v4(203, 0, 113, 9)));
        assert!(!all.contains(v6("2001:db8::1").unwrap()));
    }

    #[test]
    fn ipv6_networks_match_and_mapped_ipv4_matches_ipv4_rules() {
        let net = Cidr::parse("2001:db8::/32").unwrap();
        assert!(net.contains(v6("2001:db8:ffff::1").unwrap()));
        assert!(!net.contains(v6("2001:db9::1").unwrap()));
        assert!(!net.contains(v4(10, 0, 0, 1)));
        let v4net = Cidr::parse("127.0.0.0/8").unwrap();
        assert!(v4net.contains(v6("::ffff:127.0.0.1").unwrap()));
        let loopback6 = Cidr::parse("::1").unwrap();
        assert!(loopback6.contains(v6("::1").unwrap()));
    }

    #[test]
    fn malformed_entries_are_refused_with_the_entry_named() {
        for bad in [
            "10.0.0.1/8",
            "10.0.0.0/33",
            "2001:db8::1/32",
            "::/129",
            "example.com",
            "10.0.0.0/x",
            "300.1.1.1",
            "",
        ] {
            let e = Cidr::parse(bad).unwrap_err();
            assert!(e.contains(bad.trim()), "{bad}: {e}");
        }
    }

    #[test]
    fn lists_split_on_commas_and_spaces_and_are_bounded() {
        let l = parse_list("10.0.0.0/8, 192.0.2.1 ,2001:db8::/32,,").unwrap();
        assert_eq!(l.len(), 3);
        assert!(matches(&l, v4(192, 0, 2, 1)));
        assert!(!matches(&l, v4(192, 0, 2, 2)));
        assert!(parse_list("").unwrap().is_empty());
        assert!(parse_list("10.0.0.0/8,bogus").is_err());
        let many = vec!["10.0.0.1"; MAX_ENTRIES + 1].join(",");
        assert!(parse_list(&many).is_err());
    }

    #[test]
    fn a_list_naming_no_address_admits_no_one() {
        for empty in ["", " ", ",", " , ,", "\t\n", ",,,"] {
            let l = parse_list(empty).unwrap();
            assert!(l.is_empty(), "{empty:?}");
            for ip in [
                v4(127, 0, 0, 1),
                v4(0, 0, 0, 0),
                v6("::1").unwrap(),
                v6("::ffff:10.0.0.1").unwrap(),
            ] {
                assert!(!matches(&l, ip), "{empty:?} admits {ip}");
            }
        }
    }
}
