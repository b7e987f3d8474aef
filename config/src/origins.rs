//! Where each value of a configuration file was written, by key path, so an error about a value
//! points at its `line:column` even after layers were stacked; and the one rule for stacking a
//! value (`pick`), which records what a higher layer replaced.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::error::{ConfigError, Position};
use crate::yaml::Spot;

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

    /// Takes in a higher layer's origins: the values written in its own file win their
    /// positions.
    pub(crate) fn absorb(&mut self, higher: Origins) {
        self.spots.extend(higher.spots);
        self.replaced.extend(higher.replaced);
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
