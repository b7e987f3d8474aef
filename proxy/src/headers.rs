//! Header hygiene between client and upstream (RFC 9110 §7.6.1 and RFC 7239): hop-by-hop headers
//! removed both ways, `X-Forwarded-*` and `X-Real-IP` set from the real connection, identity
//! headers only guard writes, and `Host` chosen on purpose.

use std::net::{IpAddr, Ipv6Addr};

use guard_config::model::Cidr;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Headers that describe one hop and never travel further (RFC 9110 §7.6.1, plus the
/// proxy-auth pair, the pre-standard `Proxy-Connection`, and `HTTP2-Settings`, which only means
/// something with the `Upgrade: h2c` guard never forwards). `Connection` comes first:
/// [`strip_hop_by_hop`] reads its bit as bit 0.
const HOP_BY_HOP: [HeaderName; 10] = [
    header::CONNECTION,
    HeaderName::from_static("proxy-connection"),
    HeaderName::from_static("keep-alive"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
    header::PROXY_AUTHENTICATE,
    HeaderName::from_static("http2-settings"),
];

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const FORWARDED: HeaderName = HeaderName::from_static("forwarded");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// Removes hop-by-hop headers: every header the `Connection` header names, and the fixed list.
/// Applied to requests and responses alike.
///
/// This runs twice per request, so it looks before it removes: one pass over the names present
/// (usually a handful, and none or only `Connection` among them) finds what to remove, and a
/// `Connection` naming only listed headers or `close` (nearly always) costs no allocation.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Bit i set: HOP_BY_HOP[i] is present.
    let mut present = 0u16;
    for name in headers.keys() {
        if let Some(i) = hop_by_hop_index(name.as_str().as_bytes()) {
            present |= 1 << i;
        }
    }
    if present == 0 {
        return;
    }
    let mut named = Vec::new();
    if present & 1 != 0 {
        for value in &headers.get_all(header::CONNECTION) {
            let value = value.as_bytes().trim_ascii();
            // Nearly always a single token: `keep-alive`, `close` or `upgrade`.
            if close_or_listed(value) {
                continue;
            }
            for token in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                if !close_or_listed(token) {
                    if let Ok(name) = HeaderName::from_bytes(token) {
                        named.push(name);
                    }
                }
            }
        }
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
    }
    for name in named {
        headers.remove(name);
    }
}

/// Where a lower-case header name is in [`HOP_BY_HOP`]. A `match` on the bytes is a length
/// switch and one compare, where comparing `HeaderName`s one by one costs several per header;
/// a test keeps the two lists in step.
fn hop_by_hop_index(name: &[u8]) -> Option<usize> {
    let i = match name {
        b"connection" => 0,
        b"proxy-connection" => 1,
        b"keep-alive" => 2,
        b"te" => 3,
        b"trailer" => 4,
        b"transfer-encoding" => 5,
        b"upgrade" => 6,
        b"proxy-authorization" => 7,
        b"proxy-authenticate" => 8,
        b"http2-settings" => 9,
        _ => return None,
    };
    Some(i)
}

/// Whether a `Connection` token is `close` or a name in [`HOP_BY_HOP`], in any case (lowered on
/// the stack: no listed name is longer than 19 bytes).
fn close_or_listed(token: &[u8]) -> bool {
    let mut buf = [0u8; 20];
    let Some(lower) = buf.get_mut(..token.len()) else {
        return false;
    };
    lower.copy_from_slice(token);
    lower.make_ascii_lowercase();
    lower == b"close" || hop_by_hop_index(lower).is_some()
}

/// Drops the request headers a client must not choose, in one pass over the names:
///
/// - names containing `_`: CGI, WSGI and ASGI servers fold `-` and `_` into one name
///   (`HTTP_X_FORWARDED_USER`), so `X_Forwarded_User` could stand in for a header guard sets;
///   nginx drops them by default for the same reason;
/// - the identity headers guard (or a later guard) writes, from every peer, trusted or not:
///   `X-Forwarded-User`, `-Email`, `-Groups`, `-Preferred-Username`, `X-Guard-Secret`,
///   `X-Guard-Admin`, and `identity` (the
///   configured `forwarded_user_header`, whatever it is called, even when it is off);
/// - from a peer outside `trusted_proxies`, the headers upstreams read as facts about the
///   client or the original request: `X-Real-IP`, `True-Client-IP`, `X-Forwarded-Port`,
///   `-Prefix`, `-Server`, `X-Original-URL`, `X-Rewrite-URL` (Tornado trusts `X-Real-IP`, IIS
///   and Symfony rewrite the path from the last two).
///
/// Nothing is allocated unless something is dropped.
pub fn drop_client_chosen(headers: &mut HeaderMap, trusted: bool, identity: Option<&HeaderName>) {
    let mut drop = Vec::new();
    for name in headers.keys() {
        let n = name.as_str();
        let chosen = n.contains('_')
            || identity.is_some_and(|i| i == name)
            || matches!(
                n,
                "x-forwarded-user"
                    | "x-forwarded-email"
                    | "x-forwarded-groups"
                    | "x-forwarded-preferred-username"
                    | "x-guard-secret"
                    | "x-guard-admin"
            )
            || (!trusted
                && matches!(
                    n,
                    "x-real-ip"
                        | "true-client-ip"
                        | "x-forwarded-port"
                        | "x-forwarded-prefix"
                        | "x-forwarded-server"
                        | "x-original-url"
                        | "x-rewrite-url"
                ));
        if chosen {
            drop.push(name.clone());
        }
    }
    for name in drop {
        headers.remove(name);
    }
}

/// Whether a request asks to become a WebSocket (`Connection: upgrade` and `Upgrade: websocket`,
/// nothing else offered): the only protocol guard lets a connection switch to. Any other
/// `Upgrade` (`h2c` above all: an upstream speaking it would take the connection over HTTP/2,
/// past every check) is removed with the other hop-by-hop headers.
pub fn wants_websocket(headers: &HeaderMap) -> bool {
    let mut upgrades = headers.get_all(header::UPGRADE).iter();
    let (Some(proto), None) = (upgrades.next(), upgrades.next()) else {
        return false;
    };
    proto.as_bytes().trim_ascii().eq_ignore_ascii_case(b"websocket")
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"upgrade"))
}

/// Restores the two headers a WebSocket upgrade needs after [`strip_hop_by_hop`] removed them.
pub fn restore_websocket(headers: &mut HeaderMap) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
}

/// One client as guard counts it (failed logins, open connections): an IPv4 address, or an IPv6
/// /64, the smallest network a subscriber is given, so stepping through one's own addresses does
/// not reset a count. An IPv4-mapped IPv6 peer counts as its IPv4 address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClientNet(IpAddr);

impl ClientNet {
    /// The client `peer` belongs to.
    pub fn of(peer: IpAddr) -> ClientNet {
        match peer {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => ClientNet(IpAddr::V4(v4)),
                None => ClientNet(IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !u128::from(u64::MAX)))),
            },
            v4 => ClientNet(v4),
        }
    }
}

impl std::fmt::Display for ClientNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            IpAddr::V4(a) => write!(f, "{a}"),
            IpAddr::V6(net) => write!(f, "{net}/64"),
        }
    }
}

/// The client a request counts against (for the lockout): the peer itself, or when the peer is a
/// trusted proxy, the rightmost `X-Forwarded-For` address that is not a trusted proxy (what the
/// proxies appended; anything to its left the client wrote). When that entry is not an address,
/// or every entry is trusted, the peer stands for the client: fail closed, never a free pass.
pub fn client_ip(headers: &HeaderMap, peer: IpAddr, trusted: &[Cidr]) -> IpAddr {
    if !trusted.iter().any(|c| c.contains(peer)) {
        return peer;
    }
    for value in headers.get_all(&X_FORWARDED_FOR).iter().rev() {
        let Ok(text) = value.to_str() else { return peer };
        for entry in text.rsplit(',') {
            let Ok(ip) = entry.trim().parse::<IpAddr>() else {
                return peer;
            };
            if !trusted.iter().any(|c| c.contains(ip)) {
                return ip;
            }
        }
    }
    peer
}

/// Sets `X-Forwarded-For`, `-Proto`, `-Host` and `X-Real-IP` from the real connection (as
/// nginx's `proxy_set_header X-Real-IP $remote_addr`). A peer inside a trusted range keeps its
/// own values and has its address appended; anyone else's copies (and any RFC 7239 `Forwarded`
/// header) are dropped, so a client cannot spoof its origin.
///
/// `peer_text` is `peer` as text, IPv4-mapped addresses written as IPv4.
pub fn set_forwarded(
    headers: &mut HeaderMap,
    peer: IpAddr,
    peer_text: &HeaderValue,
    trusted: &[Cidr],
    client_host: Option<&HeaderValue>,
) {
    if trusted.iter().any(|c| c.contains(peer)) {
        let peer_str = peer_text.to_str().unwrap_or_default().to_owned();
        let prior: Vec<String> = headers
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::to_owned)
            .collect();
        let chain = if prior.is_empty() {
            peer_str
        } else {
            format!("{}, {peer_str}", prior.join(", "))
        };
        if let Ok(v) = HeaderValue::from_str(&chain) {
            headers.insert(X_FORWARDED_FOR, v);
        }
        if !headers.contains_key(&X_FORWARDED_PROTO) {
            headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("https"));
        }
        if !headers.contains_key(&X_FORWARDED_HOST) {
            if let Some(h) = client_host {
                headers.insert(X_FORWARDED_HOST, h.clone());
            }
        }
        if !headers.contains_key(&X_REAL_IP) {
            headers.insert(X_REAL_IP, peer_text.clone());
        }
        return;
    }
    // `insert` replaces every copy the client sent.
    if headers.keys().any(|k| k.as_str() == FORWARDED.as_str()) {
        headers.remove(&FORWARDED);
    }
    headers.insert(X_FORWARDED_FOR, peer_text.clone());
    headers.insert(X_REAL_IP, peer_text.clone());
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("https"));
    match client_host {
        Some(h) => drop(headers.insert(X_FORWARDED_HOST, h.clone())),
        None => drop(headers.remove(&X_FORWARDED_HOST)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        m
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_are_removed() {
        let mut h = map(&[
            ("connection", "keep-alive, X-Secret-Hop"),
            ("x-secret-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("proxy-authorization", "Basic eA=="),
            ("proxy-connection", "keep-alive"),
            ("upgrade", "h2c"),
            ("http2-settings", "AAMAAABkAARAAAAAAAIAAAAA"),
            ("x-end-to-end", "kept"),
        ]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h["x-end-to-end"], "kept");
    }

    #[test]
    fn connection_close_and_keep_alive_remove_only_themselves() {
        let mut h = map(&[("Connection", "Close"), ("server", "x"), ("content-length", "3")]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 2, "{h:?}");
        let mut h = map(&[
            ("connection", "keep-alive, Upgrade"),
            ("keep-alive", "timeout=5"),
            ("date", "x"),
        ]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h.keys().collect::<Vec<_>>(), ["date"]);
        let mut h = map(&[("x-a", "1"), ("date", "x")]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 2);
    }

    #[test]
    fn the_match_and_the_list_of_hop_by_hop_names_agree() {
        for (i, name) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_by_hop_index(name.as_str().as_bytes()), Some(i), "{name}");
        }
        assert_eq!(hop_by_hop_index(b"x-keep-alive"), None);
    }

    #[test]
    fn underscored_names_are_dropped() {
        let mut h = map(&[
            ("x_forwarded_user", "admin"),
            ("X-Forwarded_Host", "evil"),
            ("x-fine", "1"),
        ]);
        drop_client_chosen(&mut h, true, None);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-fine"));
    }

    #[test]
    fn identity_headers_go_for_every_peer_and_client_facts_for_untrusted_ones() {
        let all = [
            ("x-forwarded-user", "admin"),
            ("x-forwarded-email", "admin@example.com"),
            ("x-forwarded-groups", "admins"),
            ("x-forwarded-preferred-username", "admin"),
            ("x-guard-secret", "guessed"),
            ("x-guard-admin", "true"),
            ("x-remote-user", "admin"),
            ("x-real-ip", "6.6.6.6"),
            ("true-client-ip", "6.6.6.6"),
            ("x-forwarded-port", "80"),
            ("x-forwarded-prefix", "/evil"),
            ("x-forwarded-server", "evil"),
            ("x-original-url", "/admin"),
            ("x-rewrite-url", "/admin"),
            ("x-fine", "1"),
        ];
        let configured = HeaderName::from_static("x-remote-user");
        let mut h = map(&all);
        drop_client_chosen(&mut h, false, Some(&configured));
        assert_eq!(h.keys().collect::<Vec<_>>(), ["x-fine"]);
        let mut h = map(&all);
        drop_client_chosen(&mut h, true, Some(&configured));
        assert_eq!(h.len(), 8, "a trusted proxy's client facts stay: {h:?}");
        assert!(!h.contains_key("x-forwarded-user") && !h.contains_key("x-remote-user"));
        assert_eq!(h["x-real-ip"], "6.6.6.6");
    }

    #[test]
    fn only_a_lone_websocket_is_an_upgrade() {
        let ws = |c: &str, u: &[&str]| {
            let mut pairs = vec![("connection", c)];
            pairs.extend(u.iter().map(|u| ("upgrade", *u)));
            wants_websocket(&map(&pairs))
        };
        assert!(ws("Upgrade", &["websocket"]));
        assert!(ws("keep-alive, upgrade", &["WebSocket"]));
        assert!(!ws("Upgrade", &["h2c"]));
        assert!(!ws("Upgrade", &["websocket, h2c"]));
        assert!(!ws("Upgrade", &["websocket", "h2c"]));
        assert!(!ws("keep-alive", &["websocket"]));
        assert!(!ws("Upgrade", &[]));
    }

    #[test]
    fn untrusted_peer_cannot_spoof_forwarded_headers() {
        let mut h = map(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-host", "evil"),
            ("x-forwarded-proto", "http"),
            ("forwarded", "for=1.2.3.4"),
        ]);
        let host = HeaderValue::from_static("mlflow.example.com");
        set_forwarded(
            &mut h,
            "127.0.0.1".parse().unwrap(),
            &HeaderValue::from_static("127.0.0.1"),
            &[],
            Some(&host),
        );
        assert_eq!(h["x-forwarded-for"], "127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "mlflow.example.com");
        assert_eq!(h["x-real-ip"], "127.0.0.1");
        assert!(!h.contains_key("forwarded"));
    }

    #[test]
    fn the_client_is_the_rightmost_untrusted_forwarded_address() {
        let trusted = [Cidr::parse("10.0.0.0/8").unwrap()];
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let lb = ip("10.0.0.1");
        let xff = |v: &[&str]| map(&v.iter().map(|v| ("x-forwarded-for", *v)).collect::<Vec<_>>());
        assert_eq!(client_ip(&xff(&["203.0.113.5"]), lb, &trusted), ip("203.0.113.5"));
        // What the client wrote on the left is not believed; trusted hops on the right are skipped.
        assert_eq!(
            client_ip(&xff(&["1.2.3.4, 203.0.113.5, 10.0.0.7"]), lb, &trusted),
            ip("203.0.113.5")
        );
        assert_eq!(
            client_ip(&xff(&["1.2.3.4", "203.0.113.5"]), lb, &trusted),
            ip("203.0.113.5")
        );
        // Garbage or no untrusted hop: the proxy itself stands for the client.
        assert_eq!(client_ip(&xff(&["1.2.3.4, nonsense"]), lb, &trusted), lb);
        assert_eq!(client_ip(&xff(&["10.0.0.9"]), lb, &trusted), lb);
        assert_eq!(client_ip(&HeaderMap::new(), lb, &trusted), lb);
        // An untrusted peer's header is ignored.
        assert_eq!(
            client_ip(&xff(&["203.0.113.5"]), ip("198.51.100.1"), &trusted),
            ip("198.51.100.1")
        );
    }

    #[test]
    fn trusted_peer_extends_the_chain() {
        let mut h = map(&[("x-forwarded-for", "1.2.3.4"), ("x-forwarded-proto", "http")]);
        let trusted = [Cidr::parse("10.0.0.0/8").unwrap()];
        set_forwarded(
            &mut h,
            "10.1.1.1".parse().unwrap(),
            &HeaderValue::from_static("10.1.1.1"),
            &trusted,
            None,
        );
        assert_eq!(h["x-forwarded-for"], "1.2.3.4, 10.1.1.1");
        assert_eq!(h["x-forwarded-proto"], "http");
    }
}
