//! The `http` step's guard and client. A request goes only to a host on the allow-list
//! (`[workflows] http_allow`: `api.example.com`, `*.example.org`, optionally with `:port`),
//! and never to a private, loopback or link-local address unless that address is listed in
//! `http_allow_private` (IPs or CIDRs). The name is resolved once and the connection is pinned
//! to the checked addresses (no DNS rebinding); redirects are not followed; the answer is read
//! up to the step's byte limit.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use futures::StreamExt;
use ipnet::IpNet;
use reqwest::Url;
use serde_json::{json, Value};

#[derive(Clone, Default)]
pub struct HttpPolicy {
    hosts: Vec<String>,
    private: Vec<IpNet>,
    /// `{{ secrets.NAME }}` → its value, from configuration (`[workflows.secrets]`): resolved
    /// when a request is sent, never written into an event.
    secrets: std::collections::HashMap<String, String>,
}

impl std::fmt::Debug for HttpPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&String> = self.secrets.keys().collect();
        f.debug_struct("HttpPolicy")
            .field("hosts", &self.hosts)
            .field("private", &self.private)
            .field("secrets", &names)
            .finish()
    }
}

/// Header names whose values are credentials: a definition must take them from a secret,
/// never write them out (definitions are copied into every run's first event).
pub fn is_credential_name(name: &str) -> bool {
    let n = name.to_ascii_lowercase().replace('_', "-");
    let words = [
        "auth",
        "token",
        "secret",
        "password",
        "passwd",
        "cookie",
        "signature",
        "credential",
    ];
    // `key` alone is too common (`Idempotency-Key`), so only where it names a credential.
    let keys = [
        "api-key",
        "apikey",
        "access-key",
        "private-key",
        "secret-key",
    ];
    words.iter().any(|w| n.contains(w))
        || keys.iter().any(|k| n.ends_with(k))
        || matches!(n.as_str(), "key" | "sig" | "session" | "x-session")
}

/// Why a request may not go: (code, message).
pub type Refused = (&'static str, String);

fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v) => {
            let o = v.octets();
            v.is_private()
                || v.is_loopback()
                || v.is_link_local()
                || v.is_unspecified()
                || v.is_broadcast()
                || v.is_multicast()
                || o[0] == 0
                // Carrier-grade NAT, 100.64.0.0/10.
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
                // Benchmarking, 198.18.0.0/15.
                || (o[0] == 198 && (o[1] & 0xfe) == 18)
                // Reserved, 240.0.0.0/4.
                || o[0] >= 240
        }
        IpAddr::V6(v) => {
            if let Some(m) = v.to_ipv4_mapped() {
                return is_private(IpAddr::V4(m));
            }
            let s = v.segments();
            // Addresses that carry an IPv4 address for a gateway to reach (NAT64 64:ff9b::/96,
            // 6to4 2002::/16, IPv4-compatible ::a.b.c.d): where they lead is the gateway's
            // choice, so none is treated as public.
            let nat64 = s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0];
            let six_to_four = s[0] == 0x2002;
            let compatible = s[..6] == [0, 0, 0, 0, 0, 0];
            if nat64 || six_to_four || compatible {
                return true;
            }
            v.is_loopback()
                || v.is_unspecified()
                || v.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                // Site-local, fec0::/10 (deprecated, still routed inside some networks).
                || (s[0] & 0xffc0) == 0xfec0
        }
    }
}

impl HttpPolicy {
    pub fn new(hosts: Vec<String>, private: Vec<String>) -> Result<HttpPolicy, String> {
        let private = private
            .iter()
            .map(|p| {
                p.parse::<IpNet>()
                    .or_else(|_| p.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| format!("`{p}` is not an IP address or CIDR"))
            })
            .collect::<Result<_, _>>()?;
        let hosts = hosts.into_iter().map(|h| h.to_ascii_lowercase()).collect();
        Ok(HttpPolicy {
            hosts,
            private,
            secrets: Default::default(),
        })
    }

    /// With the secrets `{{ secrets.NAME }}` may name.
    pub fn with_secrets(mut self, secrets: std::collections::HashMap<String, String>) -> Self {
        self.secrets = secrets;
        self
    }

    pub fn has_secret(&self, name: &str) -> bool {
        self.secrets.contains_key(name)
    }

    pub fn secret(&self, name: &str) -> Option<String> {
        self.secrets.get(name).cloned()
    }

    fn host_allowed(&self, host: &str, port: u16) -> bool {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        self.hosts.iter().any(|pat| {
            let (h, p) = match pat.rsplit_once(':') {
                Some((h, p)) if !h.contains(':') || h.ends_with(']') => (h, p.parse::<u16>().ok()),
                _ => (pat.as_str(), None),
            };
            let h = h.trim_start_matches('[').trim_end_matches(']');
            let name_ok = match h.strip_prefix("*.") {
                Some(suffix) => host.ends_with(&format!(".{suffix}")),
                None => host == h,
            };
            // An entry without a port allows the web's own ports only.
            name_ok && p.map_or(port == 80 || port == 443, |p| p == port)
        })
    }

    fn parse_allowed(&self, url: &str) -> Result<Url, Refused> {
        let u = Url::parse(url).map_err(|e| ("invalid_value", format!("not a URL: {e}")))?;
        if !matches!(u.scheme(), "http" | "https") {
            return Err(("invalid_value", "only http and https URLs".into()));
        }
        let host = u
            .host_str()
            .ok_or(("invalid_value", "the URL has no host".to_owned()))?
            .to_ascii_lowercase();
        let port = u.port_or_known_default().unwrap_or(443);
        if !self.host_allowed(&host, port) {
            return Err((
                "unknown_host",
                format!("`{host}:{port}` is not on the workflow HTTP allow-list ([workflows] http_allow)"),
            ));
        }
        Ok(u)
    }

    /// Checks a URL as written in a definition: its scheme and host must be literal (templates
    /// only after the host) and allowed.
    pub fn check_url_template(&self, url: &str) -> Result<(), Refused> {
        let head_end = url
            .find("://")
            .map(|i| i + 3)
            .and_then(|start| url[start..].find('/').map(|j| start + j))
            .unwrap_or(url.len());
        if url[..head_end].contains("{{") {
            return Err((
                "unknown_host",
                "the scheme and host are written out, not templated".into(),
            ));
        }
        let probe = url.replace("{{", "").replace("}}", "");
        self.parse_allowed(&probe).map(|_| ())
    }

    /// The addresses a request may connect to, or why none.
    async fn resolve(&self, u: &Url) -> Result<Vec<SocketAddr>, Refused> {
        let host = u.host_str().unwrap_or_default();
        let port = u.port_or_known_default().unwrap_or(443);
        let addrs: Vec<SocketAddr> = match host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
        {
            Ok(ip) => vec![SocketAddr::new(ip, port)],
            Err(_) => tokio::net::lookup_host((host, port))
                .await
                .map_err(|e| ("dns_failed", format!("cannot resolve `{host}`: {e}")))?
                .collect(),
        };
        if addrs.is_empty() {
            return Err(("dns_failed", format!("`{host}` has no address")));
        }
        for a in &addrs {
            let ip = a.ip();
            if is_private(ip) && !self.private.iter().any(|n| n.contains(&ip)) {
                return Err((
                    "host_refused",
                    format!("`{host}` resolves to the private address {ip}, which [workflows] http_allow_private does not list"),
                ));
            }
        }
        Ok(addrs)
    }

    /// Sends one request. `Ok` holds `{status, headers, body}` for a 2xx answer; `Err` holds
    /// (code, message, retryable).
    pub async fn send(
        &self,
        method: &str,
        url: &str,
        headers: &[(String, String)],
        body: Option<&Value>,
        max_bytes: usize,
        timeout: Duration,
    ) -> Result<Value, (&'static str, String, bool)> {
        let refused = |(c, m): Refused| (c, m, false);
        let u = self.parse_allowed(url).map_err(refused)?;
        let addrs = self.resolve(&u).await.map_err(refused)?;
        let host = u.host_str().unwrap_or_default().to_owned();
        let client = reqwest::Client::builder()
            // A proxy from the environment would resolve the name again, past the pinning.
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .resolve_to_addrs(&host, &addrs)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .timeout(timeout)
            .build()
            .map_err(|e| ("http_failed", format!("cannot build a client: {e}"), false))?;
        let m = reqwest::Method::from_bytes(method.as_bytes())
            .map_err(|_| ("invalid_value", format!("bad method {method}"), false))?;
        let mut rb = client.request(m, u);
        for (k, v) in headers {
            rb = rb.header(k, v);
        }
        match body {
            Some(Value::String(s)) => rb = rb.body(s.clone()),
            Some(v) => rb = rb.json(v),
            None => {}
        }
        let resp = rb.send().await.map_err(|e| {
            let code = if e.is_timeout() {
                "http_timeout"
            } else {
                "http_failed"
            };
            (code, format!("{host}: {}", e.without_url()), true)
        })?;
        let status = resp.status();
        let ctype = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let mut buf = Vec::new();
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk =
                chunk.map_err(|e| ("http_failed", format!("{host}: {}", e.without_url()), true))?;
            if buf.len() + chunk.len() > max_bytes {
                return Err((
                    "too_large",
                    format!("the answer is over the step's limit of {max_bytes} bytes"),
                    false,
                ));
            }
            buf.extend_from_slice(&chunk);
        }
        let text = String::from_utf8_lossy(&buf).into_owned();
        if !status.is_success() {
            let retry = status.is_server_error() || status.as_u16() == 429;
            let head: String = text.chars().take(200).collect();
            return Err((
                "http_status",
                format!("{host} answered {status}: {head}"),
                retry,
            ));
        }
        let body = if ctype.contains("json") {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        } else {
            Value::String(text)
        };
        Ok(json!({"status": status.as_u16(), "content_type": ctype, "body": body}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_ports_and_private_addresses() {
        let p = HttpPolicy::new(
            vec![
                "api.example.com".into(),
                "*.example.org".into(),
                "127.0.0.1:9000".into(),
            ],
            vec!["127.0.0.1/32".into()],
        )
        .unwrap();
        assert!(p
            .check_url_template("https://api.example.com/v1/{{ input.x }}")
            .is_ok());
        assert!(p.check_url_template("https://a.example.org/").is_ok());
        assert!(p.check_url_template("https://example.org/").is_err());
        assert!(p.check_url_template("http://127.0.0.1:9000/x").is_ok());
        assert!(p.check_url_template("http://127.0.0.1:9001/x").is_err());
        assert!(p.check_url_template("https://{{ input.host }}/x").is_err());
        assert!(p.check_url_template("file:///etc/passwd").is_err());
        assert!(is_private("10.1.2.3".parse().unwrap()));
        assert!(is_private("169.254.169.254".parse().unwrap()));
        assert!(is_private("::ffff:127.0.0.1".parse().unwrap()));
        assert!(is_private("fd00::1".parse().unwrap()));
        assert!(!is_private("93.184.216.34".parse().unwrap()));
        // The review's gaps (finding 14).
        for ip in [
            "64:ff9b::a9fe:a9fe",
            "64:ff9b::7f00:1",
            "2002:7f00:1::",
            "2002:a9fe:a9fe::1",
            "::127.0.0.1",
            "::10.0.0.1",
            "fec0::1",
            "198.18.0.1",
            "198.19.255.255",
            "240.0.0.1",
            "255.255.255.254",
        ] {
            assert!(is_private(ip.parse().unwrap()), "{ip}");
        }
        assert!(!is_private("198.20.0.1".parse().unwrap()));
        assert!(!is_private("2606:4700::1111".parse().unwrap()));
        // Credential names, and ordinary ones that only look alike.
        for n in [
            "Authorization",
            "X-Api-Key",
            "api_key",
            "access_token",
            "Cookie",
            "sig",
        ] {
            assert!(is_credential_name(n), "{n}");
        }
        for n in [
            "Idempotency-Key",
            "Accept",
            "Content-Type",
            "page",
            "keyword",
        ] {
            assert!(!is_credential_name(n), "{n}");
        }
        // A name without a port: 80 and 443 only.
        assert!(p.check_url_template("http://api.example.com/").is_ok());
        assert!(p.check_url_template("https://api.example.com:443/").is_ok());
        assert!(p
            .check_url_template("http://api.example.com:8080/")
            .is_err());
        assert!(p.check_url_template("https://x.example.org:6379/").is_err());
    }
}
