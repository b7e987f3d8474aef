//! Validated values shared by the command line and the YAML file: upstream addresses, durations,
//! byte sizes and CIDR ranges. Each parser returns a lowercase message that names the bad value;
//! the caller adds the flag or key that held it.

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

/// Where requests are forwarded: an authority (`host:port`), over plain HTTP or over TLS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upstream {
    /// Host name or IP literal, as given (IPv6 without brackets).
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// `https://`: TLS to the upstream, its certificate checked for `host`.
    pub tls: bool,
}

impl Upstream {
    /// Parses `localhost:5000`, `127.0.0.1:5000`, `[::1]:5000`, `http://host:port[/]` or
    /// `https://host:port[/]` (an upstream across a network guard does not trust).
    pub fn parse(s: &str) -> Result<Upstream, String> {
        let s = s.trim();
        let (rest, tls) = if let Some(r) = s.strip_prefix("http://") {
            (r, false)
        } else if let Some(r) = s.strip_prefix("https://") {
            (r, true)
        } else if s.contains("://") {
            return Err(format!("{s:?}: an upstream is http:// or https://"));
        } else {
            (s, false)
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.is_empty() {
            return Err("empty upstream address; expected host:port, e.g. localhost:5000".into());
        }
        if rest.contains('/') || rest.contains('?') || rest.contains('#') || rest.contains('@') {
            return Err(format!(
                "{s:?}: expected host:port without a path, query or user, e.g. localhost:5000"
            ));
        }
        let (host, p) = if let Some(r) = rest.strip_prefix('[') {
            let (h, p) = r
                .split_once(']')
                .ok_or_else(|| format!("{s:?}: unclosed '[' in IPv6 address"))?;
            h.parse::<std::net::Ipv6Addr>()
                .map_err(|_| format!("{s:?}: {h:?} is not an IPv6 address"))?;
            let p = p
                .strip_prefix(':')
                .ok_or_else(|| format!("{s:?}: missing port; expected [addr]:port"))?;
            (h.to_string(), p)
        } else {
            let (h, p) = rest
                .rsplit_once(':')
                .ok_or_else(|| format!("{s:?}: missing port; expected host:port, e.g. localhost:5000"))?;
            if h.contains(':') {
                return Err(format!("{s:?}: write IPv6 addresses in brackets, e.g. [::1]:5000"));
            }
            (h.to_string(), p)
        };
        if host.is_empty() {
            return Err(format!("{s:?}: missing host; expected host:port"));
        }
        if !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':'))
        {
            return Err(format!("{s:?}: {host:?} is not a valid host name"));
        }
        let port: u16 = match p.parse() {
            Ok(0) | Err(_) => return Err(format!("{s:?}: {p:?} is not a valid port (1-65535)")),
            Ok(n) => n,
        };
        Ok(Upstream { host, port, tls })
    }

    /// The authority as it goes in a URI and in `Host`: `host:port`, IPv6 in brackets.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "https" } else { "http" };
        write!(f, "{scheme}://{}", self.authority())
    }
}

/// Most upstreams one site may have.
pub const MAX_UPSTREAMS: usize = 64;

/// How a site with several upstreams spreads its requests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Balance {
    /// Each in turn.
    #[default]
    RoundRobin,
    /// The one with the fewest requests in flight (long uploads and slow searches weigh).
    LeastConnections,
}

impl Balance {
    /// Parses `round_robin` or `least_connections`.
    pub fn parse(s: &str) -> Result<Balance, String> {
        match s.trim() {
            "round_robin" => Ok(Balance::RoundRobin),
            "least_connections" => Ok(Balance::LeastConnections),
            other => Err(format!("{other:?}: expected round_robin or least_connections")),
        }
    }
}

/// Parses a duration: a number with a unit `ms`, `s`, `m`, `h` or `d` (`10s`, `5m`, `90d`).
/// A bare `0` means zero (used for "off" where a setting documents it).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    let split = t
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{s:?}: missing unit; use ms, s, m, h or d (e.g. 30s)"))?;
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?}: not a duration; expected a whole number and a unit, e.g. 30s"))?;
    let secs = |mul: u64| {
        n.checked_mul(mul)
            .map(Duration::from_secs)
            .ok_or_else(|| format!("{s:?}: too large"))
    };
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => secs(1),
        "m" => secs(60),
        "h" => secs(3600),
        "d" => secs(86400),
        _ => Err(format!("{s:?}: unknown unit {unit:?}; use ms, s, m, h or d")),
    }
}

/// Formats a duration the way [`parse_duration`] reads it (for defaults in help and summaries).
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        "0".into()
    } else if ms.is_multiple_of(86_400_000) {
        format!("{}d", ms / 86_400_000)
    } else if ms.is_multiple_of(3_600_000) {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// Parses a byte size: a number with an optional unit `B`, `K`/`KiB`, `M`/`MiB`, `G`/`GiB`
/// (binary multiples; `KB`, `MB`, `GB` are accepted as the same binary units, as nginx does).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?}: not a size; expected a whole number and a unit, e.g. 100M"))?;
    let mul: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => return Err(format!("{s:?}: unknown unit {unit:?}; use K, M, G or T")),
    };
    n.checked_mul(mul).ok_or_else(|| format!("{s:?}: too large"))
}

/// An IP network in CIDR form (`10.0.0.0/8`, `::1/128`); a bare address means a single host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr(pub ipnet::IpNet);

impl Cidr {
    /// Parses `addr/len` or a bare address.
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let t = s.trim();
        if let Ok(net) = t.parse::<ipnet::IpNet>() {
            return Ok(Cidr(net.trunc()));
        }
        if let Ok(ip) = t.parse::<IpAddr>() {
            return Ok(Cidr(ipnet::IpNet::from(ip)));
        }
        Err(format!("{s:?} is not an IP address or CIDR range (e.g. 10.0.0.0/8)"))
    }

    /// Whether `ip` lies in this range (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        self.0.contains(&ip)
    }
}

/// Access-log line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// One human-readable line per request.
    Text,
    /// One JSON object per line.
    Json,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_accepts_the_documented_forms() {
        for (input, host, port) in [
            ("localhost:5000", "localhost", 5000),
            ("127.0.0.1:5000", "127.0.0.1", 5000),
            ("http://mlflow:5000", "mlflow", 5000),
            ("http://mlflow:5000/", "mlflow", 5000),
            ("[::1]:8080", "::1", 8080),
        ] {
            let u = Upstream::parse(input).unwrap();
            assert_eq!((u.host.as_str(), u.port, u.tls), (host, port, false), "{input}");
        }
        let u = Upstream::parse("https://mlflow.internal:443/").unwrap();
        assert_eq!((u.host.as_str(), u.port, u.tls), ("mlflow.internal", 443, true));
        assert_eq!(u.to_string(), "https://mlflow.internal:443");
        assert_eq!(Upstream::parse("[::1]:80").unwrap().authority(), "[::1]:80");
    }

    #[test]
    fn upstream_rejects_bad_values_with_the_reason() {
        for (input, needle) in [
            ("localhost", "missing port"),
            ("localhost:50o0", "not a valid port"),
            ("localhost:0", "not a valid port"),
            ("localhost:70000", "not a valid port"),
            ("ftp://x:1", "http:// or https://"),
            ("https://x", "missing port"),
            ("http://x:1/api", "without a path"),
            ("", "empty"),
            (":5000", "missing host"),
            ("::1:5000", "brackets"),
            ("bad host:1", "not a valid host"),
        ] {
            let e = Upstream::parse(input).unwrap_err();
            assert!(e.contains(needle), "{input}: {e}");
        }
    }

    #[test]
    fn durations_and_sizes_parse_with_units() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("90d").unwrap(), Duration::from_secs(90 * 86400));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert!(parse_duration("10").unwrap_err().contains("missing unit"));
        assert!(parse_duration("10y").unwrap_err().contains("unknown unit"));
        assert_eq!(format_duration(Duration::from_secs(300)), "5m");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(parse_size("100M").unwrap(), 100 << 20);
        assert_eq!(parse_size("64KiB").unwrap(), 64 << 10);
        assert_eq!(parse_size("12").unwrap(), 12);
        assert!(parse_size("1X").unwrap_err().contains("unknown unit"));
    }

    #[test]
    fn cidr_matches_mapped_addresses() {
        let c = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(c.contains("10.1.2.3".parse().unwrap()));
        assert!(c.contains("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!c.contains("11.0.0.1".parse().unwrap()));
        assert!(Cidr::parse("127.0.0.1").unwrap().contains("127.0.0.1".parse().unwrap()));
        assert!(Cidr::parse("nope").is_err());
    }
}
