//! The outbound network policy (server-side request forgery guard).
//! Connections from the operator's config file or made with the admin token
//! may point anywhere; connections created or changed with a domain token may
//! only reach public addresses and the networks of `[delivery]
//! allowed_networks`. The check is made on the address actually connected to:
//! [`GuardedResolver`] filters what DNS answers at send time (so a name that
//! later resolves to `127.0.0.1` is still refused), and [`EgressPolicy::check_url`]
//! covers URLs whose host is an IP literal, which never reach a resolver.
//! The policy, its resolver, and the clients connections send over
//! ([`Clients`], [`client_for`]: each connection's TLS settings and guard).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, LazyLock};

mod clients;
mod network;
pub use clients::{Clients, client_for};
pub use network::IpNet;

/// Why an address may not be reached.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "address {address}{} is not allowed for connections created with a domain token; see [delivery] allowed_networks",
    host.as_ref().map(|host| format!(" (of {host})")).unwrap_or_default()
)]
pub struct AddressRefused {
    pub address: IpAddr,
    /// The name that resolved to it, when the URL had a name.
    pub host: Option<String>,
}

/// Ranges that are not public: this host, private networks, link-local,
/// shared address space (CGNAT), documentation, benchmarking, multicast and
/// reserved ranges (RFC 6890 and its IPv6 counterpart).
static NOT_PUBLIC: LazyLock<Vec<IpNet>> = LazyLock::new(|| {
    [
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.0.0.0/24",
        "192.0.2.0/24",
        "192.88.99.0/24",
        "192.168.0.0/16",
        "198.18.0.0/15",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "224.0.0.0/4",
        "240.0.0.0/4",
        // IPv4-compatible (deprecated), unspecified and loopback.
        "::/96",
        "64:ff9b:1::/48",
        "100::/64",
        "2001::/23",
        "2001:db8::/32",
        "3fff::/20",
        "fc00::/7",
        "fe80::/10",
        "fec0::/10",
        "ff00::/8",
    ]
    .iter()
    .map(|text| text.parse().expect("a valid built-in network"))
    .collect()
});

/// Whether `address` is on the public internet. IPv6 forms that carry an IPv4
/// address (mapped, NAT64, 6to4) are judged by that IPv4 address.
pub fn is_public(address: IpAddr) -> bool {
    if let IpAddr::V6(v6) = address
        && let Some(v4) = embedded_ipv4(v6)
    {
        return is_public(IpAddr::V4(v4));
    }
    !NOT_PUBLIC.iter().any(|network| network.contains(address))
}

fn embedded_ipv4(address: Ipv6Addr) -> Option<Ipv4Addr> {
    if let Some(v4) = address.to_ipv4_mapped() {
        return Some(v4);
    }
    let segments = address.segments();
    let bits = address.to_bits();
    // NAT64 well-known prefix 64:ff9b::/96: the last 32 bits.
    if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return Some(Ipv4Addr::from_bits(bits as u32));
    }
    // 6to4 2002::/16: bits 16 to 48.
    if segments[0] == 0x2002 {
        return Some(Ipv4Addr::from_bits((bits >> 80) as u32));
    }
    None
}

/// Which addresses guarded connections may reach.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EgressPolicy {
    allowed_networks: Vec<IpNet>,
}

impl EgressPolicy {
    pub fn new(allowed_networks: Vec<IpNet>) -> Self {
        Self { allowed_networks }
    }

    /// Public addresses, and any address in `allowed_networks`.
    pub fn allows(&self, address: IpAddr) -> bool {
        is_public(address)
            || self
                .allowed_networks
                .iter()
                .any(|network| network.contains(address))
    }

    pub fn check(&self, address: IpAddr, host: Option<&str>) -> Result<(), AddressRefused> {
        if self.allows(address) {
            Ok(())
        } else {
            Err(AddressRefused {
                address,
                host: host.map(str::to_owned),
            })
        }
    }

    /// Checks a URL whose host is an IP literal (names are checked when they
    /// are resolved, by [`GuardedResolver`]).
    pub fn check_url(&self, url: &url::Url) -> Result<(), AddressRefused> {
        match url.host() {
            Some(url::Host::Ipv4(v4)) => self.check(IpAddr::V4(v4), None),
            Some(url::Host::Ipv6(v6)) => self.check(IpAddr::V6(v6), None),
            Some(url::Host::Domain(_)) | None => Ok(()),
        }
    }

    /// [`EgressPolicy::check_url`] on URL text; text that is not a URL passes
    /// (it is refused elsewhere as a bad URL).
    pub fn check_url_text(&self, text: &str) -> Result<(), AddressRefused> {
        match url::Url::parse(text) {
            Ok(url) => self.check_url(&url),
            Err(_) => Ok(()),
        }
    }
}

/// A DNS resolver that hands the HTTP client only addresses the policy allows.
#[derive(Debug, Clone)]
pub struct GuardedResolver {
    policy: Arc<EgressPolicy>,
}

impl GuardedResolver {
    pub fn new(policy: Arc<EgressPolicy>) -> Self {
        Self { policy }
    }
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let resolved: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let (allowed, refused): (Vec<SocketAddr>, Vec<SocketAddr>) = resolved
                .into_iter()
                .partition(|address| policy.allows(address.ip()));
            if allowed.is_empty() {
                let error: Box<dyn std::error::Error + Send + Sync> = match refused.first() {
                    Some(address) => Box::new(AddressRefused {
                        address: address.ip(),
                        host: Some(host),
                    }),
                    None => format!("{host} has no address").into(),
                };
                return Err(error);
            }
            let addresses: reqwest::dns::Addrs = Box::new(allowed.into_iter());
            Ok(addresses)
        })
    }
}

/// The [`AddressRefused`] somewhere in an error's chain of causes.
pub fn refusal_in<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a AddressRefused> {
    let mut current = Some(error);
    while let Some(cause) = current {
        if let Some(refused) = cause.downcast_ref::<AddressRefused>() {
            return Some(refused);
        }
        current = cause.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn only_public_addresses_are_public() {
        for refused in [
            "127.0.0.1",
            "127.8.9.10",
            "0.0.0.0",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "198.18.0.1",
            "::",
            "::1",
            "fe80::1",
            "fd00::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a00:1",
            "2002:7f00:1::",
            "2001:db8::1",
        ] {
            assert!(
                !is_public(ip(refused)),
                "{refused} must not count as public"
            );
        }
        for public in [
            "1.1.1.1",
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
        ] {
            assert!(is_public(ip(public)), "{public} is public");
        }
    }

    #[test]
    fn allowed_networks_open_private_ranges() {
        let closed = EgressPolicy::default();
        let open = EgressPolicy::new(vec![
            "127.0.0.0/8".parse().unwrap(),
            "fd00::/8".parse().unwrap(),
        ]);
        assert!(!closed.allows(ip("127.0.0.1")));
        assert!(open.allows(ip("127.0.0.1")));
        assert!(open.allows(ip("::ffff:127.0.0.1")));
        assert!(open.allows(ip("fd00::5")));
        assert!(!open.allows(ip("10.0.0.1")));
        assert!(open.allows(ip("8.8.8.8")));
    }

    #[test]
    fn literal_urls_are_checked_and_names_are_left_to_the_resolver() {
        let policy = EgressPolicy::default();
        let refused = policy
            .check_url_text("http://127.0.0.1:9000/in")
            .unwrap_err();
        assert_eq!(
            refused.to_string(),
            "address 127.0.0.1 is not allowed for connections created with a domain token; see [delivery] allowed_networks"
        );
        // Other spellings of loopback are IPv4 literals too.
        assert!(policy.check_url_text("http://2130706433/").is_err());
        assert!(policy.check_url_text("http://0x7f.1/").is_err());
        assert!(policy.check_url_text("http://[::1]:80/").is_err());
        assert!(policy.check_url_text("http://localhost/").is_ok());
        assert!(policy.check_url_text("https://8.8.8.8/").is_ok());
    }

    #[tokio::test]
    async fn the_resolver_refuses_names_that_resolve_to_refused_addresses() {
        use reqwest::dns::Resolve;
        let resolver = GuardedResolver::new(Arc::new(EgressPolicy::default()));
        let error = resolver
            .resolve("localhost".parse().unwrap())
            .await
            .err()
            .expect("localhost is refused");
        let refused = refusal_in(error.as_ref()).expect("an AddressRefused");
        assert!(!is_public(refused.address));
        assert_eq!(refused.host.as_deref(), Some("localhost"));
        let open = GuardedResolver::new(Arc::new(EgressPolicy::new(vec![
            "127.0.0.0/8".parse().unwrap(),
            "::1/128".parse().unwrap(),
        ])));
        let addresses: Vec<SocketAddr> = open
            .resolve("localhost".parse().unwrap())
            .await
            .unwrap()
            .collect();
        assert!(
            !addresses.is_empty() && addresses.iter().all(|a| a.ip().is_loopback()),
            "{addresses:?}"
        );
    }
}
