//! The client's address, for login throttling and logs.
//!
//! Without `[http] trust_forwarded` it is the TCP peer. With it, Revo stands behind proxies that
//! append the address they received from to `Forwarded` (RFC 7239 `for=`) or
//! `X-Forwarded-For`. Only the entries those proxies appended can be believed: everything to
//! their left was sent by the client, who can write anything there. So the client is the
//! rightmost entry that is not one of the `[http] trusted_proxies`. With no list, the peer is
//! taken to be the one proxy and the client is the entry it appended (the rightmost). A peer
//! that is not a trusted proxy connected directly, and its headers are ignored.

use std::net::IpAddr;

use actix_web::http::header::HeaderMap;
use ipnet::IpNet;

#[derive(Debug, Clone, Default)]
pub struct Forwarding {
    pub enabled: bool,
    pub trusted: Vec<IpNet>,
}

/// One forwarded hop as written: an address (with or without port, brackets, quotes) or an
/// obfuscated identifier (`unknown`, `_hidden`).
fn parse_hop(raw: &str) -> Result<IpAddr, String> {
    let h = raw.trim().trim_matches('"');
    if let Ok(ip) = h.parse::<IpAddr>() {
        return Ok(ip);
    }
    // `[2001:db8::1]:443` or `[2001:db8::1]`
    if let Some(rest) = h.strip_prefix('[') {
        if let Some((ip, _)) = rest.split_once(']') {
            return ip.parse().map_err(|_| h.to_owned());
        }
    }
    // `192.0.2.1:8080`
    if let Some((ip, port)) = h.rsplit_once(':') {
        if port.chars().all(|c| c.is_ascii_digit()) {
            if let Ok(ip) = ip.parse::<std::net::Ipv4Addr>() {
                return Ok(IpAddr::V4(ip));
            }
        }
    }
    Err(h.to_owned())
}

/// The forwarded chain, leftmost (claimed client) first: `Forwarded` if present, else
/// `X-Forwarded-For`, each over all of its header lines in order.
fn hops(headers: &HeaderMap) -> Vec<String> {
    let forwarded: Vec<String> = headers
        .get_all("forwarded")
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|elem| {
            elem.split(';').find_map(|pair| {
                let (k, v) = pair.split_once('=')?;
                k.trim()
                    .eq_ignore_ascii_case("for")
                    .then(|| v.trim().to_owned())
            })
        })
        .collect();
    if !forwarded.is_empty() {
        return forwarded;
    }
    headers
        .get_all("x-forwarded-for")
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

impl Forwarding {
    fn is_trusted(&self, ip: &IpAddr) -> bool {
        self.trusted.iter().any(|n| n.contains(ip))
    }

    pub fn client(&self, peer: Option<IpAddr>, headers: &HeaderMap) -> Option<String> {
        let peer_text = peer.map(|p| p.to_string());
        let Some(peer) = peer.filter(|_| self.enabled) else {
            return peer_text;
        };
        if !self.trusted.is_empty() && !self.is_trusted(&peer) {
            return peer_text;
        }
        let chain = hops(headers);
        if self.trusted.is_empty() {
            // The peer is the one proxy: the entry it appended.
            return chain
                .last()
                .map(|h| parse_hop(h).map_or_else(|raw| raw, |ip| ip.to_string()))
                .or(peer_text);
        }
        for hop in chain.iter().rev() {
            match parse_hop(hop) {
                Ok(ip) if self.is_trusted(&ip) => continue,
                Ok(ip) => return Some(ip.to_string()),
                // An identifier a proxy wrote in place of an address: as good as it gets.
                Err(raw) => return Some(raw),
            }
        }
        // Every hop is a proxy of ours: the request started inside.
        chain
            .first()
            .and_then(|h| parse_hop(h).ok())
            .map(|ip| ip.to_string())
            .or(peer_text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::{HeaderName, HeaderValue};

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        h
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    fn behind(trusted: &[&str]) -> Forwarding {
        Forwarding {
            enabled: true,
            trusted: trusted.iter().map(|t| t.parse().unwrap()).collect(),
        }
    }

    #[test]
    fn a_spoofed_leftmost_entry_is_ignored() {
        let f = behind(&["10.0.0.0/8"]);
        // The client sent "1.1.1.1"; the edge proxy appended the real peer, 203.0.113.9.
        let h = headers(&[("x-forwarded-for", "1.1.1.1, 203.0.113.9")]);
        assert_eq!(f.client(ip("10.0.0.2"), &h).as_deref(), Some("203.0.113.9"));
        // Two proxies of ours in a row.
        let h = headers(&[("x-forwarded-for", "1.1.1.1, 203.0.113.9, 10.1.2.3")]);
        assert_eq!(f.client(ip("10.0.0.2"), &h).as_deref(), Some("203.0.113.9"));
        // Several header lines count as one list, in order.
        let h = headers(&[
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-for", "198.51.100.4"),
        ]);
        assert_eq!(
            f.client(ip("10.0.0.2"), &h).as_deref(),
            Some("198.51.100.4")
        );
    }

    #[test]
    fn headers_from_an_untrusted_peer_or_with_forwarding_off_are_ignored() {
        let h = headers(&[("x-forwarded-for", "1.1.1.1")]);
        let f = behind(&["10.0.0.0/8"]);
        assert_eq!(
            f.client(ip("198.51.100.7"), &h).as_deref(),
            Some("198.51.100.7")
        );
        let off = Forwarding::default();
        assert_eq!(off.client(ip("10.0.0.2"), &h).as_deref(), Some("10.0.0.2"));
    }

    #[test]
    fn without_a_list_the_peer_is_the_one_proxy() {
        let f = behind(&[]);
        let h = headers(&[("x-forwarded-for", "1.1.1.1, 203.0.113.9")]);
        assert_eq!(
            f.client(ip("127.0.0.1"), &h).as_deref(),
            Some("203.0.113.9")
        );
        assert_eq!(
            f.client(ip("127.0.0.1"), &HeaderMap::new()).as_deref(),
            Some("127.0.0.1")
        );
    }

    #[test]
    fn rfc_7239_forwarded_with_ports_brackets_and_identifiers() {
        let f = behind(&["10.0.0.0/8", "2001:db8::/32"]);
        let h = headers(&[(
            "forwarded",
            "for=1.1.1.1, for=\"[2001:db8:cafe::17]:4711\";proto=https, for=192.0.2.60:8080;by=10.0.0.1",
        )]);
        assert_eq!(f.client(ip("10.0.0.2"), &h).as_deref(), Some("192.0.2.60"));
        let h = headers(&[("forwarded", "for=_hidden, for=10.9.9.9")]);
        assert_eq!(f.client(ip("10.0.0.2"), &h).as_deref(), Some("_hidden"));
        // Only our own proxies: the request began inside.
        let h = headers(&[("x-forwarded-for", "10.3.3.3, 10.4.4.4")]);
        assert_eq!(f.client(ip("10.0.0.2"), &h).as_deref(), Some("10.3.3.3"));
    }
}
