//! One attempt against the CA: the account, the order, its validation and the issued
//! certificate swapped in, and why an attempt failed.

use std::fmt;
use std::time::Duration;

use instant_acme::{
    Account, AuthorizationStatus, Identifier, NewAccount, NewOrder, Order, OrderStatus, Problem, RetryPolicy,
};

use crate::tls;

use super::challenges::{challenge_certificate, Challenge, Published};
use super::renewal::Manager;
use super::when;

/// How long the CA may take to validate, and to issue after finalization. Polling starts at
/// 250 ms and doubles.
const POLL_TIMEOUT: Duration = Duration::from_secs(90);
/// The problem type a CA answers when it no longer knows the stored account (RFC 8555 §7.3.1).
const ACCOUNT_DOES_NOT_EXIST: &str = "urn:ietf:params:acme:error:accountDoesNotExist";

/// Why an attempt failed, naming the step, the domain and challenge where known, and the CA's
/// problem document when it sent one.
#[derive(Debug)]
pub(super) struct AttemptError {
    pub(super) step: &'static str,
    pub(super) domain: Option<String>,
    pub(super) challenge: Option<Challenge>,
    pub(super) cause: Cause,
}

#[derive(Debug)]
pub(super) enum Cause {
    /// The CA answered with a problem document.
    Problem(Box<Problem>),
    /// The CA could not be reached or answered something that is not ACME.
    Transport(String),
    /// Our side: a state file, a key, a certificate that does not parse.
    Local(String),
}

impl AttemptError {
    fn new(step: &'static str, challenge: Option<Challenge>, e: instant_acme::Error) -> Self {
        let cause = match e {
            instant_acme::Error::Api(p) => Cause::Problem(Box::new(p)),
            instant_acme::Error::Timeout(_) => {
                Cause::Transport(format!("the CA did not finish within {}s", POLL_TIMEOUT.as_secs()))
            }
            other => Cause::Transport(guard_config::error::chain(&other)),
        };
        AttemptError {
            step,
            domain: None,
            challenge,
            cause,
        }
    }

    pub(super) fn local(step: &'static str, why: impl fmt::Display) -> Self {
        AttemptError {
            step,
            domain: None,
            challenge: None,
            cause: Cause::Local(why.to_string()),
        }
    }

    fn for_domain(mut self, domain: impl Into<String>) -> Self {
        self.domain = Some(domain.into());
        self
    }

    pub(super) fn problem_type(&self) -> Option<&str> {
        match &self.cause {
            Cause::Problem(p) => p.r#type.as_deref(),
            _ => None,
        }
    }

    /// The CA answered, so retrying at once would only spend its rate limits.
    pub(super) fn ca_refused(&self) -> bool {
        matches!(self.cause, Cause::Problem(_))
    }

    /// The CA tried the challenge and it failed: another challenge type may work.
    fn validation_failed(&self) -> bool {
        self.step == "validation"
    }
}

impl fmt::Display for AttemptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.step)?;
        if let Some(d) = &self.domain {
            write!(f, " of {d}")?;
        }
        if let Some(c) = self.challenge {
            write!(f, " by {}", c.name())?;
        }
        f.write_str(" failed: ")?;
        match &self.cause {
            Cause::Problem(p) => write_problem(f, p),
            Cause::Transport(s) | Cause::Local(s) => f.write_str(s),
        }
    }
}

/// `problem TYPE: DETAIL` and each subproblem: what an operator searches the CA's docs for.
fn write_problem(f: &mut fmt::Formatter<'_>, p: &Problem) -> fmt::Result {
    write!(
        f,
        "CA problem {}: {}",
        p.r#type.as_deref().unwrap_or("(no type)"),
        p.detail.as_deref().unwrap_or("(no detail)")
    )?;
    for sub in &p.subproblems {
        write!(
            f,
            "; {}: {}",
            sub.r#type.as_deref().unwrap_or("(no type)"),
            sub.detail.as_deref().unwrap_or("(no detail)")
        )?;
    }
    Ok(())
}

/// What a successful order yields.
struct Issued {
    chain_pem: String,
    key_pem: String,
}

impl Manager {
    /// One attempt: each challenge type in turn until one yields a certificate, which is
    /// stored and swapped in.
    pub(super) async fn attempt(&mut self) -> Result<(), AttemptError> {
        let sequence = Challenge::sequence(self.settings.challenge);
        for (i, &challenge) in sequence.iter().enumerate() {
            match self.order_with_account(challenge).await {
                Ok(issued) => return self.install(issued),
                Err(e) if e.validation_failed() && i + 1 < sequence.len() => {
                    tracing::warn!(
                        domains = %self.names(),
                        challenge = challenge.name(),
                        problem = e.problem_type().unwrap_or("-"),
                        "{e}; trying {} next",
                        sequence[i + 1].name()
                    );
                }
                Err(e) => return Err(e),
            }
        }
        unreachable!("every challenge sequence is non-empty")
    }

    /// An order with the stored account; when the CA no longer knows it (its database was reset,
    /// or the account was deactivated), a new account and one more try.
    async fn order_with_account(&mut self, challenge: Challenge) -> Result<Issued, AttemptError> {
        let account = self.account().await?;
        match self.order(&account, challenge).await {
            Err(e) if e.problem_type() == Some(ACCOUNT_DOES_NOT_EXIST) => {
                tracing::warn!(domains = %self.names(), "the CA no longer knows the stored account; creating a new one");
                self.account = None;
                let account = self.create_account().await?;
                self.order(&account, challenge).await
            }
            other => other,
        }
    }

    fn builder(&self) -> Result<instant_acme::AccountBuilder, AttemptError> {
        let built = match &self.settings.ca_root {
            Some(root) => Account::builder_with_root(root),
            None => Account::builder(),
        };
        built.map_err(|e| AttemptError::local("ACME client setup", guard_config::error::chain(&e)))
    }

    /// The account from the state directory, or a new one. Kept for later attempts.
    async fn account(&mut self) -> Result<Account, AttemptError> {
        if let Some(a) = &self.account {
            return Ok(a.clone());
        }
        let creds = match self.store.load_account() {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("{}; creating a new ACME account", guard_config::error::chain(&e));
                None
            }
        };
        let Some(creds) = creds else {
            return self.create_account().await;
        };
        let account = self
            .builder()?
            .from_credentials(creds)
            .await
            .map_err(|e| self.unreachable(AttemptError::new("loading the ACME account", None, e)))?;
        tracing::info!(account = account.id(), "using the stored ACME account");
        self.account = Some(account.clone());
        Ok(account)
    }

    async fn create_account(&mut self) -> Result<Account, AttemptError> {
        let contact = format!("mailto:{}", self.settings.email);
        let new = NewAccount {
            contact: &[&contact],
            terms_of_service_agreed: true,
            only_return_existing: false,
        };
        let (account, creds) = self
            .builder()?
            .create(&new, self.settings.directory.clone(), None)
            .await
            .map_err(|e| self.unreachable(AttemptError::new("creating the ACME account", None, e)))?;
        self.store
            .save_account(&creds)
            .map_err(|e| AttemptError::local("storing the ACME account", guard_config::error::chain(&e)))?;
        tracing::info!(account = account.id(), directory = %self.settings.directory, "created an ACME account");
        self.account = Some(account.clone());
        Ok(account)
    }

    /// Names the flag to check when the directory itself cannot be reached.
    fn unreachable(&self, mut e: AttemptError) -> AttemptError {
        if let Cause::Transport(s) = &e.cause {
            e.cause = Cause::Transport(format!(
                "cannot reach the ACME directory {} (--acme-directory): {s}",
                self.settings.directory
            ));
        }
        e
    }

    /// One order for every domain, validated by `challenge`.
    async fn order(&self, account: &Account, challenge: Challenge) -> Result<Issued, AttemptError> {
        let ids: Vec<Identifier> = self
            .settings
            .domains
            .iter()
            .map(|d| Identifier::Dns(d.clone()))
            .collect();
        tracing::info!(domains = %self.names(), challenge = challenge.name(), "ordering a certificate");
        let mut order = account
            .new_order(&NewOrder::new(&ids))
            .await
            .map_err(|e| AttemptError::new("certificate order", Some(challenge), e))?;
        let mut published = Published {
            answers: &self.answers,
            resolver: &self.resolver,
            tokens: Vec::new(),
            names: Vec::new(),
        };
        self.publish(&mut order, challenge, &mut published).await?;

        let retry = RetryPolicy::new().timeout(POLL_TIMEOUT);
        let status = order.poll_ready(&retry).await;
        if !matches!(status, Ok(OrderStatus::Ready)) {
            // The order's own error is often generic; the authorization says which name failed
            // and the challenge's problem document says why.
            if let Some((domain, problem)) = failed_authorization(&mut order, challenge).await {
                let e = match problem {
                    Some(p) => AttemptError::new("validation", Some(challenge), instant_acme::Error::Api(p)),
                    None => AttemptError::local("validation", "the authorization is invalid"),
                };
                return Err(AttemptError {
                    challenge: Some(challenge),
                    ..e
                }
                .for_domain(domain));
            }
            return Err(match status {
                Err(e) => AttemptError::new("validation", Some(challenge), e),
                Ok(s) => AttemptError {
                    challenge: Some(challenge),
                    ..AttemptError::local("validation", format!("the order is {s:?}"))
                },
            });
        }
        let key_pem = order
            .finalize()
            .await
            .map_err(|e| AttemptError::new("finalization", Some(challenge), e))?;
        let chain_pem = order
            .poll_certificate(&retry)
            .await
            .map_err(|e| AttemptError::new("certificate download", Some(challenge), e))?;
        drop(published);
        Ok(Issued { chain_pem, key_pem })
    }

    /// Publishes an answer for every pending authorization and tells the CA to validate it.
    async fn publish<'a>(
        &'a self,
        order: &mut Order,
        challenge: Challenge,
        published: &mut Published<'a>,
    ) -> Result<(), AttemptError> {
        let mut authorizations = order.authorizations();
        while let Some(next) = authorizations.next().await {
            let mut authz = next.map_err(|e| AttemptError::new("fetching the authorization", Some(challenge), e))?;
            let domain = authz.identifier().to_string();
            match authz.status {
                // Validated recently for this account: nothing to prove.
                AuthorizationStatus::Valid => continue,
                AuthorizationStatus::Pending => {}
                other => {
                    return Err(AttemptError {
                        challenge: Some(challenge),
                        ..AttemptError::local("validation", format!("the authorization is {other:?}"))
                    }
                    .for_domain(domain))
                }
            }
            let Some(mut handle) = authz.challenge(challenge.acme_type()) else {
                return Err(AttemptError {
                    challenge: Some(challenge),
                    ..AttemptError::local("validation", "the CA does not offer this challenge")
                }
                .for_domain(domain));
            };
            let ka = handle.key_authorization();
            match challenge {
                Challenge::Http01 => {
                    self.answers.insert(handle.token.clone(), ka.as_str().to_owned());
                    published.tokens.push(handle.token.clone());
                }
                Challenge::TlsAlpn01 => {
                    let cert = challenge_certificate(&domain, ka.digest().as_ref()).map_err(|e| {
                        AttemptError::local("making the tls-alpn-01 certificate", e).for_domain(&domain)
                    })?;
                    self.resolver.set_challenge(&domain, cert);
                    published.names.push(domain.clone());
                }
            }
            handle
                .set_ready()
                .await
                .map_err(|e| AttemptError::new("validation", Some(challenge), e).for_domain(&domain))?;
        }
        Ok(())
    }

    /// Swaps the new certificate in (new handshakes get it at once, open connections keep
    /// theirs) and stores it.
    fn install(&self, issued: Issued) -> Result<(), AttemptError> {
        let (cert_path, key_path) = (self.store.cert_path(), self.store.key_path());
        let ck = tls::certified_key(
            issued.chain_pem.as_bytes(),
            issued.key_pem.as_bytes(),
            &cert_path,
            &key_path,
        )
        .map_err(|e| AttemptError::local("checking the issued certificate", guard_config::error::chain(&e)))?;
        let v = ck
            .cert
            .first()
            .and_then(tls::validity)
            .ok_or_else(|| AttemptError::local("checking the issued certificate", "the leaf cannot be parsed"))?;
        self.resolver.set(ck);
        tracing::info!(
            domains = %self.names(),
            "certificate installed: serial {}, valid until {}, renewal due {}",
            v.serial,
            when(v.not_after),
            when(v.renew_at())
        );
        // Serving comes first; a state directory that cannot be written costs a new order on the
        // next start, which the log says.
        if let Err(e) = self.store.save_certificate(&issued.chain_pem, &issued.key_pem) {
            tracing::error!(domains = %self.names(), "{}; the next start orders a new certificate", guard_config::error::chain(&e));
        }
        Ok(())
    }
}

/// The first invalid authorization after a failed validation, with its challenge's problem.
async fn failed_authorization(order: &mut Order, challenge: Challenge) -> Option<(String, Option<Problem>)> {
    let mut authorizations = order.authorizations();
    while let Some(Ok(mut authz)) = authorizations.next().await {
        let Ok(state) = authz.refresh().await else {
            continue;
        };
        if state.status == AuthorizationStatus::Invalid {
            let problem = state
                .challenges
                .iter()
                .find(|c| c.r#type == challenge.acme_type())
                .and_then(|c| c.error.clone());
            return Some((state.identifier().to_string(), problem));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_are_reported_with_type_and_detail() {
        let p: Problem = serde_json::from_str(
            r#"{"type":"urn:ietf:params:acme:error:connection","detail":"refused","status":400,
                "subproblems":[{"type":"urn:ietf:params:acme:error:dns","detail":"no such host"}]}"#,
        )
        .unwrap();
        let e = AttemptError::new("validation", Some(Challenge::Http01), instant_acme::Error::Api(p))
            .for_domain("a.example.com");
        assert_eq!(
            e.to_string(),
            "validation of a.example.com by http-01 failed: CA problem urn:ietf:params:acme:error:connection: refused; \
             urn:ietf:params:acme:error:dns: no such host"
        );
        assert!(e.ca_refused() && e.validation_failed());
    }
}
