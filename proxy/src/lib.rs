//! guard's serving side: accepts TLS connections, authenticates requests and streams them to
//! the upstream. `server` owns sockets and shutdown; `handler` is the one request pipeline;
//! the other modules are its named steps.

pub mod accesslog;
pub mod account;
pub mod acme;
pub mod auth;
pub mod authorize;
pub mod balance;
pub mod body;
pub mod conn;
pub mod error;
pub mod forward;
pub mod handler;
pub mod headers;
pub mod healthcheck;
pub mod jwt;
pub mod login;
pub mod memory;
pub mod metrics;
pub mod oidc;
pub mod origin;
pub mod redirect;
pub mod route;
pub mod server;
pub mod sessions;
pub mod signin;
pub mod tls;
pub mod watch;
pub mod worker;

pub use server::{prepare, prepare_with_clock, serve, Handle, Prepared, ServeError};
