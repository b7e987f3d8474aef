//! Time as guard reads and writes it: the [`Clock`] authentication reads (the system's, or in
//! tests one moved by hand), and the one UTC formatter, for `token list`, the access log and
//! ACME's log lines.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where the proxy's authentication reads the time: token expiry, lockout windows, the password
/// cache's TTL, session lifetimes. The system's clock, or a manual one that runs with it but can
/// be moved ahead, so a test of a five-minute lockout takes no five minutes.
#[derive(Clone, Debug, Default)]
pub struct Clock {
    /// Milliseconds a manual clock is ahead of the system's; `None` for the system's own.
    ahead: Option<Arc<AtomicU64>>,
}

impl Clock {
    /// The system's clock.
    pub fn system() -> Clock {
        Clock::default()
    }

    /// A clock that tests move with [`Clock::advance`]; every clone moves with it.
    pub fn manual() -> Clock {
        Clock {
            ahead: Some(Arc::new(AtomicU64::new(0))),
        }
    }

    /// Moves a manual clock forward.
    ///
    /// # Panics
    /// On the system's clock, which only time moves.
    pub fn advance(&self, by: Duration) {
        let ahead = self.ahead.as_ref().expect("only a manual clock can be moved");
        ahead.fetch_add(u64::try_from(by.as_millis()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    fn ahead(&self) -> Duration {
        self.ahead
            .as_ref()
            .map_or(Duration::ZERO, |a| Duration::from_millis(a.load(Ordering::Relaxed)))
    }

    /// Now, for intervals.
    pub fn instant(&self) -> Instant {
        Instant::now() + self.ahead()
    }

    /// Now in Unix seconds.
    pub fn unix(&self) -> u64 {
        unix_now().saturating_add(self.ahead().as_secs())
    }
}

/// Formats Unix seconds as RFC 3339 UTC, `2026-11-26T14:20:00Z`. A time past year 9999 (only a
/// hand-edited tokens file holds one) is written as its Unix seconds instead.
pub fn format_utc(secs: u64) -> String {
    let t = i64::try_from(secs)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok());
    match t {
        Some(t) => format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        ),
        None => format!("@{secs} (Unix seconds, past year 9999)"),
    }
}

/// The current time in Unix seconds, as the token commands take it.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_with_its_clones_and_the_system_one_does_not() {
        let c = Clock::manual();
        let (u, i) = (c.unix(), c.instant());
        c.clone().advance(Duration::from_secs(600));
        assert!(c.unix() >= u + 600);
        assert!(c.instant() >= i + Duration::from_secs(600));
        let s = Clock::system();
        assert!(s.unix() < u + 600);
    }

    #[test]
    fn format_utc_matches_gnu_date() {
        // Expected values from `date -u -d @SECS +%Y-%m-%dT%H:%M:%SZ`.
        for (secs, expect) in [
            (0, "1970-01-01T00:00:00Z"),
            (68_169_600, "1972-02-29T00:00:00Z"),
            (951_782_400, "2000-02-29T00:00:00Z"),
            (1_764_160_000, "2025-11-26T12:26:40Z"),
            (1_771_936_000, "2026-02-24T12:26:40Z"),
            (4_107_542_399, "2100-02-28T23:59:59Z"),
            (253_402_300_799, "9999-12-31T23:59:59Z"),
        ] {
            assert_eq!(format_utc(secs), expect, "{secs}");
        }
        assert_eq!(
            format_utc(253_402_300_800),
            "@253402300800 (Unix seconds, past year 9999)"
        );
        assert_eq!(
            format_utc(u64::MAX),
            format!("@{} (Unix seconds, past year 9999)", u64::MAX)
        );
    }
}
