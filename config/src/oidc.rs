//! `auth.oidc`: the OpenID Connect provider people sign in with through their browser (single
//! sign-on), and who of them may enter, as written and as checked. The client secret is read
//! here from its file or variable, never written inline. The proxy's `oidc` module runs the
//! sign-in against it.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::roles::Role;
use crate::secret::{ct_eq, Secret};

/// Scopes asked for unless `scopes` says otherwise.
pub const DEFAULT_SCOPES: [&str; 3] = ["openid", "email", "profile"];
/// The claim naming a person to logs, roles and the upstream unless `user_claim` says otherwise.
pub const DEFAULT_USER_CLAIM: &str = "preferred_username";
/// The claim listing a person's groups unless `groups_claim` says otherwise.
pub const DEFAULT_GROUPS_CLAIM: &str = "groups";

/// `auth.oidc`, as written.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOidc {
    /// The provider's issuer URL (`https://`, or `http://` on a loopback address); its
    /// endpoints come from `ISSUER/.well-known/openid-configuration`. Required.
    pub issuer: Option<String>,
    /// guard's client id at the provider. Required.
    pub client_id: Option<String>,
    /// A file holding the client secret (relative to the configuration file).
    pub client_secret_file: Option<String>,
    /// An environment variable holding the client secret.
    pub client_secret_env: Option<String>,
    /// Scopes asked for; must include `openid`. Default: `openid email profile`.
    pub scopes: Option<Vec<String>>,
    /// The provider's name on the sign-in page's button. Default: the issuer's host.
    pub name: Option<String>,
    /// The ID-token claim naming a person. Default: `preferred_username`.
    pub user_claim: Option<String>,
    /// The ID-token claim listing a person's groups. Default: `groups`.
    pub groups_claim: Option<String>,
    /// People let in by email (any case). Default: anyone the provider signs in, unless
    /// `allowed_domains` or `allowed_groups` is set.
    pub allowed_emails: Option<Vec<String>>,
    /// People let in by the domain of their email (`example.com`).
    pub allowed_domains: Option<Vec<String>>,
    /// People let in by group: one of theirs must be listed.
    pub allowed_groups: Option<Vec<String>>,
    /// Role by group (`ml-admins: writer`); a person in several gets the strongest.
    pub roles: Option<BTreeMap<String, String>>,
    /// The sign-in page offers only the provider: a browser is sent straight to it.
    pub only: Option<bool>,
}

/// `auth.oidc`, checked.
#[derive(Clone, Debug)]
pub struct Oidc {
    /// The exact issuer.
    pub issuer: String,
    /// guard's client id.
    pub client_id: String,
    /// guard's client secret.
    pub client_secret: Secret,
    /// Scopes asked for, `openid` among them.
    pub scopes: Vec<String>,
    /// The name on the button.
    pub name: String,
    /// The claim naming a person.
    pub user_claim: String,
    /// The claim listing groups.
    pub groups_claim: String,
    /// Emails let in, lowercased.
    pub allowed_emails: Vec<String>,
    /// Email domains let in, lowercased.
    pub allowed_domains: Vec<String>,
    /// Groups let in.
    pub allowed_groups: Vec<String>,
    /// Role by group.
    pub roles: BTreeMap<String, Role>,
    /// Whether the password form is left out.
    pub only: bool,
}

impl PartialEq for Oidc {
    fn eq(&self, o: &Oidc) -> bool {
        let Oidc {
            issuer,
            client_id,
            client_secret,
            scopes,
            name,
            user_claim,
            groups_claim,
            allowed_emails,
            allowed_domains,
            allowed_groups,
            roles,
            only,
        } = self;
        (issuer, client_id, scopes, name, user_claim, groups_claim)
            == (
                &o.issuer,
                &o.client_id,
                &o.scopes,
                &o.name,
                &o.user_claim,
                &o.groups_claim,
            )
            && (allowed_emails, allowed_domains, allowed_groups, roles, only)
                == (
                    &o.allowed_emails,
                    &o.allowed_domains,
                    &o.allowed_groups,
                    &o.roles,
                    &o.only,
                )
            && ct_eq(client_secret.expose().as_bytes(), o.client_secret.expose().as_bytes())
    }
}

impl Eq for Oidc {}

/// Why a person the provider signed in may not enter, for guard's 403 page.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NotAllowed {
    /// Neither their email nor its domain is listed (or they have no verified email).
    #[error("this site admits only listed email addresses or domains, and {0} is not one")]
    Email(String),
    /// None of their groups is listed.
    #[error("this site admits only members of {0}")]
    Group(String),
}

impl Oidc {
    /// Whether a person with this email and these groups may enter. Emails and domains
    /// together are one condition, groups another: each that is set must hold, so
    /// `allowed_domains: [example.com]` with `allowed_groups: [ml-team]` admits only the
    /// company's ML team.
    pub fn admits(&self, email: Option<&str>, groups: &[String]) -> Result<(), NotAllowed> {
        if !self.allowed_emails.is_empty() || !self.allowed_domains.is_empty() {
            let email = email.map(str::to_ascii_lowercase);
            let ok = email.as_deref().is_some_and(|e| {
                self.allowed_emails.iter().any(|a| a == e)
                    || e.rsplit_once('@')
                        .is_some_and(|(_, d)| self.allowed_domains.iter().any(|a| a == d))
            });
            if !ok {
                return Err(NotAllowed::Email(
                    email.unwrap_or_else(|| "no verified email".to_owned()),
                ));
            }
        }
        if !self.allowed_groups.is_empty() && !groups.iter().any(|g| self.allowed_groups.contains(g)) {
            return Err(NotAllowed::Group(self.allowed_groups.join(", ")));
        }
        Ok(())
    }

    /// The strongest role `roles` gives any of these groups; `None` if none is mapped.
    pub fn role_of(&self, groups: &[String]) -> Option<Role> {
        groups
            .iter()
            .filter_map(|g| self.roles.get(g).copied())
            .max_by_key(|r| match r {
                Role::Reader => 0,
                Role::Writer => 1,
            })
    }

    /// Whether a group matters to the configuration (admission or a role): when a person's
    /// groups do not all fit in a cookie, only these are kept.
    pub fn mentions_group(&self, group: &str) -> bool {
        self.allowed_groups.iter().any(|g| g == group) || self.roles.contains_key(group)
    }
}

/// Checks `auth.oidc`; errors name the key under `at`. `base`: where a relative
/// `client_secret_file` starts; `env`: reads a variable (the process's, or a test's).
pub fn check(
    raw: RawOidc,
    at: &str,
    base: &Path,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Oidc, (String, String)> {
    let key = |k: &str| format!("{at}.{k}");
    let issuer = raw
        .issuer
        .ok_or_else(|| (at.to_owned(), "needs an issuer".to_owned()))?;
    crate::jwt::parse_url(&issuer).map_err(|e| (key("issuer"), e))?;
    let client_id = raw
        .client_id
        .filter(|c| !c.trim().is_empty())
        .ok_or_else(|| (at.to_owned(), "needs a client_id".to_owned()))?;
    let client_secret = match (raw.client_secret_file, raw.client_secret_env) {
        (Some(_), Some(_)) => {
            return Err((
                at.to_owned(),
                "set client_secret_file or client_secret_env, not both".to_owned(),
            ))
        }
        (None, None) => {
            return Err((
                at.to_owned(),
                "needs client_secret_file or client_secret_env (a secret is never written inline)".to_owned(),
            ))
        }
        (Some(file), None) => {
            let path = base.join(&file);
            let text = std::fs::read_to_string(&path).map_err(|e| {
                (
                    key("client_secret_file"),
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            secret_text(&text).ok_or_else(|| (key("client_secret_file"), format!("{} is empty", path.display())))?
        }
        (None, Some(var)) => {
            let text = env(&var).ok_or_else(|| (key("client_secret_env"), format!("${var} is not set")))?;
            secret_text(&text).ok_or_else(|| (key("client_secret_env"), format!("${var} is empty")))?
        }
    };
    let scopes = match raw.scopes {
        Some(s) => s,
        None => DEFAULT_SCOPES.iter().map(|s| (*s).to_owned()).collect(),
    };
    if !scopes.iter().any(|s| s == "openid") {
        return Err((key("scopes"), "must include openid".to_owned()));
    }
    if let Some(i) = scopes
        .iter()
        .position(|s| s.is_empty() || s.contains(char::is_whitespace))
    {
        return Err((format!("{at}.scopes[{i}]"), "a scope is one word".to_owned()));
    }
    let name = match raw.name {
        Some(n) if n.trim().is_empty() => return Err((key("name"), "empty name".to_owned())),
        Some(n) => n,
        None => issuer_host(&issuer),
    };
    let claim = |k: &str, v: Option<String>, default: &str| match v {
        Some(c) if c.trim().is_empty() => Err((key(k), "empty claim name".to_owned())),
        Some(c) => Ok(c),
        None => Ok(default.to_owned()),
    };
    let user_claim = claim("user_claim", raw.user_claim, DEFAULT_USER_CLAIM)?;
    let groups_claim = claim("groups_claim", raw.groups_claim, DEFAULT_GROUPS_CLAIM)?;
    let list = |k: &str, v: Option<Vec<String>>, lower: bool| -> Result<Vec<String>, (String, String)> {
        let v = v.unwrap_or_default();
        if let Some(i) = v.iter().position(|s| s.trim().is_empty()) {
            return Err((format!("{at}.{k}[{i}]"), "empty entry".to_owned()));
        }
        Ok(v.into_iter()
            .map(|s| if lower { s.to_ascii_lowercase() } else { s })
            .collect())
    };
    let allowed_emails = list("allowed_emails", raw.allowed_emails, true)?;
    if let Some(i) = allowed_emails.iter().position(|e| !e.contains('@')) {
        return Err((format!("{at}.allowed_emails[{i}]"), "not an email address".to_owned()));
    }
    let allowed_domains = list("allowed_domains", raw.allowed_domains, true)?;
    if let Some(i) = allowed_domains.iter().position(|d| d.contains('@')) {
        return Err((
            format!("{at}.allowed_domains[{i}]"),
            "a domain (example.com), not an email address".to_owned(),
        ));
    }
    let allowed_groups = list("allowed_groups", raw.allowed_groups, false)?;
    let mut roles = BTreeMap::new();
    for (group, role) in raw.roles.unwrap_or_default() {
        let role = Role::parse(&role).map_err(|e| (format!("{at}.roles.{group}"), e))?;
        roles.insert(group, role);
    }
    Ok(Oidc {
        issuer,
        client_id,
        client_secret,
        scopes,
        name,
        user_claim,
        groups_claim,
        allowed_emails,
        allowed_domains,
        allowed_groups,
        roles,
        only: raw.only.unwrap_or(false),
    })
}

/// A secret as read from a file or variable: one line, its newline dropped.
fn secret_text(text: &str) -> Option<Secret> {
    let s = text.trim_end_matches(['\r', '\n']);
    (!s.is_empty()).then(|| Secret::new(s))
}

fn issuer_host(issuer: &str) -> String {
    let rest = issuer.split_once("://").map_or(issuer, |(_, r)| r);
    rest.split('/').next().unwrap_or(rest).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw() -> RawOidc {
        RawOidc {
            issuer: Some("https://login.example.com".to_owned()),
            client_id: Some("guard".to_owned()),
            client_secret_env: Some("SECRET".to_owned()),
            ..RawOidc::default()
        }
    }

    fn env(name: &str) -> Option<String> {
        (name == "SECRET").then(|| "s3cret\n".to_owned())
    }

    fn checked(r: RawOidc) -> Result<Oidc, (String, String)> {
        check(r, "auth.oidc", Path::new("/nonexistent"), env)
    }

    #[test]
    fn defaults_and_the_secret_from_a_variable() {
        let o = checked(raw()).unwrap();
        assert_eq!(o.client_secret.expose(), "s3cret");
        assert_eq!(o.scopes, ["openid", "email", "profile"]);
        assert_eq!(
            (o.name.as_str(), o.user_claim.as_str()),
            ("login.example.com", "preferred_username")
        );
        assert!(!o.only && o.admits(None, &[]).is_ok());
        assert!(!format!("{o:?}").contains("s3cret"));
    }

    #[test]
    fn bad_entries_are_named() {
        let cases: Vec<(RawOidc, &str, &str)> = vec![
            (RawOidc { issuer: None, ..raw() }, "auth.oidc", "issuer"),
            (
                RawOidc {
                    issuer: Some("http://login.example.com".into()),
                    ..raw()
                },
                "auth.oidc.issuer",
                "https",
            ),
            (
                RawOidc {
                    client_id: None,
                    ..raw()
                },
                "auth.oidc",
                "client_id",
            ),
            (
                RawOidc {
                    client_secret_env: None,
                    ..raw()
                },
                "auth.oidc",
                "never written inline",
            ),
            (
                RawOidc {
                    client_secret_file: Some("s".into()),
                    ..raw()
                },
                "auth.oidc",
                "not both",
            ),
            (
                RawOidc {
                    client_secret_env: Some("UNSET".into()),
                    ..raw()
                },
                "auth.oidc.client_secret_env",
                "$UNSET is not set",
            ),
            (
                RawOidc {
                    client_secret_env: None,
                    client_secret_file: Some("missing".into()),
                    ..raw()
                },
                "auth.oidc.client_secret_file",
                "/nonexistent/missing",
            ),
            (
                RawOidc {
                    scopes: Some(vec!["email".into()]),
                    ..raw()
                },
                "auth.oidc.scopes",
                "openid",
            ),
            (
                RawOidc {
                    allowed_emails: Some(vec!["alice".into()]),
                    ..raw()
                },
                "auth.oidc.allowed_emails[0]",
                "email",
            ),
            (
                RawOidc {
                    allowed_domains: Some(vec!["a@b.c".into()]),
                    ..raw()
                },
                "auth.oidc.allowed_domains[0]",
                "domain",
            ),
            (
                RawOidc {
                    roles: Some([("ml".to_owned(), "boss".to_owned())].into()),
                    ..raw()
                },
                "auth.oidc.roles.ml",
                "boss",
            ),
        ];
        for (r, at, says) in cases {
            let (path, message) = checked(r).unwrap_err();
            assert_eq!(path, at, "{message}");
            assert!(message.contains(says), "{at}: {message}");
        }
    }

    #[test]
    fn admission_needs_each_condition_that_is_set() {
        let o = checked(RawOidc {
            allowed_emails: Some(vec!["Contractor@Else.test".into()]),
            allowed_domains: Some(vec!["Example.com".into()]),
            allowed_groups: Some(vec!["ml-team".into()]),
            roles: Some(
                [
                    ("ml-admins".to_owned(), "writer".to_owned()),
                    ("ml-team".to_owned(), "reader".to_owned()),
                ]
                .into(),
            ),
            ..raw()
        })
        .unwrap();
        let g = |gs: &[&str]| gs.iter().map(|g| (*g).to_owned()).collect::<Vec<_>>();
        assert!(o.admits(Some("alice@EXAMPLE.com"), &g(&["ml-team"])).is_ok());
        assert!(o.admits(Some("contractor@else.test"), &g(&["ml-team"])).is_ok());
        assert!(matches!(
            o.admits(Some("alice@example.com"), &g(&["visitors"])),
            Err(NotAllowed::Group(_))
        ));
        assert!(matches!(
            o.admits(Some("eve@example.com.evil"), &g(&["ml-team"])),
            Err(NotAllowed::Email(_))
        ));
        assert!(matches!(o.admits(None, &g(&["ml-team"])), Err(NotAllowed::Email(_))));
        assert_eq!(o.role_of(&g(&["ml-team", "ml-admins"])), Some(Role::Writer));
        assert_eq!(o.role_of(&g(&["ml-team"])), Some(Role::Reader));
        assert_eq!(o.role_of(&g(&["visitors"])), None);
    }
}
