//! Asynchronous, cached resolution of upstream host names.
//!
//! Pingora's `HttpPeer::new` resolves with a blocking call and panics when resolution fails,
//! so llmux resolves itself (on tokio's resolver pool) and hands Pingora a socket address.
//! Answers are kept for a short TTL; when a refresh fails, the last good answer is served.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long an answer is trusted before it is looked up again.
const TTL: Duration = Duration::from_secs(30);

/// A small DNS cache.
#[derive(Default)]
pub struct Resolver {
    cache: Mutex<HashMap<(String, u16), (SocketAddr, Instant)>>,
}

impl Resolver {
    /// Resolves `host:port` to one address (IP literals need no lookup).
    pub async fn resolve(&self, host: &str, port: u16) -> Result<SocketAddr, String> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(SocketAddr::new(ip, port));
        }
        let key = (host.to_owned(), port);
        let cached = self.cache.lock().ok().and_then(|c| c.get(&key).copied());
        if let Some((addr, at)) = cached {
            if at.elapsed() < TTL {
                return Ok(addr);
            }
        }
        let looked_up = tokio::net::lookup_host((host, port)).await.map(|mut it| {
            let all: Vec<SocketAddr> = it.by_ref().collect();
            // Prefer IPv4: many sidecar networks have no IPv6 route.
            all.iter().find(|a| a.is_ipv4()).or(all.first()).copied()
        });
        match (looked_up, cached) {
            (Ok(Some(addr)), _) => {
                if let Ok(mut c) = self.cache.lock() {
                    c.insert(key, (addr, Instant::now()));
                }
                Ok(addr)
            }
            (_, Some((stale, _))) => Ok(stale),
            (Ok(None), None) => Err(format!("no address found for `{host}`")),
            (Err(e), None) => Err(format!("could not resolve `{host}`: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn literals_and_localhost() {
        let r = Resolver::default();
        assert_eq!(
            r.resolve("127.0.0.1", 80).await.unwrap(),
            "127.0.0.1:80".parse().unwrap()
        );
        assert_eq!(
            r.resolve("::1", 81).await.unwrap(),
            "[::1]:81".parse().unwrap()
        );
        assert!(r.resolve("localhost", 82).await.unwrap().ip().is_loopback());
    }

    #[tokio::test]
    async fn unknown_host_is_an_error_not_a_panic() {
        let r = Resolver::default();
        assert!(r.resolve("no-such-host.invalid", 80).await.is_err());
    }
}
