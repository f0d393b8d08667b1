//! Safe egress: tenants choose the URLs Weft calls, so by default no call may
//! reach loopback, link-local (the cloud metadata address included), private
//! or other internal ranges. The check is made on the addresses actually
//! connected to — after DNS resolution, for every redirect — so DNS rebinding
//! and redirects cannot get around it. An operator may allow ranges
//! explicitly (local development and tests need 127.0.0.1).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct EgressDenied(pub String);

/// Which destinations outbound calls may reach.
#[derive(Clone, Debug, Default)]
pub struct EgressPolicy {
    allow: Vec<IpNet>,
}

impl EgressPolicy {
    /// The default policy plus these explicitly allowed ranges
    /// (comma-separated CIDRs or addresses, e.g. `127.0.0.0/8,10.1.2.3`).
    pub fn allowing(list: &str) -> Result<Self, String> {
        let mut allow = Vec::new();
        for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let net = item
                .parse::<IpNet>()
                .or_else(|_| item.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| format!("`{item}` is not an IP address or CIDR range"))?;
            allow.push(net);
        }
        Ok(Self { allow })
    }

    pub fn check(&self, ip: IpAddr) -> Result<(), EgressDenied> {
        let Some(why) = internal(ip) else {
            return Ok(());
        };
        if self.allow.iter().any(|n| n.contains(&ip)) {
            return Ok(());
        }
        Err(EgressDenied(format!(
            "{ip} is {why}; outbound calls to internal addresses are refused (an operator can allow a range with WEFT_EGRESS_ALLOW)"
        )))
    }
}

fn internal(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => internal_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return internal_v4(v4);
            }
            let seg = v6.segments();
            let first = seg[0];
            if v6.is_loopback() {
                Some("a loopback address")
            } else if v6.is_unspecified() {
                Some("the unspecified address")
            } else if seg[..6] == [0; 6] {
                // IPv4-compatible (::a.b.c.d, deprecated): the IPv4 address.
                internal_v4(Ipv4Addr::from(v6.to_bits() as u32))
                    .or(Some("an IPv4-compatible address"))
            } else if first & 0xfe00 == 0xfc00 {
                Some("a unique local (private) address")
            } else if first & 0xffc0 == 0xfe80 || first & 0xffc0 == 0xfec0 {
                Some("a link-local or site-local address")
            } else if v6.is_multicast() {
                Some("a multicast address")
            } else if seg[..6] == [0, 0, 0, 0, 0xffff, 0] {
                // IPv4-translated (::ffff:0:a.b.c.d, RFC 2765): the IPv4
                // address.
                internal_v4(Ipv4Addr::from(v6.to_bits() as u32))
                    .or(Some("an IPv4-translated address"))
            } else if seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                // NAT64: the IPv4 address it translates to.
                internal_v4(Ipv4Addr::from(v6.to_bits() as u32))
            } else if seg[..3] == [0x64, 0xff9b, 1] {
                Some("a local-use NAT64 address")
            } else if first == 0x2002 {
                // 6to4: the IPv4 address it carries.
                internal_v4(Ipv4Addr::new(
                    (seg[1] >> 8) as u8,
                    seg[1] as u8,
                    (seg[2] >> 8) as u8,
                    seg[2] as u8,
                ))
            } else if seg[..2] == [0x2001, 0] {
                Some("a Teredo tunnel address")
            } else if seg[..2] == [0x2001, 0xdb8] || seg[..4] == [0x100, 0, 0, 0] {
                Some("a documentation or discard address")
            } else {
                None
            }
        }
    }
}

fn internal_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    if ip.is_loopback() {
        Some("a loopback address")
    } else if ip.is_link_local() {
        Some("a link-local address (this range holds the cloud metadata service)")
    } else if ip.is_private() {
        Some("a private address")
    } else if a == 100 && (64..128).contains(&b) {
        Some("a shared (carrier-grade NAT) address")
    } else if a == 0 {
        Some("a 'this network' address")
    } else if ip.is_multicast() || ip.is_broadcast() || a >= 240 {
        Some("a multicast, broadcast or reserved address")
    } else if (a, b, c) == (192, 0, 0) || (a, b) == (198, 18) || (a, b) == (198, 19) {
        Some("a special-purpose address (protocol assignments, benchmarking)")
    } else if matches!(
        (a, b, c),
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) | (192, 88, 99)
    ) {
        Some("a documentation or relay address")
    } else {
        None
    }
}

/// DNS resolution that keeps only the addresses the policy allows.
pub(super) struct GuardedResolver {
    pub policy: Arc<EgressPolicy>,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = Arc::clone(&self.policy);
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut refused = None;
            let allowed: Vec<SocketAddr> = addrs
                .into_iter()
                .filter(|a| match policy.check(a.ip()) {
                    Ok(()) => true,
                    Err(e) => {
                        refused.get_or_insert(e);
                        false
                    }
                })
                .collect();
            if allowed.is_empty() {
                let why = refused.map_or_else(|| "no addresses".to_owned(), |e| e.0);
                return Err(
                    Box::new(EgressDenied(format!("`{host}` resolves to {why}")))
                        as Box<dyn std::error::Error + Send + Sync>,
                );
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn internal_ranges_are_refused_by_default() {
        let p = EgressPolicy::default();
        for bad in [
            "127.0.0.1",
            "169.254.169.254",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
            "::ffff:0:127.0.0.1",
            "::ffff:0:a9fe:a9fe",
            "::127.0.0.1",
            "::169.254.169.254",
            "64:ff9b:1::1",
            "2002:a9fe:a9fe::",
            "fec0::1",
            "2001::1",
            "2001:db8::1",
            "192.0.0.1",
            "192.0.2.2",
            "198.18.0.1",
            "198.51.100.7",
            "203.0.113.9",
        ] {
            assert!(p.check(ip(bad)).is_err(), "{bad} should be refused");
        }
        for good in [
            "93.184.216.34",
            "1.1.1.1",
            "2606:4700::1111",
            "172.32.0.1",
            "100.128.0.1",
            "2002:0808:0808::1",
            "198.20.0.1",
        ] {
            assert!(p.check(ip(good)).is_ok(), "{good} should be allowed");
        }
    }

    #[test]
    fn operators_can_allow_ranges() {
        let p = EgressPolicy::allowing("127.0.0.0/8, 10.9.9.9").unwrap();
        assert!(p.check(ip("127.0.0.1")).is_ok());
        assert!(p.check(ip("10.9.9.9")).is_ok());
        assert!(p.check(ip("10.9.9.8")).is_err());
        assert!(p.check(ip("169.254.169.254")).is_err());
        assert!(EgressPolicy::allowing("nonsense").is_err());
    }
}
