//! Outbound safety: a webhook may not reach private, loopback, link-local (cloud metadata) or otherwise
//! internal addresses unless WEBHOOK_ALLOWED_NETWORKS lists their network. Checked when a subscription is
//! made and again before every attempt (the name may resolve differently by then).

use std::net::IpAddr;

use ipnet::IpNet;

/// Why an address is refused.
#[derive(Debug, thiserror::Error)]
pub enum AddressError {
    #[error("invalid webhook URL: {0}")]
    Invalid(String),
    #[error(
        "{host} resolves to {ip}, a private, loopback, link-local or reserved address (see WEBHOOK_ALLOWED_NETWORKS)"
    )]
    Forbidden { host: String, ip: IpAddr },
    #[error("could not resolve {0}")]
    Unresolvable(String),
}

/// Which targets are allowed.
#[derive(Debug, Clone, Default)]
pub struct AddressPolicy {
    pub allowed: Vec<IpNet>,
}

fn internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                // 100.64.0.0/10 (carrier-grade NAT) and 0.0.0.0/8.
                || (v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64)
                || v4.octets()[0] == 0
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return internal(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00 // unique local fc00::/7
                || (first & 0xffc0) == 0xfe80 // link-local fe80::/10
        }
    }
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
        Ok(AddressPolicy { allowed })
    }

    fn allows(&self, ip: IpAddr) -> bool {
        !internal(ip) || self.allowed.iter().any(|n| n.contains(&ip))
    }

    /// Check a URL: http(s), a host, and every address it resolves to allowed.
    pub async fn check(&self, url: &str) -> Result<(), AddressError> {
        let parsed: awc::http::Uri = url.parse().map_err(|e| AddressError::Invalid(format!("{url}: {e}")))?;
        let scheme = parsed.scheme_str().unwrap_or("");
        if scheme != "http" && scheme != "https" {
            return Err(AddressError::Invalid(format!("{url}: only http and https URLs are allowed")));
        }
        let host = parsed.host().ok_or_else(|| AddressError::Invalid(format!("{url}: no host")))?;
        let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
        let port = parsed.port_u16().unwrap_or(if scheme == "https" { 443 } else { 80 });
        let addrs: Vec<IpAddr> = match host.parse::<IpAddr>() {
            Ok(ip) => vec![ip],
            Err(_) => tokio::net::lookup_host((host.as_str(), port))
                .await
                .map_err(|_| AddressError::Unresolvable(host.clone()))?
                .map(|a| a.ip())
                .collect(),
        };
        if addrs.is_empty() {
            return Err(AddressError::Unresolvable(host));
        }
        match addrs.into_iter().find(|ip| !self.allows(*ip)) {
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
        assert!(loopback.check("http://169.254.169.254/").await.is_err(), "metadata stays refused");
        assert!(AddressPolicy::parse("not-a-cidr").is_err());
    }
}
