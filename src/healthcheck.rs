//! `revo healthcheck`: asks this node's `/health/live` over loopback and exits 0 only on a 200.
//! For container engines' `HEALTHCHECK` in an image that has no curl (plain HTTP/1.0 over a
//! socket with timeouts, so a hung edge fails the check instead of hanging it).

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(3);

/// Where the edge listening on `listen` answers locally (an unspecified address is reached on
/// loopback).
pub fn local_addr(listen: SocketAddr) -> SocketAddr {
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, listen.port())
}

/// `Ok(())` when `GET path` answers 200; otherwise why not.
pub fn check(addr: SocketAddr, path: &str) -> anyhow::Result<()> {
    let mut s = TcpStream::connect_timeout(&addr, TIMEOUT)?;
    s.set_read_timeout(Some(TIMEOUT))?;
    s.set_write_timeout(Some(TIMEOUT))?;
    // One write: a server that answers and closes before reading the rest would reset us.
    let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(request.as_bytes())?;
    // The status line is all that matters; the body of /health/live is small.
    let mut head = [0u8; 64];
    let mut n = 0;
    while n < head.len() {
        match s.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            // A reset after the status line arrived does not undo the answer.
            Err(_) if n > 0 => break,
            Err(e) => return Err(e.into()),
        }
    }
    let line = String::from_utf8_lossy(&head[..n]);
    let status = line.split_whitespace().nth(1).unwrap_or("");
    if status == "200" {
        Ok(())
    } else {
        anyhow::bail!(
            "{path} on {addr} answered `{}`",
            line.lines().next().unwrap_or("")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unspecified_listen_addresses_are_checked_on_loopback() {
        let a = local_addr("0.0.0.0:8080".parse().unwrap());
        assert_eq!(a, "127.0.0.1:8080".parse().unwrap());
        let a = local_addr("[::]:9000".parse().unwrap());
        assert_eq!(a, "[::1]:9000".parse().unwrap());
        let a = local_addr("10.1.2.3:80".parse().unwrap());
        assert_eq!(a, "10.1.2.3:80".parse().unwrap());
    }

    #[test]
    fn a_closed_port_fails_the_check() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        assert!(check(addr, "/health/live").is_err());
    }

    #[test]
    fn only_a_200_passes() {
        for (reply, ok) in [
            ("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n", true),
            ("HTTP/1.1 503 Service Unavailable\r\n\r\n", false),
            ("garbage", false),
        ] {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = l.local_addr().unwrap();
            let t = std::thread::spawn(move || {
                let (mut c, _) = l.accept().unwrap();
                // The whole request, then the reply (closing with unread bytes would reset).
                let mut got = Vec::new();
                let mut buf = [0u8; 256];
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match c.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(k) => got.extend_from_slice(&buf[..k]),
                    }
                }
                c.write_all(reply.as_bytes()).unwrap();
            });
            assert_eq!(check(addr, "/health/live").is_ok(), ok, "{reply}");
            t.join().unwrap();
        }
    }
}
