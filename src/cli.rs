//! The command line: clap definitions, the mapping from flags to validated settings, and the
//! glue that starts each subcommand. Defaults live in `guard_config::serve`, not here.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use guard_config::model::{self, Cidr, Upstream};
use guard_config::serve::{self as defaults, Limits, LogFormat, ServeSettings, TlsSource};

/// TLS and authentication in front of an MLflow tracking server (or any HTTP service).
#[derive(Debug, Parser)]
#[command(name = "guard", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve HTTPS and forward authenticated requests to the upstream.
    Serve(Box<ServeArgs>),
}

/// Flags of `guard serve`. Every flag also reads a `GUARD_*` environment variable.
#[derive(Debug, Args)]
struct ServeArgs {
    /// Upstream HTTP server: `host:port` or `http://host:port`.
    #[arg(long, env = "GUARD_UPSTREAM", value_name = "HOST:PORT", value_parser = Upstream::parse)]
    upstream: Upstream,

    /// TLS listen address. [default: 0.0.0.0:8443]
    #[arg(long, env = "GUARD_LISTEN", value_name = "ADDR")]
    listen: Option<SocketAddr>,

    /// Certificate chain (PEM, leaf first). Re-read when the file changes. Needs --tls-key.
    #[arg(long, env = "GUARD_TLS_CERT", value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,

    /// Private key (PEM: PKCS#8, PKCS#1 or SEC1; ECDSA, RSA or Ed25519). Needs --tls-cert.
    #[arg(long, env = "GUARD_TLS_KEY", value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,

    /// guard's state: self-signed certificate, users, tokens, ACME account.
    /// [default: /var/lib/guard as root, else $XDG_STATE_HOME/guard or ~/.local/state/guard]
    #[arg(long, env = "GUARD_STATE_DIR", value_name = "DIR")]
    state_dir: Option<PathBuf>,

    /// Largest request body, e.g. 5G; larger ones get 413. [default: unlimited]
    #[arg(long, env = "GUARD_MAX_BODY_SIZE", value_name = "SIZE", value_parser = model::parse_size)]
    max_body_size: Option<u64>,

    /// Peer whose X-Forwarded-* headers are trusted and extended (repeatable). [default: none]
    #[arg(long = "trusted-proxy", env = "GUARD_TRUSTED_PROXIES", value_delimiter = ',', value_name = "CIDR", value_parser = Cidr::parse)]
    trusted_proxies: Vec<Cidr>,

    /// Forward the client's Host header instead of the upstream's own authority.
    #[arg(long, env = "GUARD_PRESERVE_HOST")]
    preserve_host: bool,

    /// Time allowed for a TLS handshake. [default: 10s]
    #[arg(long, env = "GUARD_TLS_HANDSHAKE_TIMEOUT", value_name = "DURATION", value_parser = model::parse_duration)]
    tls_handshake_timeout: Option<Duration>,

    /// Time allowed to receive a request head; also closes HTTP/1.1 keep-alive connections idle
    /// that long. [default: 30s]
    #[arg(long, env = "GUARD_HEADER_TIMEOUT", value_name = "DURATION", value_parser = model::parse_duration)]
    header_timeout: Option<Duration>,

    /// Time allowed to connect to the upstream (504 after it). [default: 5s]
    #[arg(long, env = "GUARD_CONNECT_TIMEOUT", value_name = "DURATION", value_parser = model::parse_duration)]
    connect_timeout: Option<Duration>,

    /// Time the upstream has to start answering once the request body is sent (504 after it).
    /// [default: 5m]
    #[arg(long, env = "GUARD_UPSTREAM_TIMEOUT", value_name = "DURATION", value_parser = model::parse_duration)]
    upstream_timeout: Option<Duration>,

    /// Close a connection with no request in flight for this long. [default: 5m]
    #[arg(long, env = "GUARD_IDLE_TIMEOUT", value_name = "DURATION", value_parser = model::parse_duration)]
    idle_timeout: Option<Duration>,

    /// Largest request head (431 above it). [default: 64K]
    #[arg(long, env = "GUARD_MAX_HEADER_SIZE", value_name = "SIZE", value_parser = model::parse_size)]
    max_header_size: Option<u64>,

    /// Most request headers (431 above it). [default: 100]
    #[arg(long, env = "GUARD_MAX_HEADERS", value_name = "N")]
    max_headers: Option<usize>,

    /// Most open client connections; more wait to be accepted. [default: 16384]
    #[arg(long, env = "GUARD_MAX_CONNECTIONS", value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    max_connections: Option<u32>,

    /// Most concurrent streams per HTTP/2 connection. [default: 128]
    #[arg(long, env = "GUARD_MAX_H2_STREAMS", value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    max_h2_streams: Option<u32>,

    /// How long in-flight requests may finish after SIGTERM or SIGINT. [default: 30s]
    #[arg(long, env = "GUARD_SHUTDOWN_GRACE", value_name = "DURATION", value_parser = model::parse_duration)]
    shutdown_grace: Option<Duration>,

    /// Serve without authentication: anyone who reaches the port reaches the upstream.
    #[arg(long, env = "GUARD_DANGEROUS_NO_AUTH")]
    dangerous_no_auth: bool,

    /// Log format. [default: text]
    #[arg(long, env = "GUARD_LOG_FORMAT", value_enum)]
    log_format: Option<LogFormatArg>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormatArg {
    Text,
    Json,
}

/// Why a command failed, and so which exit code it earns.
#[derive(Debug)]
pub enum Failure {
    /// Bad usage or configuration: exit 2.
    Config(anyhow::Error),
    /// Something went wrong at run time: exit 1.
    Runtime(anyhow::Error),
}

impl Failure {
    /// The whole cause chain on one line.
    pub fn message(&self) -> String {
        let (Failure::Config(e) | Failure::Runtime(e)) = self;
        format!("{e:#}")
    }

    /// The documented exit code.
    pub fn code(&self) -> u8 {
        match self {
            Failure::Config(_) => 2,
            Failure::Runtime(_) => 1,
        }
    }
}

/// Runs the chosen subcommand.
pub fn run(cli: Cli) -> Result<(), Failure> {
    match cli.command {
        Command::Serve(args) => serve(*args),
    }
}

/// The default state directory: system-wide as root, per-user otherwise, so `guard adduser`
/// and `guard serve` agree without flags.
fn default_state_dir() -> PathBuf {
    use std::os::unix::fs::MetadataExt;
    let is_root = std::fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false);
    if is_root {
        return PathBuf::from(defaults::DEFAULT_STATE_DIR);
    }
    if let Some(x) = std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(x).join("guard");
    }
    match std::env::var_os("HOME") {
        Some(h) => PathBuf::from(h).join(".local/state/guard"),
        None => PathBuf::from(defaults::DEFAULT_STATE_DIR),
    }
}

fn settings_from(args: ServeArgs) -> ServeSettings {
    let d = Limits::default();
    let limits = Limits {
        tls_handshake_timeout: args.tls_handshake_timeout.unwrap_or(d.tls_handshake_timeout),
        header_read_timeout: args.header_timeout.unwrap_or(d.header_read_timeout),
        upstream_connect_timeout: args.connect_timeout.unwrap_or(d.upstream_connect_timeout),
        upstream_response_timeout: args.upstream_timeout.unwrap_or(d.upstream_response_timeout),
        idle_timeout: args.idle_timeout.unwrap_or(d.idle_timeout),
        max_header_bytes: args
            .max_header_size
            .map(|s| usize::try_from(s).unwrap_or(usize::MAX))
            .unwrap_or(d.max_header_bytes),
        max_headers: args.max_headers.unwrap_or(d.max_headers),
        max_body_bytes: args.max_body_size,
        max_connections: args.max_connections.map(|n| n as usize).unwrap_or(d.max_connections),
        max_h2_streams: args.max_h2_streams.unwrap_or(d.max_h2_streams),
    };
    let tls = match (args.tls_cert, args.tls_key) {
        (Some(cert), Some(key)) => TlsSource::Files { cert, key },
        _ => TlsSource::SelfSigned,
    };
    ServeSettings {
        listen: args
            .listen
            .unwrap_or_else(|| defaults::DEFAULT_LISTEN.parse().expect("default parses")),
        upstream: args.upstream,
        tls,
        state_dir: args.state_dir.unwrap_or_else(default_state_dir),
        limits,
        trusted_proxies: args.trusted_proxies,
        preserve_host: args.preserve_host,
        log_format: match args.log_format {
            Some(LogFormatArg::Json) => LogFormat::Json,
            _ => LogFormat::Text,
        },
        shutdown_grace: args.shutdown_grace.unwrap_or(defaults::DEFAULT_SHUTDOWN_GRACE),
    }
}

/// Logs go to stderr; `GUARD_LOG` (or `RUST_LOG`) filters them, `info` by default.
fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("GUARD_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}

fn serve(args: ServeArgs) -> Result<(), Failure> {
    use anyhow::Context;
    let settings = settings_from(args);
    init_logging(settings.log_format);
    let listen = settings.listen;
    let upstream = settings.upstream.clone();
    let prepared = guard_proxy::prepare(settings).map_err(|e| Failure::Config(e.into()))?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
        .map_err(Failure::Runtime)?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("--listen {listen}: cannot listen"))
            .map_err(Failure::Runtime)?;
        let local = listener
            .local_addr()
            .context("cannot read the listening address")
            .map_err(Failure::Runtime)?;
        print_startup(local, &upstream, &prepared);
        guard_proxy::serve(prepared, listener, shutdown_signal())
            .await
            .map_err(|e| Failure::Runtime(e.into()))
    })
}

/// What a user needs to point the MLflow client at guard, on stdout.
fn print_startup(local: SocketAddr, upstream: &Upstream, prepared: &guard_proxy::Prepared) {
    let host = if local.ip().is_unspecified() || local.ip().is_loopback() {
        "localhost".to_string()
    } else {
        local.ip().to_string()
    };
    let url = format!("https://{host}:{}", local.port());
    println!("guard: listening on {local}, forwarding to {upstream}");
    println!("MLFLOW_TRACKING_URI={url}");
    if let Some(ca) = &prepared.trust_anchor {
        if prepared.created_certificate {
            println!("guard: made a self-signed certificate; clients trust it with:");
        }
        println!("MLFLOW_TRACKING_SERVER_CERT_PATH={}", ca.display());
    }
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler installs");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler installs");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}
