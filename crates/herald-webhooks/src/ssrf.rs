//! The SSRF guard: which addresses a webhook may be delivered to.
//!
//! A webhook's URL comes from whoever may create endpoints, and Herald
//! posts to it from inside the network it runs in. So the addresses of
//! the host itself, of private networks and of cloud metadata services are
//! refused unless `webhooks.allow_targets` lists them (CIDRs, addresses or
//! host names; tests allow `127.0.0.1/32`). The check is made on every
//! address the name resolves to, by the resolver the HTTP client connects
//! through ([`GuardedResolver`]): what is checked is what is connected to,
//! so a name that resolves to a public address at creation and to
//! 127.0.0.1 at delivery (DNS rebinding) is still refused. URLs with an IP
//! literal never reach a resolver and are checked by [`TargetPolicy::check_url`].

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;

/// Why an address is not a public one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressClass {
    /// `0.0.0.0/8`, `::`.
    Unspecified,
    /// `127.0.0.0/8`, `::1`.
    Loopback,
    /// RFC 1918: `10/8`, `172.16/12`, `192.168/16`.
    Private,
    /// `100.64.0.0/10` (carrier-grade NAT, RFC 6598).
    SharedAddressSpace,
    /// `169.254.0.0/16`, `fe80::/10`.
    LinkLocal,
    /// `fc00::/7`.
    UniqueLocal,
    /// `224.0.0.0/4`, `ff00::/8`.
    Multicast,
    /// `255.255.255.255`.
    Broadcast,
    /// Cloud instance metadata: `169.254.169.254`, `fd00:ec2::254`,
    /// `100.100.100.200` (Alibaba).
    CloudMetadata,
    /// Other special-purpose blocks: `192.0.0.0/24`, documentation
    /// (`192.0.2/24`, `198.51.100/24`, `203.0.113/24`, `2001:db8::/32`),
    /// benchmarking (`198.18/15`), `240.0.0.0/4`, NAT64 and 6to4 forms of
    /// the above.
    Reserved,
}

impl AddressClass {
    /// Lower-case words for messages and attempt errors.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unspecified => "unspecified",
            Self::Loopback => "loopback",
            Self::Private => "private",
            Self::SharedAddressSpace => "shared address space",
            Self::LinkLocal => "link-local",
            Self::UniqueLocal => "unique-local",
            Self::Multicast => "multicast",
            Self::Broadcast => "broadcast",
            Self::CloudMetadata => "cloud metadata",
            Self::Reserved => "reserved",
        }
    }
}

impl fmt::Display for AddressClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The class of a non-public address; `None` for a public one.
#[must_use]
pub fn classify(ip: IpAddr) -> Option<AddressClass> {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(ip: Ipv4Addr) -> Option<AddressClass> {
    let [a, b, c, _] = ip.octets();
    Some(match (a, b, c) {
        _ if ip == Ipv4Addr::new(169, 254, 169, 254) || ip == Ipv4Addr::new(100, 100, 100, 200) => {
            AddressClass::CloudMetadata
        }
        _ if ip.is_broadcast() => AddressClass::Broadcast,
        (0, _, _) => AddressClass::Unspecified,
        (127, _, _) => AddressClass::Loopback,
        (10, _, _) | (192, 168, _) => AddressClass::Private,
        (172, b, _) if (16..32).contains(&b) => AddressClass::Private,
        (100, b, _) if (64..128).contains(&b) => AddressClass::SharedAddressSpace,
        (169, 254, _) => AddressClass::LinkLocal,
        (224..=239, _, _) => AddressClass::Multicast,
        (240..=255, _, _)
        | (192, 0, 0 | 2)
        | (198, 51, 100)
        | (203, 0, 113)
        | (198, 18 | 19, _) => AddressClass::Reserved,
        _ => return None,
    })
}

fn classify_v6(ip: Ipv6Addr) -> Option<AddressClass> {
    // Forms that carry an IPv4 address are judged by it: ::ffff:a.b.c.d
    // (mapped), ::a.b.c.d (compatible, deprecated), 64:ff9b::/96 (NAT64)
    // and 2002::/16 (6to4).
    let segments = ip.segments();
    if let Some(v4) = ip.to_ipv4_mapped() {
        return classify_v4(v4);
    }
    if segments[..6] == [0; 6] && !ip.is_loopback() && !ip.is_unspecified() {
        return classify_v4(embedded_v4(&ip, 12));
    }
    if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return classify_v4(embedded_v4(&ip, 12));
    }
    if segments[0] == 0x2002 {
        return classify_v4(embedded_v4(&ip, 2));
    }
    Some(match segments[0] {
        _ if ip.is_unspecified() => AddressClass::Unspecified,
        _ if ip.is_loopback() => AddressClass::Loopback,
        _ if segments == [0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x254] => AddressClass::CloudMetadata,
        first if first & 0xffc0 == 0xfe80 => AddressClass::LinkLocal,
        first if first & 0xfe00 == 0xfc00 => AddressClass::UniqueLocal,
        first if first & 0xff00 == 0xff00 => AddressClass::Multicast,
        0x2001 if segments[1] == 0x0db8 => AddressClass::Reserved,
        // Site-local (deprecated) and the discard prefix.
        first if first & 0xffc0 == 0xfec0 => AddressClass::Reserved,
        0x0100 if segments[1..4] == [0, 0, 0] => AddressClass::Reserved,
        _ => return None,
    })
}

fn embedded_v4(ip: &Ipv6Addr, at: usize) -> Ipv4Addr {
    let octets = ip.octets();
    Ipv4Addr::new(octets[at], octets[at + 1], octets[at + 2], octets[at + 3])
}

/// An entry of `webhooks.allow_targets` that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "webhooks.allow_targets entry {0:?} is neither a CIDR (10.0.0.0/8), an address nor a host name"
)]
pub struct InvalidAllowEntry(pub String);

/// Why a target was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Not `http://` or `https://`.
    #[error("webhook URLs are http:// or https://, not {0}://")]
    Scheme(String),
    /// No host, or user info in the URL.
    #[error("a webhook URL needs a host and no user name or password")]
    Malformed,
    /// The address (given or resolved) is of a refused class.
    #[error(
        "{host} is {class} address {ip}, which webhooks may not reach unless webhooks.allow_targets lists it"
    )]
    Address {
        /// The URL's host.
        host: String,
        /// The refused address.
        ip: IpAddr,
        /// Why it is refused.
        class: AddressClass,
    },
    /// The name did not resolve.
    #[error("{host} does not resolve: {reason}")]
    Unresolved {
        /// The URL's host.
        host: String,
        /// The resolver's answer.
        reason: String,
    },
}

/// Which targets webhooks may reach: every public address, plus what
/// `webhooks.allow_targets` lists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TargetPolicy {
    nets: Vec<IpNet>,
    /// Lower-case host names; `.example.com` for a `*.example.com` entry.
    hosts: Vec<String>,
}

impl TargetPolicy {
    /// The policy with these `webhooks.allow_targets` entries: CIDRs
    /// (`10.0.0.0/8`, `fd00::/8`), single addresses (`127.0.0.1`, `::1`),
    /// host names (`hooks.internal`) or wildcards (`*.internal`).
    pub fn new<S: AsRef<str>>(allow: &[S]) -> Result<Self, InvalidAllowEntry> {
        let mut policy = Self::default();
        for entry in allow {
            let entry = entry.as_ref().trim();
            if let Ok(net) = entry.parse::<IpNet>() {
                policy.nets.push(net);
            } else if let Ok(ip) = entry.parse::<IpAddr>() {
                policy.nets.push(IpNet::from(ip));
            } else if let Some(host) = host_pattern(entry) {
                policy.hosts.push(host);
            } else {
                return Err(InvalidAllowEntry(entry.to_owned()));
            }
        }
        Ok(policy)
    }

    /// Whether `host` (a name) is listed, so any address it resolves to is
    /// allowed.
    fn allows_host(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.hosts.iter().any(|allowed| {
            allowed == &host
                || allowed
                    .strip_prefix('.')
                    .is_some_and(|suffix| host.ends_with(&format!(".{suffix}")))
        })
    }

    /// Whether `ip`, reached for `host`, is allowed.
    pub fn check_ip(&self, host: &str, ip: IpAddr) -> Result<(), Refused> {
        let Some(class) = classify(ip) else {
            return Ok(());
        };
        if self.nets.iter().any(|net| net.contains(&ip)) || self.allows_host(host) {
            return Ok(());
        }
        Err(Refused::Address {
            host: host.to_owned(),
            ip,
            class,
        })
    }

    /// Checks what can be checked without resolving: the scheme, the form,
    /// and an IP-literal host. A named host is checked when it resolves
    /// ([`Self::resolve`]), at creation and at each delivery.
    pub fn check_url(&self, url: &reqwest::Url) -> Result<(), Refused> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(Refused::Scheme(url.scheme().to_owned()));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(Refused::Malformed);
        }
        match url.host() {
            None => Err(Refused::Malformed),
            Some(url::Host::Ipv4(ip)) => self.check_ip(&ip.to_string(), IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => self.check_ip(&ip.to_string(), IpAddr::V6(ip)),
            Some(url::Host::Domain(_)) => Ok(()),
        }
    }

    /// Resolves `host` and keeps the addresses the policy allows; refuses
    /// when none is left (naming the first refused one).
    pub async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, Refused> {
        let resolved: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
            .await
            .map_err(|error| Refused::Unresolved {
                host: host.to_owned(),
                reason: error.to_string(),
            })?
            .collect();
        let mut first_refusal = None;
        let allowed: Vec<SocketAddr> = resolved
            .into_iter()
            .filter(|addr| match self.check_ip(host, addr.ip()) {
                Ok(()) => true,
                Err(refused) => {
                    first_refusal.get_or_insert(refused);
                    false
                }
            })
            .collect();
        match (allowed.is_empty(), first_refusal) {
            (false, _) => Ok(allowed),
            (true, Some(refused)) => Err(refused),
            (true, None) => Err(Refused::Unresolved {
                host: host.to_owned(),
                reason: "no addresses".to_owned(),
            }),
        }
    }

    /// Checks a URL as far as it can be before a delivery: its form, and
    /// what its host resolves to now (endpoint creation answers 400
    /// `target_not_allowed` with this).
    pub async fn check_target(&self, url: &reqwest::Url) -> Result<(), Refused> {
        self.check_url(url)?;
        if let Some(url::Host::Domain(host)) = url.host() {
            self.resolve(host, url.port_or_known_default().unwrap_or(443))
                .await?;
        }
        Ok(())
    }
}

fn host_pattern(entry: &str) -> Option<String> {
    let (wildcard, name) = match entry.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, entry),
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    let valid = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-')
        });
    valid.then(|| if wildcard { format!(".{name}") } else { name })
}

/// The resolver the webhook HTTP client connects through: it resolves
/// with the system resolver and hands the client only the addresses the
/// policy allows, so the address connected to is the address checked.
#[derive(Debug, Clone)]
pub struct GuardedResolver {
    policy: Arc<TargetPolicy>,
}

impl GuardedResolver {
    /// A resolver enforcing `policy`.
    #[must_use]
    pub fn new(policy: Arc<TargetPolicy>) -> Self {
        Self { policy }
    }
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = Arc::clone(&self.policy);
        Box::pin(async move {
            // The port is the client's to set; 0 here, replaced by it.
            let addrs = policy.resolve(name.as_str(), 0).await?;
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn given_each_refused_class_when_classified_should_name_it() {
        for (address, class) in [
            ("0.0.0.0", AddressClass::Unspecified),
            ("::", AddressClass::Unspecified),
            ("127.0.0.1", AddressClass::Loopback),
            ("127.255.0.9", AddressClass::Loopback),
            ("::1", AddressClass::Loopback),
            ("10.1.2.3", AddressClass::Private),
            ("172.16.0.1", AddressClass::Private),
            ("172.31.255.255", AddressClass::Private),
            ("192.168.1.1", AddressClass::Private),
            ("100.64.0.1", AddressClass::SharedAddressSpace),
            ("169.254.1.1", AddressClass::LinkLocal),
            ("fe80::1", AddressClass::LinkLocal),
            ("fd12:3456::1", AddressClass::UniqueLocal),
            ("224.0.0.1", AddressClass::Multicast),
            ("ff02::1", AddressClass::Multicast),
            ("255.255.255.255", AddressClass::Broadcast),
            ("169.254.169.254", AddressClass::CloudMetadata),
            ("fd00:ec2::254", AddressClass::CloudMetadata),
            ("100.100.100.200", AddressClass::CloudMetadata),
            ("192.0.2.1", AddressClass::Reserved),
            ("240.0.0.1", AddressClass::Reserved),
            ("2001:db8::1", AddressClass::Reserved),
            // IPv4 in IPv6 clothing is judged by the IPv4 address.
            ("::ffff:127.0.0.1", AddressClass::Loopback),
            ("::ffff:169.254.169.254", AddressClass::CloudMetadata),
            ("::10.0.0.1", AddressClass::Private),
            ("64:ff9b::a00:1", AddressClass::Private),
            ("2002:7f00:1::", AddressClass::Loopback),
        ] {
            assert_eq!(classify(ip(address)), Some(class), "{address}");
        }
        for public in [
            "8.8.8.8",
            "1.1.1.1",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert_eq!(classify(ip(public)), None, "{public}");
        }
    }

    #[test]
    fn given_an_allow_list_when_checked_should_allow_only_what_it_lists() {
        let policy = TargetPolicy::new(&[
            "127.0.0.1/32",
            "10.0.0.0/8",
            "::1",
            "hooks.internal",
            "*.svc",
        ])
        .unwrap();
        assert_eq!(policy.check_ip("x", ip("127.0.0.1")), Ok(()));
        assert_eq!(policy.check_ip("x", ip("10.9.9.9")), Ok(()));
        assert_eq!(policy.check_ip("x", ip("::1")), Ok(()));
        assert_eq!(policy.check_ip("x", ip("8.8.8.8")), Ok(()));
        assert!(matches!(
            policy.check_ip("x", ip("127.0.0.2")),
            Err(Refused::Address {
                class: AddressClass::Loopback,
                ..
            })
        ));
        // A listed name may resolve to anything; its look-alikes may not.
        assert_eq!(
            policy.check_ip("HOOKS.internal.", ip("192.168.0.1")),
            Ok(())
        );
        assert_eq!(policy.check_ip("a.b.svc", ip("192.168.0.1")), Ok(()));
        assert!(policy.check_ip("svc", ip("192.168.0.1")).is_err());
        assert!(policy.check_ip("evilsvc", ip("192.168.0.1")).is_err());
        assert!(
            policy
                .check_ip("hooks.internal.evil.com", ip("192.168.0.1"))
                .is_err()
        );
        assert_eq!(
            TargetPolicy::new(&["not a cidr/99"]),
            Err(InvalidAllowEntry("not a cidr/99".to_owned()))
        );
    }

    #[test]
    fn given_urls_when_checked_should_refuse_bad_schemes_credentials_and_literals() {
        let policy = TargetPolicy::default();
        let check = |url: &str| policy.check_url(&url.parse().unwrap());
        assert_eq!(check("https://example.com/hook"), Ok(()));
        assert_eq!(
            check("ftp://example.com/"),
            Err(Refused::Scheme("ftp".into()))
        );
        assert_eq!(
            check("https://user:pw@example.com/"),
            Err(Refused::Malformed)
        );
        assert!(matches!(
            check("http://127.0.0.1:8080/"),
            Err(Refused::Address {
                class: AddressClass::Loopback,
                ..
            })
        ));
        assert!(matches!(
            check("http://[::ffff:a9fe:a9fe]/latest/meta-data"),
            Err(Refused::Address {
                class: AddressClass::CloudMetadata,
                ..
            })
        ));
        // The URL parser normalises odd IPv4 spellings before the check.
        assert!(matches!(
            check("http://2130706433/"),
            Err(Refused::Address {
                class: AddressClass::Loopback,
                ..
            })
        ));
        assert!(matches!(
            check("http://0x7f.1/"),
            Err(Refused::Address {
                class: AddressClass::Loopback,
                ..
            })
        ));
    }

    #[tokio::test]
    async fn given_a_name_that_resolves_to_loopback_when_resolved_should_refuse_it() {
        let refused = TargetPolicy::default()
            .check_target(&"http://localhost:9/".parse().unwrap())
            .await
            .unwrap_err();
        assert!(
            matches!(
                refused,
                Refused::Address {
                    class: AddressClass::Loopback,
                    ..
                }
            ),
            "{refused}"
        );
        let allowed = TargetPolicy::new(&["127.0.0.0/8", "::1"]).unwrap();
        let addrs = allowed.resolve("localhost", 9).await.unwrap();
        assert!(addrs.iter().all(|addr| addr.ip().is_loopback()));
    }
}
