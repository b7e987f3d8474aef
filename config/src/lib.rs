//! guard's configuration: the validated settings every other crate runs on, and the files an
//! operator edits by hand or through `guard` commands (htpasswd users, bearer tokens).
//! It knows no sockets: parsing, validation and atomic file writes only.
//!
//! # How to add a setting
//!
//! A `guard serve` setting lives in three places:
//!
//! 1. One row in its section of the table in [`settings`]: the YAML key with its doc (unit
//!    and default), its type as written and as checked, the reader that checks the file's
//!    value, and its flag (long name, and so `GUARD_*` variable; value name; `--help` line with
//!    `[default: ...]`; the function that checks the flag's text). The raw serde field, the
//!    overlay field, the merge, the file reading, the flag and the key-to-flag lookup in error
//!    messages all come from that row.
//! 2. The validated field in [`serve`], its default, and its line in the `resolve` beside them
//!    (`Limits::resolve`, `AuthSettings::resolve`; the top-level ones in [`validate::finish`]).
//! 3. `guard.example.yaml`, which a test holds to the whole schema.
//!
//! For `limits.example_timeout`:
//!
//! ```text
//! // config/src/settings.rs, in the `limits` section
//!     /// Duration allowed for an example. Default: `7s`.
//!     example_timeout: String => value Duration = text(v::parse_timeout),
//!         flag [value "example-timeout" "DURATION" parse_duration; "Time allowed for an example. [default: 7s]"];
//!
//! // config/src/serve.rs: in `Limits`, `Limits::default` and `Limits::resolve`
//!     /// Time allowed for an example.
//!     pub example_timeout: Duration,
//!             example_timeout: Duration::from_secs(7),
//!             example_timeout: l.example_timeout.unwrap_or(d.example_timeout),
//!
//! # guard.example.yaml, under limits:
//!   example_timeout: 7s       # for an example
//! ```
//!
//! A file-only setting has no `flag [...]` (and a line in `KEYS_WITHOUT_FLAG` of the command
//! line's tests, which check that every other key has a flag and every flag a key). A rule
//! between flags (`--acme-email` needs `--domain`) is clap's, in `serve_flags` of `src/cli.rs`.

pub mod acme;
pub mod admin;
mod check;
pub mod clock;
pub mod credential;
pub mod error;
pub mod file_error;
pub mod fsutil;
pub mod htpasswd;
pub mod jwt;
pub mod model;
pub mod oidc;
mod origins;
pub mod overlay;
pub mod raw;
pub mod roles;
pub mod secret;
pub mod serve;
pub mod session;
pub mod settings;
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
