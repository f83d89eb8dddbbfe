//! Outbound HTTP to tenants' endpoints (webhooks, proxies), safe against server-side request
//! forgery: a tenant names a URL, Herald calls it, and that must never reach Herald's own
//! network.
//!
//! - Only `http` and `https` URLs, with a host and without credentials in them.
//! - Every address the host resolves to must be public: loopback, private, link-local,
//!   carrier-grade NAT, multicast, documentation and other special ranges are refused (IPv4,
//!   IPv6, and IPv4 inside IPv6) unless the operator lists the range in `allowed_networks`.
//!   The check happens in the resolver the connection uses, so a name cannot resolve to a
//!   public address for the check and a private one for the connection.
//! - Redirects are not followed (the status is reported); no proxy from the environment.
//! - Bounded in time (connect and total) and in size: at most `max_response_bytes` of a
//!   response body are read, as an excerpt.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnet::IpNet;

/// What the operator allows outbound calls to do.
#[derive(Debug, Clone)]
pub struct OutboundPolicy {
    /// Non-public ranges calls may reach anyway (e.g. `10.0.0.0/8` for functions on the same
    /// private network, or `127.0.0.0/8` in tests).
    pub allowed_networks: Vec<IpNet>,
    pub connect_timeout: Duration,
    /// For the whole request, answer included.
    pub timeout: Duration,
    /// Bytes of a response body kept (the rest is not read).
    pub max_response_bytes: usize,
}

impl Default for OutboundPolicy {
    fn default() -> Self {
        OutboundPolicy {
            allowed_networks: Vec::new(),
            connect_timeout: Duration::from_secs(3),
            timeout: Duration::from_secs(10),
            max_response_bytes: 4096,
        }
    }
}

/// Why a call was not made or did not complete.
#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    #[error("the URL is not acceptable: {0}")]
    BadUrl(String),
    #[error("{0} is not a public address; outbound calls may not reach it")]
    Forbidden(String),
    #[error("the endpoint did not answer in time")]
    Timeout,
    #[error("cannot reach the endpoint: {0}")]
    Unreachable(String),
}

/// What an endpoint answered.
#[derive(Debug)]
pub struct OutboundResponse {
    pub status: u16,
    /// The first `max_response_bytes` of the body.
    pub excerpt: Vec<u8>,
    pub latency: Duration,
}

/// Whether an address is reachable on the public internet (not a special-purpose range).
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public_v4(v4);
            }
            let s = v6.segments();
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local
                || (s[0] & 0xffc0) == 0xfe80 // link-local
                || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
                || (s[0] == 0x0064 && s[1] == 0xff9b) // NAT64, may reach IPv4 inside
                || (s[0] == 0x2002) // 6to4, likewise
                || s[..6] == [0; 6]) // IPv4-compatible and other reserved
        }
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_multicast()
        || ip.is_broadcast()
        || ip.is_unspecified()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // carrier-grade NAT
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || a >= 240) // reserved
}

/// The resolver every outbound connection uses: only allowed addresses come out of it.
struct GuardedResolver {
    allowed: Vec<IpNet>,
}

fn allowed(ip: IpAddr, networks: &[IpNet]) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    is_public(ip) || networks.iter().any(|n| n.contains(&ip))
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let networks = self.allowed.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let usable: Vec<SocketAddr> =
                found.iter().copied().filter(|a| allowed(a.ip(), &networks)).collect();
            if usable.is_empty() {
                let shown = found.first().map_or(host.clone(), |a| format!("{host} ({})", a.ip()));
                return Err(
                    Box::new(OutboundError::Forbidden(shown)) as Box<dyn std::error::Error + Send + Sync>
                );
            }
            Ok(Box::new(usable.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The outbound HTTP client.
#[derive(Clone)]
pub struct Outbound {
    client: reqwest::Client,
    policy: Arc<OutboundPolicy>,
}

impl Outbound {
    pub fn new(policy: OutboundPolicy) -> Outbound {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .connect_timeout(policy.connect_timeout)
            .timeout(policy.timeout)
            .dns_resolver(Arc::new(GuardedResolver { allowed: policy.allowed_networks.clone() }))
            .user_agent(concat!("Herald/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("a client with these options builds");
        Outbound { client, policy: Arc::new(policy) }
    }

    /// Checks a URL a tenant gives, before it is stored: scheme, host, no credentials, and for an
    /// address literal that it may be reached. (Names are checked at each call, by the resolver.)
    pub fn check_url(&self, text: &str) -> Result<url::Url, OutboundError> {
        let url = url::Url::parse(text).map_err(|e| OutboundError::BadUrl(e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(OutboundError::BadUrl("only http and https URLs".into()));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(OutboundError::BadUrl("credentials do not belong in the URL".into()));
        }
        let literal = match url.host() {
            None => return Err(OutboundError::BadUrl("the URL has no host".into())),
            Some(url::Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
            Some(url::Host::Domain(_)) => None,
        };
        if let Some(ip) = literal
            && !allowed(ip, &self.policy.allowed_networks)
        {
            return Err(OutboundError::Forbidden(ip.to_string()));
        }
        Ok(url)
    }

    /// POSTs `body` with `headers` to `url`; reads at most `max_response_bytes` of the answer.
    pub async fn post(
        &self,
        url: &str,
        headers: &[(&str, String)],
        body: Vec<u8>,
    ) -> Result<OutboundResponse, OutboundError> {
        self.post_within(url, headers, body, None).await
    }

    /// [`Outbound::post`] with a shorter total timeout for this call.
    pub async fn post_within(
        &self,
        url: &str,
        headers: &[(&str, String)],
        body: Vec<u8>,
        timeout: Option<Duration>,
    ) -> Result<OutboundResponse, OutboundError> {
        let url = self.check_url(url)?;
        let started = Instant::now();
        let mut request = self.client.post(url).header("content-type", "application/json").body(body);
        if let Some(t) = timeout {
            request = request.timeout(t.min(self.policy.timeout));
        }
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let mut response = request.send().await.map_err(classify)?;
        let status = response.status().as_u16();
        let mut excerpt = Vec::new();
        while excerpt.len() < self.policy.max_response_bytes {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    let room = self.policy.max_response_bytes - excerpt.len();
                    excerpt.extend_from_slice(&chunk[..chunk.len().min(room)]);
                }
                Ok(None) => break,
                Err(e) => return Err(classify(e)),
            }
        }
        Ok(OutboundResponse { status, excerpt, latency: started.elapsed() })
    }
}

/// A failed request as an [`OutboundError`], finding a refusal of the resolver inside it.
fn classify(e: reqwest::Error) -> OutboundError {
    if e.is_timeout() {
        return OutboundError::Timeout;
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(&e);
    while let Some(s) = source {
        if let Some(OutboundError::Forbidden(what)) = s.downcast_ref::<OutboundError>() {
            return OutboundError::Forbidden(what.clone());
        }
        source = s.source();
    }
    OutboundError::Unreachable(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_ranges_are_not_public() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "192.0.2.1",
            "198.18.0.1",
            "240.0.0.1",
            "::1",
            "::",
            "fc00::1",
            "fe80::1",
            "ff02::1",
            "2001:db8::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a00:1",
            "2002:a00:1::",
            "::127.0.0.1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip} counted as public");
        }
        for ip in ["1.1.1.1", "93.184.216.34", "2606:4700::1111", "::ffff:8.8.8.8"] {
            assert!(is_public(ip.parse().unwrap()), "{ip} counted as special");
        }
    }

    #[test]
    fn urls_are_checked_before_any_call() {
        let out = Outbound::new(OutboundPolicy::default());
        assert!(out.check_url("https://hooks.example.com/herald").is_ok());
        for bad in [
            "ftp://example.com/",
            "https://user:pw@example.com/",
            "not a url",
            "http://127.0.0.1:8080/",
            "http://[::1]/",
            "http://169.254.169.254/latest",
        ] {
            assert!(out.check_url(bad).is_err(), "{bad} was accepted");
        }
        let allowed = Outbound::new(OutboundPolicy {
            allowed_networks: vec!["127.0.0.0/8".parse().unwrap()],
            ..Default::default()
        });
        assert!(allowed.check_url("http://127.0.0.1:8080/").is_ok());
        assert!(allowed.check_url("http://10.0.0.1/").is_err());
    }
}
