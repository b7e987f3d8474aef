//! guard's configuration: the validated settings every other crate runs on, and the files an
//! operator edits by hand or through `guard` commands (htpasswd users, bearer tokens).
//! It knows no sockets: parsing, validation and atomic file writes only.

pub mod acme;
pub mod fsutil;
pub mod htpasswd;
pub mod model;
pub mod secret;
pub mod serve;
pub mod tokens;
pub mod users;

#[cfg(test)]
mod testutil;
