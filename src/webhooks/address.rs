//! Outbound safety: a webhook may not reach an internal address — anything in the IANA special-purpose
//! address registries (private, loopback, link-local/cloud metadata, shared, benchmarking, reserved,
//! documentation, …) or multicast — unless WEBHOOK_ALLOWED_NETWORKS lists its network.
//!
//! The policy is applied twice: when a subscription is made ([`AddressPolicy::check`], which refuses a name if
//! any of its addresses is internal) and when a delivery connects ([`AddressPolicy::resolve`], used by the
//! client's connector, see `connect.rs`): the connection goes only to an address of that very resolution that
//! the policy allowed. Checking one resolution and connecting with another would let a name that answers
//! differently each time (DNS rebinding) reach a forbidden address.
//!
//! Classification: the IANA IPv4 and IPv6 Special-Purpose Address registries as `iprfc::RFC6890` (generated
//! from IANA's XML, every row, including the few marked globally reachable — anycast services no webhook
//! receiver lives on), plus multicast (224.0.0.0/4, ff00::/8: their own registries). IPv6 forms that carry an
//! IPv4 address are judged by that address too (see [`embedded_ipv4`]).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use futures::future::BoxFuture;
use ipnet::IpNet;

/// Why an address is refused.
#[derive(Debug, thiserror::Error)]
pub enum AddressError {
    #[error("invalid webhook URL: {0}")]
    Invalid(String),
    #[error(
        "{host} resolves to {ip}, an internal (IANA special-purpose or multicast) address (see WEBHOOK_ALLOWED_NETWORKS)"
    )]
    Forbidden { host: String, ip: IpAddr },
    #[error("could not resolve {0}")]
    Unresolvable(String),
}

/// Name resolution, shared by the policy check and the delivery connector (tests inject one whose answers
/// change from one lookup to the next).
pub trait Resolve: Send + Sync + 'static {
    fn lookup<'a>(&'a self, host: &'a str, port: u16) -> BoxFuture<'a, std::io::Result<Vec<IpAddr>>>;
}

/// The system resolver (getaddrinfo, through tokio).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemResolver;

impl Resolve for SystemResolver {
    fn lookup<'a>(&'a self, host: &'a str, port: u16) -> BoxFuture<'a, std::io::Result<Vec<IpAddr>>> {
        Box::pin(async move { Ok(tokio::net::lookup_host((host, port)).await?.map(|a| a.ip()).collect()) })
    }
}

/// Which targets are allowed, and how names are resolved.
#[derive(Clone)]
pub struct AddressPolicy {
    pub allowed: Vec<IpNet>,
    resolver: Arc<dyn Resolve>,
}

impl Default for AddressPolicy {
    fn default() -> Self {
        AddressPolicy { allowed: Vec::new(), resolver: Arc::new(SystemResolver) }
    }
}

impl std::fmt::Debug for AddressPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AddressPolicy").field("allowed", &self.allowed).finish_non_exhaustive()
    }
}

/// The IPv4 address an IPv6 address stands for, where the connection actually goes to (or is translated to)
/// that IPv4 host: IPv4-mapped `::ffff:a.b.c.d` (RFC 4291; the socket connects over IPv4) and the NAT64
/// well-known prefix `64:ff9b::/96` (RFC 6052; a NAT64 gateway forwards to the IPv4 host; IANA marks the
/// prefix globally reachable, and with DNS64 it is how IPv6-only clusters reach IPv4 receivers).
fn stands_for_ipv4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = v6.segments();
    let tail = || Ipv4Addr::from(((s[6] as u32) << 16) | s[7] as u32);
    match s {
        [0, 0, 0, 0, 0, 0xffff, _, _] => Some(tail()),
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => Some(tail()),
        _ => None,
    }
}

/// Every IPv4 address embedded in an IPv6 address by a transition mechanism: the two forms of
/// `stands_for_ipv4`, IPv4-compatible `::a.b.c.d` (RFC 4291 §2.5.5.1, deprecated), IPv4-translated
/// `::ffff:0:a.b.c.d` (RFC 2765 SIIT), 6to4 `2002:AABB:CCDD::/48` (RFC 3056) and Teredo `2001:0::/32`
/// (RFC 4380: the server's address, and the client's, bit-inverted in the last 32 bits).
pub fn embedded_ipv4(v6: Ipv6Addr) -> Vec<Ipv4Addr> {
    let s = v6.segments();
    let v4 = |hi: u16, lo: u16| Ipv4Addr::from(((hi as u32) << 16) | lo as u32);
    if let Some(v4) = stands_for_ipv4(v6) {
        return vec![v4];
    }
    match s {
        [0, 0, 0, 0, 0, 0, hi, lo] => vec![v4(hi, lo)],
        [0, 0, 0, 0, 0xffff, 0, hi, lo] => vec![v4(hi, lo)],
        [0x2002, hi, lo, ..] => vec![v4(hi, lo)],
        [0x2001, 0, shi, slo, _, _, chi, clo] => vec![v4(shi, slo), v4(!chi, !clo)],
        _ => Vec::new(),
    }
}

/// Whether `ip` is an internal address (see the module docs).
pub fn internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => iprfc::RFC6890.contains(&ip) || v4.is_multicast(),
        IpAddr::V6(v6) => {
            if let Some(v4) = stands_for_ipv4(v6) {
                // The same destination as the IPv4 address: judged as that address alone.
                return internal(IpAddr::V4(v4));
            }
            // The other embedding prefixes are special-purpose themselves (6to4, Teredo) or deprecated and not
            // registered (compatible, translated): refused when what they carry is.
            iprfc::RFC6890.contains(&ip)
                || v6.is_multicast()
                || embedded_ipv4(v6).into_iter().any(|v4| internal(IpAddr::V4(v4)))
        }
    }
}

/// Split `url` into the host (brackets of an IPv6 literal removed) and port a connection would use; http(s)
/// only.
pub fn target(url: &str) -> Result<(String, u16), AddressError> {
    let parsed: awc::http::Uri = url.parse().map_err(|e| AddressError::Invalid(format!("{url}: {e}")))?;
    let scheme = parsed.scheme_str().unwrap_or("");
    if scheme != "http" && scheme != "https" {
        return Err(AddressError::Invalid(format!("{url}: only http and https URLs are allowed")));
    }
    let host = parsed.host().ok_or_else(|| AddressError::Invalid(format!("{url}: no host")))?;
    let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
    let port = parsed.port_u16().unwrap_or(if scheme == "https" { 443 } else { 80 });
    Ok((host, port))
}

impl AddressPolicy {
    /// Parse WEBHOOK_ALLOWED_NETWORKS (comma-separated CIDRs).
    pub fn parse(list: &str) -> Result<Self, String> {
        let allowed = list
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| s.parse::<IpNet>().map_err(|e| format!("{s:?}: {e}")))
            .collect::<Result<_, _>>()?;
        Ok(AddressPolicy { allowed, ..AddressPolicy::default() })
    }

    /// The same policy, resolving names with `resolver`.
    pub fn with_resolver(self, resolver: Arc<dyn Resolve>) -> Self {
        AddressPolicy { resolver, ..self }
    }

    /// Whether a connection to `ip` is allowed: not internal, or in an allowed network (the explicit
    /// override; an IPv4-mapped address is matched as the IPv4 address it connects to).
    pub fn allows(&self, ip: IpAddr) -> bool {
        let listed = |ip: IpAddr| self.allowed.iter().any(|n| n.contains(&ip));
        let mapped = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4),
            IpAddr::V4(_) => None,
        };
        !internal(ip) || listed(ip) || mapped.is_some_and(listed)
    }

    /// Every address `host` resolves to (an IP literal: itself).
    async fn addresses(&self, host: &str, port: u16) -> Result<Vec<IpAddr>, AddressError> {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let addrs = match host.parse::<IpAddr>() {
            Ok(ip) => vec![ip],
            Err(_) => self.resolver.lookup(host, port).await.map_err(|_| AddressError::Unresolvable(host.into()))?,
        };
        if addrs.is_empty() {
            return Err(AddressError::Unresolvable(host.into()));
        }
        Ok(addrs)
    }

    /// Resolve `host` once and keep the addresses the policy allows: what a delivery may connect to. Fails when
    /// none is allowed.
    pub async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, AddressError> {
        let addrs = self.addresses(host, port).await?;
        let (allowed, refused): (Vec<IpAddr>, Vec<IpAddr>) = addrs.into_iter().partition(|ip| self.allows(*ip));
        if let Some(&ip) = refused.first() {
            if allowed.is_empty() {
                return Err(AddressError::Forbidden { host: host.into(), ip });
            }
            tracing::warn!(host, refused = ?refused, "webhook target resolves to internal addresses too: not used");
        }
        Ok(allowed.into_iter().map(|ip| SocketAddr::new(ip, port)).collect())
    }

    /// Check a URL (when a subscription is made): http(s), a host, and every address it resolves to allowed.
    pub async fn check(&self, url: &str) -> Result<(), AddressError> {
        let (host, port) = target(url)?;
        match self.addresses(&host, port).await?.into_iter().find(|ip| !self.allows(*ip)) {
            Some(ip) => Err(AddressError::Forbidden { host, ip }),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[actix_rt::test]
    async fn internal_targets_are_refused_unless_allowed() {
        let strict = AddressPolicy::default();
        for url in [
            "http://127.0.0.1:8080/hook",
            "http://10.1.2.3/",
            "http://169.254.169.254/latest/meta-data",
            "http://[::1]/",
            "http://[fd00::1]/",
            "http://192.168.0.10/",
            "http://localhost/",
        ] {
            assert!(strict.check(url).await.is_err(), "{url} must be refused");
        }
        assert!(strict.check("ftp://8.8.8.8/").await.is_err(), "only http(s)");
        assert!(strict.check("http://8.8.8.8/hook").await.is_ok());
        let loopback = AddressPolicy::parse("127.0.0.0/8, 10.0.0.0/8").unwrap();
        assert!(loopback.check("http://127.0.0.1:9/").await.is_ok());
        assert!(loopback.check("http://10.9.9.9/").await.is_ok());
        assert!(loopback.check("http://[::ffff:127.0.0.1]:9/").await.is_ok(), "mapped: the same destination");
        assert!(loopback.check("http://169.254.169.254/").await.is_err(), "metadata stays refused");
        assert!(AddressPolicy::parse("not-a-cidr").is_err());
    }

    /// Issue #17, finding 10: special-purpose blocks and IPv6 forms embedding a forbidden IPv4 address.
    #[test]
    fn special_purpose_and_embedded_ipv4_addresses_are_refused() {
        let strict = AddressPolicy::default();
        let accepted = [
            "198.18.0.1",
            "198.19.255.254",
            "240.0.0.1",
            "255.255.255.255",
            "192.0.0.1",
            "192.0.0.170",
            "100.64.0.1",
            "0.1.2.3",
            "224.0.0.1",
            "2001:db8::1",
            "::127.0.0.1",
            "::ffff:0:7f00:1",
            "::ffff:0:a9fe:a9fe",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::7f00:1",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b::10.0.0.1",
            "64:ff9b:1::1",
            "2002:7f00:1::1",
            "2002:a9fe:a9fe::1",
            "2002:808:808::1",
            "2001:0:7f00:1::1",
            "2001:0:808:808::80ff:fffe",
            "::",
            "::1",
            "fe80::1",
            "fc00::1",
            "ff02::1",
            "100::1",
            "3fff::1",
        ]
        .into_iter()
        .filter(|ip| strict.allows(ip.parse().unwrap()))
        .collect::<Vec<_>>();
        assert!(accepted.is_empty(), "these must be refused: {accepted:?}");
        for ip in [
            "8.8.8.8",
            "1.1.1.1",
            "93.184.216.34",
            "198.20.0.1",
            "192.0.1.1",
            "2001:4860:4860::8888",
            "2606:4700:4700::1111",
            "2a00:1450:4001::200e",
            "::ffff:8.8.8.8",
            "64:ff9b::8.8.8.8",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert!(strict.allows(ip), "{ip} is an ordinary public address");
        }
        assert_eq!(embedded_ipv4("2002:7f00:1::1".parse().unwrap()), ["127.0.0.1".parse::<Ipv4Addr>().unwrap()]);
        assert_eq!(
            embedded_ipv4("2001:0:4136:e378:8000:63bf:3fff:fdd2".parse().unwrap()),
            ["65.54.227.120".parse::<Ipv4Addr>().unwrap(), "192.0.2.45".parse().unwrap()],
            "the Teredo example of RFC 4380"
        );
        // The explicit allow-list still overrides.
        let allowed = AddressPolicy::parse("198.18.0.0/15, 2001:db8::/32").unwrap();
        assert!(allowed.allows("198.18.0.1".parse().unwrap()));
        assert!(allowed.allows("2001:db8::1".parse().unwrap()));
        assert!(!allowed.allows("240.0.0.1".parse().unwrap()));
    }

    struct Fixed(Vec<IpAddr>);

    impl Resolve for Fixed {
        fn lookup<'a>(&'a self, _: &'a str, _: u16) -> BoxFuture<'a, std::io::Result<Vec<IpAddr>>> {
            Box::pin(async move { Ok(self.0.clone()) })
        }
    }

    #[actix_rt::test]
    async fn resolve_keeps_only_allowed_addresses() {
        let both = vec!["127.0.0.2".parse().unwrap(), "127.0.0.1".parse().unwrap()];
        let policy = AddressPolicy::parse("127.0.0.1/32").unwrap().with_resolver(Arc::new(Fixed(both)));
        let addrs = policy.resolve("hook.example", 80).await.unwrap();
        assert_eq!(addrs, ["127.0.0.1:80".parse().unwrap()]);
        assert!(policy.check("http://hook.example/").await.is_err(), "a subscription is refused outright");
        let only_forbidden = policy.clone().with_resolver(Arc::new(Fixed(vec!["127.0.0.2".parse().unwrap()])));
        assert!(matches!(only_forbidden.resolve("hook.example", 80).await, Err(AddressError::Forbidden { .. })));
        assert!(matches!(only_forbidden.resolve("[::1]", 80).await, Err(AddressError::Forbidden { .. })));
    }
}
