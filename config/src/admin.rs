//! What the user and token commands decide before they touch a file: which users or tokens file
//! a command acts on (the one `guard serve` with the same flags and configuration would read),
//! and the rule that a user and an active token never share a name.

use std::path::{Path, PathBuf};

use crate::error::ConfigErrors;
use crate::file_error::FileError;
use crate::overlay::Overlay;
use crate::serve::AuthSettings;
use crate::tokens::{self, TokenStatus, TokensError};
use crate::users::{self, UsersError};

/// Where a command's users and tokens files are, as its flags (and `GUARD_*` variables) say.
#[derive(Clone, Debug, Default)]
pub struct FileChoice {
    /// The configuration file whose sites name the files.
    pub config: Option<PathBuf>,
    /// The site of `config` whose files to use; needed when its sites name different files.
    pub site: Option<String>,
    /// guard's state directory, over the file's `state_dir`.
    pub state_dir: Option<PathBuf>,
    /// The users file, over the site's.
    pub users: Option<PathBuf>,
    /// The tokens file, over the site's.
    pub tokens: Option<PathBuf>,
}

/// A file a command acts on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SiteFile {
    /// The file; it may not exist yet.
    pub path: PathBuf,
    /// Set when every chosen site serves without authentication, so `guard serve` would not
    /// read the file: a note for the operator, who may be editing the wrong thing.
    pub note: Option<String>,
}

/// Why a user or token command cannot go ahead.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The configuration file is unusable; each problem names its key or flag.
    #[error("{0}")]
    Config(ConfigErrors),
    /// `--site` names no site of the file.
    #[error("--site {site:?}: {config} has no such site (its sites: {names})")]
    NoSuchSite {
        /// The name asked for.
        site: String,
        /// The configuration file.
        config: String,
        /// The sites it has, comma-separated.
        names: String,
    },
    /// The file's `sites` list is empty.
    #[error("{config}: sites: the list is empty")]
    NoSites {
        /// The configuration file.
        config: String,
    },
    /// The sites name different files and no `--site` chose one.
    #[error("{config}: its sites name different {what} files ({listed}); choose one with --site NAME")]
    DifferentFiles {
        /// The configuration file.
        config: String,
        /// `users` or `tokens`.
        what: &'static str,
        /// `site: file` for each site, comma-separated.
        listed: String,
    },
    /// A new user would have the name of an active token.
    #[error(
        "{}: a token is called {name:?}; the upstream could not tell the user from the token (revoke it, or pick another name)",
        path.display()
    )]
    TokenNamed {
        /// The tokens file.
        path: PathBuf,
        /// The name.
        name: String,
    },
    /// A new token would have the name of a user.
    #[error(
        "{}: a user is called {name:?}; the upstream could not tell the token from the user (pick another name)",
        path.display()
    )]
    UserNamed {
        /// The users file.
        path: PathBuf,
        /// The name.
        name: String,
    },
    /// Reading a users file failed.
    #[error(transparent)]
    Users(#[from] UsersError),
    /// Reading a tokens file failed.
    #[error(transparent)]
    Tokens(#[from] TokensError),
}

impl AdminError {
    /// Whether the operator can fix this by changing the command or the configuration (exit 2),
    /// rather than something failing at run time (exit 1).
    pub fn is_usage(&self) -> bool {
        match self {
            AdminError::Users(e) => e.is_usage(),
            AdminError::Tokens(e) => e.is_usage(),
            _ => true,
        }
    }
}

impl FileChoice {
    /// The users file: `users`, else the chosen site's.
    pub fn users_file(&self) -> Result<SiteFile, AdminError> {
        match &self.users {
            Some(path) => Ok(SiteFile {
                path: path.clone(),
                note: None,
            }),
            None => self.site_file("users", |a| &a.users_file),
        }
    }

    /// The tokens file: `tokens`, else the chosen site's.
    pub fn tokens_file(&self) -> Result<SiteFile, AdminError> {
        match &self.tokens {
            Some(path) => Ok(SiteFile {
                path: path.clone(),
                note: None,
            }),
            None => self.site_file("tokens", |a| &a.tokens_file),
        }
    }

    /// The groups file giving the users file's users their roles: beside `users` when that is
    /// given, else the chosen site's.
    pub fn groups_file(&self) -> Result<SiteFile, AdminError> {
        match &self.users {
            Some(path) => Ok(SiteFile {
                path: path.with_file_name(crate::roles::GROUPS_FILE_NAME),
                note: None,
            }),
            None => self.site_file("groups", |a| &a.groups_file),
        }
    }

    /// Every users file a token of this choice's tokens file could meet: `users`, else the
    /// chosen site's, else every site's (sites may share a tokens file but not a users file).
    pub fn every_users_file(&self) -> Result<Vec<PathBuf>, AdminError> {
        if let Some(path) = &self.users {
            return Ok(vec![path.clone()]);
        }
        let mut files: Vec<PathBuf> = self
            .sites()?
            .into_iter()
            .filter(|(n, _)| self.site.as_ref().is_none_or(|s| s == n))
            .map(|(_, a)| a.users_file)
            .collect();
        files.dedup();
        Ok(files)
    }

    /// The session key file `guard serve` would use, and the longest session lifetime of its
    /// sites: how long a key rotated out must keep opening cookies so no session is cut short.
    pub fn session_keys(&self) -> Result<(PathBuf, std::time::Duration), AdminError> {
        let layered = self.layered()?;
        let state_dir = layered
            .state_dir
            .clone()
            .unwrap_or_else(crate::validate::default_state_dir);
        let lifetime = crate::site_auth(&layered)
            .iter()
            .map(|(_, a)| a.session_lifetime)
            .max()
            .unwrap_or_default();
        Ok((state_dir.join(crate::session::KEY_FILE_NAME), lifetime))
    }

    /// Each site's auth as `guard serve` resolves it (flags over the file over the defaults),
    /// without the start-up checks: the files may not exist yet.
    fn sites(&self) -> Result<Vec<(String, AuthSettings)>, AdminError> {
        Ok(crate::site_auth(&self.layered()?))
    }

    /// `--state-dir` over the configuration file, as `guard serve` layers them.
    fn layered(&self) -> Result<Overlay, AdminError> {
        let flags = Overlay {
            state_dir: self.state_dir.clone(),
            ..Overlay::default()
        };
        flags.over_file(self.config.as_deref()).map_err(AdminError::Config)
    }

    /// The `what` file of the chosen site.
    fn site_file(&self, what: &'static str, pick: fn(&AuthSettings) -> &PathBuf) -> Result<SiteFile, AdminError> {
        let sites = self.sites()?;
        let config = || self.config.as_deref().unwrap_or(Path::new("")).display().to_string();
        let chosen: Vec<_> = match &self.site {
            Some(name) => sites.iter().filter(|(n, _)| n == name).collect(),
            None => sites.iter().collect(),
        };
        let Some((_, first)) = chosen.first() else {
            return Err(match &self.site {
                Some(site) => AdminError::NoSuchSite {
                    site: site.clone(),
                    config: config(),
                    names: sites.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(", "),
                },
                None => AdminError::NoSites { config: config() },
            });
        };
        if chosen.iter().any(|(_, a)| pick(a) != pick(first)) {
            let listed: Vec<String> = chosen
                .iter()
                .map(|(n, a)| format!("{n}: {}", pick(a).display()))
                .collect();
            return Err(AdminError::DifferentFiles {
                config: config(),
                what,
                listed: listed.join(", "),
            });
        }
        let note = chosen.iter().all(|(_, a)| a.disabled).then(|| {
            format!(
                "authentication is off for {} in {} (dangerous_no_auth), so guard serve does not read this file",
                chosen.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(", "),
                config()
            )
        });
        Ok(SiteFile {
            path: pick(first).clone(),
            note,
        })
    }
}

/// A user and a token of one name would be one identity to the upstream (both arrive as the
/// same `X-Forwarded-User`), so a new user may not take the name of a token active at `now` ...
pub fn refuse_token_named(tokens_file: &Path, name: &str, now: u64) -> Result<(), AdminError> {
    let taken = tokens::list_tokens(tokens_file)?
        .iter()
        .any(|t| t.name == name && t.status(now) == TokenStatus::Active);
    if taken {
        return Err(AdminError::TokenNamed {
            path: tokens_file.to_path_buf(),
            name: name.to_owned(),
        });
    }
    Ok(())
}

/// ... and a new token may not take the name of a user in any users file it could meet.
pub fn refuse_user_named(users_files: &[PathBuf], name: &str) -> Result<(), AdminError> {
    for path in users_files {
        let users = match users::list_users(path) {
            Err(UsersError::File(FileError::NotFound { .. })) => Vec::new(),
            other => other?,
        };
        if users.iter().any(|u| u == name) {
            return Err(AdminError::UserNamed {
                path: path.clone(),
                name: name.to_owned(),
            });
        }
    }
    Ok(())
}
