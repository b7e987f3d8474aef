//! The overlay: every `serve` setting as an `Option`, filled by the file ([`crate::load_file`])
//! and by the command line, stacked with [`Overlay::merge`] (flags over environment over file;
//! clap folds the environment into the flags), then turned into settings with defaults by
//! [`crate::finish`]. It remembers where each file value was written, so later errors still
//! point at the file.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::error::{ConfigError, Position};
use crate::model::Upstream;
pub use crate::settings::{
    AcmeOverlay, AuthOverlay, LimitsOverlay, LockoutOverlay, Overlay, SessionOverlay, TlsOverlay,
};
use crate::yaml::Spot;

/// One entry of `sites`.
#[derive(Clone, Debug, Default)]
pub struct SiteOverlay {
    /// `name`.
    pub name: Option<String>,
    /// `hosts`, validated and lowercase; empty: every host no other site claims.
    pub hosts: Vec<String>,
    /// `upstream`.
    pub upstream: Option<Upstream>,
    /// `preserve_host`.
    pub preserve_host: Option<bool>,
    /// `public_paths`.
    pub public_paths: Option<Vec<String>>,
    /// `auth`: this site's overrides of the top-level `auth`.
    pub auth: AuthOverlay,
}

/// Where values were written in a file, by key path (`sites[1].upstream`).
#[derive(Clone, Debug, Default)]
pub struct Origins {
    spots: BTreeMap<String, (Arc<str>, Spot)>,
    /// Paths whose value a higher layer (a flag) replaced: errors about them have no position.
    replaced: BTreeSet<String>,
}

/// The key path one level up: `sites[1].auth` from `sites[1].auth.users`, `""` at the top.
fn parent(path: &str) -> Option<&str> {
    if path.is_empty() {
        return None;
    }
    Some(path.rfind(['.', '[']).map_or("", |i| &path[..i]))
}

fn is_within(path: &str, ancestor: &str) -> bool {
    ancestor.is_empty()
        || path == ancestor
        || path
            .strip_prefix(ancestor)
            .is_some_and(|rest| rest.starts_with(['.', '[']))
}

impl Origins {
    pub(crate) fn from_index(file: &str, index: BTreeMap<String, Spot>) -> Origins {
        let file: Arc<str> = Arc::from(file);
        Origins {
            spots: index.into_iter().map(|(k, v)| (k, (file.clone(), v))).collect(),
            replaced: BTreeSet::new(),
        }
    }

    /// The file and position an error about `path` points at: the value when it is written
    /// there (its key when the value is a mapping or list), else the key of the nearest
    /// enclosing setting that is.
    pub(crate) fn locate(&self, path: &str) -> (Option<String>, Option<Position>) {
        if self.replaced.iter().any(|r| is_within(path, r)) {
            return (None, None);
        }
        if let Some((file, spot)) = self.spots.get(path) {
            let pos = if spot.container {
                spot.key.unwrap_or(spot.value)
            } else {
                spot.value
            };
            return (Some(file.to_string()), Some(pos));
        }
        let mut p = parent(path);
        while let Some(up) = p {
            if let Some((file, spot)) = self.spots.get(up) {
                return (Some(file.to_string()), Some(spot.key.unwrap_or(spot.value)));
            }
            p = parent(up);
        }
        (None, None)
    }

    /// An error about `path`, placed by [`Origins::locate`].
    pub(crate) fn error(&self, path: &str, message: impl Into<String>) -> ConfigError {
        let (file, position) = self.locate(path);
        ConfigError {
            file,
            position,
            path: path.to_owned(),
            message: message.into(),
        }
    }

    /// Records that a higher layer replaced the value at `path` and everything under it.
    pub(crate) fn replace(&mut self, path: &str) {
        if self.spots.keys().any(|k| is_within(k, path)) {
            self.spots.retain(|k, _| !is_within(k, path));
            self.replaced.insert(path.to_owned());
        }
    }
}

/// `high` if set, else `low`; a set `high` marks the file's `path` as replaced.
pub(crate) fn pick<T>(high: Option<T>, low: Option<T>, path: &str, origins: &mut Origins) -> Option<T> {
    match high {
        Some(v) => {
            origins.replace(path);
            Some(v)
        }
        None => low,
    }
}

impl Overlay {
    /// This layer (the flags) over the configuration file, if there is one; not yet validated
    /// across settings (that is [`crate::finish`]).
    pub fn over_file(&self, config: Option<&std::path::Path>) -> Result<Overlay, crate::ConfigErrors> {
        let file = match config {
            Some(path) => crate::load_file(path)?,
            None => Overlay::default(),
        };
        Ok(Overlay::merge(self.clone(), file))
    }

    /// Stacks two layers: each setting from `high` where it has one, else from `low`.
    pub fn merge(mut high: Overlay, mut low: Overlay) -> Overlay {
        let mut o = std::mem::take(&mut low.origins);
        let h = std::mem::take(&mut high.origins);
        // A higher layer's auth default also beats the lower layer's per-site values.
        for (i, site) in low.sites.iter_mut().flatten().enumerate() {
            let mut auth = high.auth.clone();
            AuthOverlay::merge_rows(&mut auth, &mut site.auth, &format!("sites[{i}].auth"), &mut o);
            site.auth = auth;
        }
        let tls = merge_tls(std::mem::take(&mut high.tls), std::mem::take(&mut low.tls), &mut o);
        Overlay::merge_rows(&mut high, &mut low, "", &mut o);
        high.tls = tls;
        high.sites = pick(high.sites.take(), low.sites.take(), "sites", &mut o);
        // Values written in the higher layer's own file, if it has one, win their positions.
        for (k, v) in h.spots {
            o.spots.insert(k, v);
        }
        o.replaced.extend(h.replaced);
        high.origins = o;
        high
    }
}

/// `tls`: its settings as any section's, then the certificate source as a whole.
fn merge_tls(mut high: TlsOverlay, mut low: TlsOverlay, o: &mut Origins) -> TlsOverlay {
    let files = (high.cert.clone(), high.key.clone());
    let (high_acme, low_acme) = (high.acme.take(), low.acme.take());
    TlsOverlay::merge_rows(&mut high, &mut low, "tls", o);
    if files.0.is_some() || files.1.is_some() {
        // The higher layer chose certificate files: the lower layer's source is gone.
        for p in ["tls.cert", "tls.key", "tls.acme"] {
            o.replace(p);
        }
        (high.cert, high.key) = files;
        high.acme = high_acme;
    } else if let Some(mut acme) = high_acme {
        // The higher layer chose ACME: the lower layer's files are gone, its ACME keys stay.
        o.replace("tls.cert");
        o.replace("tls.key");
        (high.cert, high.key) = (None, None);
        AcmeOverlay::merge_rows(&mut acme, &mut low_acme.unwrap_or_default(), "tls.acme", o);
        high.acme = Some(acme);
    } else {
        high.acme = low_acme;
    }
    high
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parents_walk_up_keys_and_items() {
        assert_eq!(parent("sites[1].auth.users"), Some("sites[1].auth"));
        assert_eq!(parent("sites[1]"), Some("sites"));
        assert_eq!(parent("sites"), Some(""));
        assert_eq!(parent(""), None);
        assert!(is_within("sites[1].hosts", "sites"));
        assert!(!is_within("sites_x", "sites"));
    }
}
