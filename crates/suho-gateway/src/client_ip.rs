//! The client's IP address: the peer's, unless the peer is a trusted reverse proxy
//! (`http.trusted_proxies`); then the rightmost `X-Forwarded-For` address that is not itself
//! a trusted proxy (each proxy appends the address it saw, so the entries to the left of the
//! first untrusted one are whatever the client chose to send).

use std::net::{IpAddr, SocketAddr};

use axum::http::HeaderMap;
use suho_config::IpNetwork;

/// The header reverse proxies append the client address to.
const FORWARDED_FOR: &str = "x-forwarded-for";

/// The address a request from `peer` with `headers` comes from.
pub(crate) fn client_ip(peer: SocketAddr, headers: &HeaderMap, trusted: &[IpNetwork]) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|n| n.contains(ip));
    let mut client = peer.ip();
    if !is_trusted(client) {
        return client;
    }
    // Every X-Forwarded-For line, in order, read right to left.
    let hops: Vec<&str> = headers
        .get_all(FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .collect();
    for hop in hops.into_iter().rev() {
        let Ok(ip) = hop.trim().parse::<IpAddr>() else {
            // Not an address: nothing further left can be believed.
            break;
        };
        client = ip;
        if !is_trusted(ip) {
            break;
        }
    }
    client
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(xff: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in xff {
            h.append(FORWARDED_FOR, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn forwarded_for_is_believed_only_from_a_trusted_proxy() {
        let trusted: Vec<IpNetwork> = vec!["10.0.0.0/8".parse().unwrap()];
        let proxy: SocketAddr = "10.0.0.5:4000".parse().unwrap();
        let stranger: SocketAddr = "203.0.113.9:4000".parse().unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        // A stranger's header is ignored.
        assert_eq!(
            client_ip(stranger, &headers(&["198.51.100.1"]), &trusted),
            ip("203.0.113.9")
        );
        // Through the proxy: the rightmost untrusted hop, whatever the client put before it.
        assert_eq!(
            client_ip(
                proxy,
                &headers(&["1.1.1.1, 198.51.100.1", "10.0.0.7"]),
                &trusted
            ),
            ip("198.51.100.1")
        );
        // A hop that is not an address stops the walk at the last trusted one.
        assert_eq!(
            client_ip(proxy, &headers(&["junk, 10.0.0.7"]), &trusted),
            ip("10.0.0.7")
        );
        // No header: the proxy itself.
        assert_eq!(client_ip(proxy, &headers(&[]), &trusted), ip("10.0.0.5"));
        // Nothing trusted: the peer, always.
        assert_eq!(
            client_ip(proxy, &headers(&["198.51.100.1"]), &[]),
            ip("10.0.0.5")
        );
    }
}
