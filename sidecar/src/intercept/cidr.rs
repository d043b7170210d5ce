//! Address ranges of targets: parsed once from `upstream.addresses` and used
//! both to write iptables rules and to pick the target of a redirected
//! connection, so the two can never disagree about what an address means.

use std::fmt;
use std::net::IpAddr;

/// An address range such as `10.0.0.0/24` or `fd00::7/128`, stored with the
/// host bits cleared (as iptables shows it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses what `upstream.addresses` accepts: a bare address (a /32 or
    /// /128) or `ADDR/LEN`. IPv4-mapped IPv6 addresses become IPv4, because
    /// the kernel sends them as IPv4 and iptables (not ip6tables) sees them.
    pub fn parse(s: &str) -> Option<Self> {
        let (ip, prefix) = cardgate_crds::config::parse_cidr(s)?;
        Some(Self::new(ip, prefix))
    }

    fn new(ip: IpAddr, prefix: u8) -> Self {
        if let IpAddr::V6(v6) = ip
            && prefix >= 96
            && let Some(v4) = v6.to_ipv4_mapped()
        {
            return Self::new(IpAddr::V4(v4), prefix - 96);
        }
        match ip {
            IpAddr::V4(v4) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
                Self {
                    network: IpAddr::V4((u32::from(v4) & mask).into()),
                    prefix,
                }
            }
            IpAddr::V6(v6) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
                Self {
                    network: IpAddr::V6((u128::from(v6) & mask).into()),
                    prefix,
                }
            }
        }
    }

    /// Whether `ip` is inside the range; IPv4-mapped IPv6 addresses count as
    /// the IPv4 address they carry.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(ip) & mask == u32::from(net)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(ip) & mask == u128::from(net)
            }
            _ => false,
        }
    }

    /// Prefix length: longer is more specific.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether the range is IPv4 (iptables) rather than IPv6 (ip6tables).
    pub fn is_ipv4(&self) -> bool {
        self.network.is_ipv4()
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn bare_addresses_are_single_hosts() {
        let c = Cidr::parse("10.96.0.7").unwrap();
        assert_eq!(c.to_string(), "10.96.0.7/32");
        assert!(c.contains(ip("10.96.0.7")));
        assert!(!c.contains(ip("10.96.0.8")));
        let c = Cidr::parse("fd00::7").unwrap();
        assert_eq!(c.to_string(), "fd00::7/128");
        assert!(c.contains(ip("fd00::7")));
        assert!(!c.contains(ip("fd00::8")));
    }

    #[test]
    fn host_bits_are_cleared_like_iptables_does() {
        assert_eq!(
            Cidr::parse("10.0.0.77/24").unwrap().to_string(),
            "10.0.0.0/24"
        );
        assert_eq!(
            Cidr::parse("fd00:1:2:3::9/64").unwrap().to_string(),
            "fd00:1:2:3::/64"
        );
        assert_eq!(Cidr::parse("1.2.3.4/0").unwrap().to_string(), "0.0.0.0/0");
    }

    #[test]
    fn ranges_contain_their_addresses_only() {
        let c = Cidr::parse("10.0.0.0/24").unwrap();
        assert!(c.contains(ip("10.0.0.0")));
        assert!(c.contains(ip("10.0.0.255")));
        assert!(!c.contains(ip("10.0.1.0")));
        assert!(!c.contains(ip("fd00::1")), "families never mix");
        let all = Cidr::parse("0.0.0.0/0").unwrap();
        assert!(all.contains(ip("203.0.113.9")));
        assert!(!all.contains(ip("::1")));
    }

    #[test]
    fn ipv4_mapped_addresses_are_ipv4() {
        let c = Cidr::parse("::ffff:10.0.0.7").unwrap();
        assert!(c.is_ipv4());
        assert_eq!(c.to_string(), "10.0.0.7/32");
        let c = Cidr::parse("10.0.0.7").unwrap();
        assert!(c.contains(ip("::ffff:10.0.0.7")));
    }

    #[test]
    fn malformed_ranges_are_refused() {
        for bad in [
            "",
            "10.0.0.0/33",
            "fd00::/129",
            "10.0.0/24",
            "host.example",
            "10.0.0.1/x",
        ] {
            assert!(Cidr::parse(bad).is_none(), "{bad:?}");
        }
    }
}
