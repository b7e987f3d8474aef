//! guard's configuration: the validated settings every other crate runs on, and the files an
//! operator edits by hand or through `guard` commands (htpasswd users, bearer tokens).
//! It knows no sockets: parsing, validation and atomic file writes only.

pub mod acme;
pub mod admin;
pub mod clock;
pub mod credential;
pub mod error;
pub mod file_error;
pub mod fsutil;
pub mod htpasswd;
pub mod jwt;
pub mod model;
pub mod overlay;
pub mod raw;
pub mod roles;
pub mod secret;
pub mod serve;
pub mod session;
pub mod summary;
pub mod tokens;
pub mod users;
pub mod validate;
mod yaml;

pub use error::{ConfigError, ConfigErrors, Position};
pub use overlay::Overlay;
pub use summary::summary;
pub use validate::{finish, load_file, parse_str, resolve, site_auth};

#[cfg(test)]
mod testutil;
