//! The certificate task: sleeps until renewal is due, retries with a capped backoff, and warns
//! daily when a certificate nears expiry while renewals fail.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use guard_config::acme::AcmeSettings;
use instant_acme::Account;

use crate::tls::{self, CertResolver, Validity};

use super::challenges::{Challenge, Http01Answers};
use super::order::AttemptError;
use super::store::Store;
use super::when;

/// First retry after a failed attempt; doubled after each further failure.
const BACKOFF_INITIAL: Duration = Duration::from_secs(1);
/// The longest wait between attempts.
const BACKOFF_MAX: Duration = Duration::from_secs(3600);
/// The shortest wait after the CA itself refused (a problem document): a failed validation
/// repeated every second would only spend the CA's rate limit (Let's Encrypt: 5 per hour).
const BACKOFF_AFTER_PROBLEM: Duration = Duration::from_secs(60);
/// One whole attempt (account, order, validation, issuance); instant-acme's HTTP client has no
/// timeout of its own, and a CA behind a black hole would otherwise stall renewal forever.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(300);
/// Longest single sleep: the clock is re-read after it, so suspend or a clock jump cannot make
/// the task oversleep a renewal.
const MAX_SLEEP: Duration = Duration::from_secs(3600);
/// A certificate this close to expiry whose renewal keeps failing earns a daily warning.
const EXPIRY_WARNING: Duration = Duration::from_secs(7 * 86400);
/// How often that warning repeats.
const WARNING_INTERVAL: Duration = Duration::from_secs(86400);

/// Owns the account and keeps a valid certificate in the resolver.
pub(super) struct Manager {
    pub(super) settings: AcmeSettings,
    pub(super) store: Store,
    pub(super) resolver: Arc<CertResolver>,
    pub(super) answers: Arc<Http01Answers>,
    pub(super) account: Option<Account>,
}

impl Manager {
    pub(super) fn names(&self) -> String {
        self.settings.domains.join(", ")
    }

    /// Forever: sleep until renewal is due, then try until an attempt succeeds, waiting longer
    /// after each failure.
    pub(super) async fn run(mut self) {
        let mut backoff = Backoff::default();
        let mut warned: Option<SystemTime> = None;
        loop {
            let current = self
                .resolver
                .current()
                .and_then(|ck| ck.cert.first().and_then(tls::validity));
            if let Some(v) = &current {
                let now = SystemTime::now();
                if now < v.renew_at() {
                    let wait = v.renew_at().duration_since(now).unwrap_or_default();
                    tokio::time::sleep(wait.min(MAX_SLEEP)).await;
                    continue;
                }
                tracing::info!(domains = %self.names(), "renewing: a third of the certificate's lifetime remains (expires {})", when(v.not_after));
            }
            let result = match tokio::time::timeout(ATTEMPT_TIMEOUT, self.attempt()).await {
                Ok(r) => r,
                Err(_) => Err(AttemptError::local(
                    "certificate order",
                    format!("no result within {}s", ATTEMPT_TIMEOUT.as_secs()),
                )),
            };
            match result {
                Ok(()) => {
                    backoff = Backoff::default();
                    warned = None;
                }
                Err(e) => {
                    let delay = backoff.next(e.ca_refused());
                    tracing::warn!(
                        domains = %self.names(),
                        challenge = e.challenge.map_or("-", Challenge::name),
                        problem = e.problem_type().unwrap_or("-"),
                        "certificate not obtained: {e}; next attempt in {}s",
                        delay.as_secs()
                    );
                    if let Some(v) = &current {
                        self.warn_if_expiring(v, &mut warned);
                    }
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// Once a day while renewal keeps failing and expiry is a week away or less.
    fn warn_if_expiring(&self, v: &Validity, warned: &mut Option<SystemTime>) {
        let now = SystemTime::now();
        let left = v.not_after.duration_since(now).unwrap_or_default();
        let due = warned.is_none_or(|w| now.duration_since(w).unwrap_or_default() >= WARNING_INTERVAL);
        if left < EXPIRY_WARNING && due {
            *warned = Some(now);
            if left.is_zero() {
                tracing::error!(domains = %self.names(), "the certificate expired {} and could not be renewed; clients refuse it", when(v.not_after));
            } else {
                tracing::warn!(
                    domains = %self.names(),
                    "the certificate expires {} (in {}h) and renewal keeps failing",
                    when(v.not_after),
                    left.as_secs() / 3600
                );
            }
        }
    }
}

/// Capped exponential backoff between failed attempts.
#[derive(Debug, Default)]
struct Backoff {
    last: Option<Duration>,
}

impl Backoff {
    /// The next wait; at least a minute once the CA itself refused.
    fn next(&mut self, ca_refused: bool) -> Duration {
        let mut d = self.last.map_or(BACKOFF_INITIAL, |l| (l * 2).min(BACKOFF_MAX));
        if ca_refused {
            d = d.max(BACKOFF_AFTER_PROBLEM);
        }
        self.last = Some(d);
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap_and_waits_a_minute_after_a_problem() {
        let mut b = Backoff::default();
        let waits: Vec<u64> = (0..5).map(|_| b.next(false).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16]);
        assert_eq!(b.next(true).as_secs(), 60);
        assert_eq!(b.next(false).as_secs(), 120);
        for _ in 0..20 {
            b.next(false);
        }
        assert_eq!(b.next(false), BACKOFF_MAX);
    }
}
