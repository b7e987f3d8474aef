//! The command line: clap definitions, the mapping from flags to validated settings, and the
//! glue that starts each subcommand. Defaults live in `guard_config::serve`, not here.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Arg, ArgAction, ArgMatches, Args, Parser, Subcommand};
use guard_config::admin::{self, AdminError, FileChoice, SiteFile};
use guard_config::clock::unix_now;
use guard_config::file_error::FileError;
use guard_config::model;
use guard_config::roles::{self, Role, Roles};
use guard_config::serve::{self as defaults, LogFormat, TlsSource};
use guard_config::settings::{self, Flag, Set};
use guard_config::tokens::{self, TokensError};
use guard_config::users::{self, UsersError};
use guard_config::{ConfigErrors, Overlay};

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
    /// Add a user to the users file (bcrypt, written as $2y$ for Apache and nginx too).
    Adduser(PasswordArgs),
    /// Change a user's password.
    Passwd(PasswordArgs),
    /// Remove a user.
    Deluser(UserArgs),
    /// List user names (never hashes).
    Users(FileArgs),
    /// Manage bearer tokens (what MLFLOW_TRACKING_TOKEN sends).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Manage the key that seals browser sessions.
    #[command(subcommand)]
    Session(SessionCommand),
    /// Give users their role (reader or writer) in the groups file beside the users file.
    #[command(subcommand)]
    Role(RoleCommand),
    /// Write the files that deploy guard in front of MLflow: compose, systemd, supervisor or
    /// kubernetes.
    Deploy(Box<DeployArgs>),
    /// Validate a configuration without binding a port or contacting a CA; print what would run.
    Check {
        /// The configuration file.
        #[arg(long, env = "GUARD_CONFIG", value_name = "FILE", default_value = "guard.yaml")]
        config: PathBuf,
    },
    /// Exit 0 if the guard on this machine answers its health path (for container healthchecks).
    Healthcheck {
        /// guard's TLS listener; the port is what matters, the check always goes to loopback.
        /// [default: $GUARD_LISTEN, else 0.0.0.0:8443]
        #[arg(long, env = "GUARD_LISTEN", value_name = "ADDR")]
        listen: Option<SocketAddr>,
    },
}

/// Writes `name`'s role to the groups file of `files`.
fn set_role(files: &FileArgs, name: &str, role: Role) -> Result<(), Failure> {
    let path = files.groups()?;
    roles::set_role(&path, name, Some(role)).map_err(|e| Failure::Runtime(e.into()))?;
    println!("guard: {name:?} is a {role} in {}", path.display());
    Ok(())
}

/// Flags of `guard deploy`.
#[derive(Debug, Args)]
struct DeployArgs {
    /// What to write: compose, systemd, supervisor or kubernetes.
    #[arg(value_name = "TARGET", value_parser = |s: &str| s.parse::<guard_deploy::Target>())]
    target: guard_deploy::Target,
    /// Public host name for the certificate from Let's Encrypt (repeatable); without one, guard
    /// uses its self-signed certificate.
    #[arg(long = "domain", value_name = "NAME", value_parser = guard_deploy::parse_domain)]
    domains: Vec<String>,
    /// Contact address for Let's Encrypt; required with --domain.
    #[arg(long, value_name = "EMAIL", value_parser = guard_deploy::parse_email)]
    acme_email: Option<String>,
    /// MLflow's backend store. [default: postgres for compose and kubernetes, sqlite otherwise]
    #[arg(long, value_name = "sqlite|postgres", value_parser = |s: &str| s.parse::<guard_deploy::Backend>())]
    backend: Option<guard_deploy::Backend>,
    /// Where artifacts go: a directory or s3://bucket/prefix. [default: the target's own storage]
    #[arg(long, value_name = "DIR|s3://BUCKET/PREFIX")]
    artifacts: Option<String>,
    /// MLflow version to run. [default: 3.17.2]
    #[arg(long, value_name = "X.Y.Z")]
    mlflow_version: Option<String>,
    /// Add a Jupyter notebook service wired to MLflow (compose only).
    #[arg(long)]
    with_notebook: bool,
    /// Run MLflow's own per-experiment and per-model permissions (its basic-auth app) behind
    /// guard: guard signs people in, MLflow decides per resource (compose, supervisor, systemd).
    #[arg(long)]
    mlflow_permissions: bool,
    /// Directory to write into.
    // clap prints `[default: .]` from default_value itself: the text above must not repeat it.
    #[arg(long = "out", value_name = "DIR", default_value = ".")]
    out_dir: PathBuf,
    /// Replace existing files (the secrets a previous run generated are kept, and so are
    /// kubernetes' auth/ files).
    #[arg(long)]
    force: bool,
    /// guard's absolute path on the host (systemd, supervisor). [default: /usr/local/bin/guard]
    #[arg(long, value_name = "PATH")]
    guard_bin: Option<PathBuf>,
    /// mlflow's absolute path on the host (systemd, supervisor).
    #[arg(long, value_name = "PATH")]
    mlflow_bin: Option<PathBuf>,
    /// Directory for state, logs and the control socket (supervisor). [default: beside the config]
    #[arg(long, value_name = "DIR")]
    base_dir: Option<PathBuf>,
    /// Namespace of every object (kubernetes). [default: mlflow]
    #[arg(long, value_name = "NAME")]
    namespace: Option<String>,
    /// guard's image, built from the written Dockerfile and pushed where the cluster pulls from
    /// (kubernetes).
    #[arg(long, value_name = "REF", help = concat!(
        "guard's image, built from the written Dockerfile and pushed where the cluster pulls from (kubernetes). [default: guard:",
        env!("CARGO_PKG_VERSION"),
        "]"
    ))]
    image: Option<String>,
    /// MLflow's image, built from the written mlflow/Dockerfile (kubernetes).
    /// [default: guard-mlflow:MLFLOW_VERSION]
    #[arg(long, value_name = "REF")]
    mlflow_image: Option<String>,
    /// guard's pods, 2 to 50 (kubernetes). [default: 2]
    #[arg(long, value_name = "N")]
    replicas: Option<u32>,
    /// MLflow's pods, 1 to 50 (kubernetes). [default: 2]
    #[arg(long, value_name = "N")]
    mlflow_replicas: Option<u32>,
    /// Run PostgreSQL in the namespace, to try things out (kubernetes); without it MLflow uses
    /// the DSN you put in secrets.yaml.
    #[arg(long)]
    with_postgres: bool,
    /// How cert-manager proves the domain to Let's Encrypt (kubernetes, with --domain).
    /// [default: http-01]
    #[arg(long, value_name = "http-01|dns-01", value_parser = |s: &str| s.parse::<guard_deploy::Challenge>())]
    acme_challenge: Option<guard_deploy::Challenge>,
}

/// Where the users and tokens files are: the ones `guard serve` with the same flags, variables
/// and configuration file would read.
#[derive(Debug, Args)]
struct FileArgs {
    /// Configuration file (guard.yaml): use the files its site names (see --site).
    #[arg(long, env = "GUARD_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// The site of --config whose files to use; needed when its sites name different files.
    #[arg(long, value_name = "NAME", requires = "config")]
    site: Option<String>,
    /// guard's state directory. [default: the file's state_dir, else /var/lib/guard as root,
    /// else ~/.local/state/guard]
    #[arg(long, env = "GUARD_STATE_DIR", value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// htpasswd users file; beats the file's. [default: the site's auth.users, else
    /// STATE_DIR/users.htpasswd]
    #[arg(long, env = "GUARD_USERS", value_name = "FILE")]
    users: Option<PathBuf>,
    /// Tokens file; beats the file's. [default: the site's auth.tokens, else
    /// STATE_DIR/tokens.json]
    #[arg(long, env = "GUARD_TOKENS", value_name = "FILE")]
    tokens: Option<PathBuf>,
}

impl FileArgs {
    fn choice(&self) -> FileChoice {
        FileChoice {
            config: self.config.clone(),
            site: self.site.clone(),
            state_dir: self.state_dir.clone(),
            users: self.users.clone(),
            tokens: self.tokens.clone(),
        }
    }

    fn users(&self) -> Result<PathBuf, Failure> {
        Ok(noted(self.choice().users_file()?))
    }

    fn tokens(&self) -> Result<PathBuf, Failure> {
        Ok(noted(self.choice().tokens_file()?))
    }

    fn groups(&self) -> Result<PathBuf, Failure> {
        Ok(noted(self.choice().groups_file()?))
    }
}

/// The file's path, after telling the operator when `guard serve` would not read it.
fn noted(file: SiteFile) -> PathBuf {
    if let Some(note) = &file.note {
        eprintln!("guard: note: {note}");
    }
    file.path
}

#[derive(Debug, Args)]
struct UserArgs {
    /// The user name.
    name: String,
    #[command(flatten)]
    files: FileArgs,
}

#[derive(Debug, Args)]
struct PasswordArgs {
    #[command(flatten)]
    user: UserArgs,
    /// Read the password from the first line of standard input instead of asking twice.
    #[arg(long)]
    password_stdin: bool,
    /// bcrypt cost (4-16); each step doubles the time of a login check. [default: 12]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(4..=16))]
    cost: Option<u32>,
    /// The user's role, written to the groups file beside the users file: reader (sees
    /// everything, changes nothing) or writer. [default: the site's default_role]
    #[arg(long, value_name = "ROLE", value_parser = Role::parse)]
    role: Option<Role>,
}

#[derive(Debug, Subcommand)]
enum RoleCommand {
    /// Set a user's role: reader (sees everything, changes nothing) or writer. It holds from
    /// the next reload (within about 2 s), for sessions already signed in too.
    Set {
        /// The user.
        name: String,
        /// reader or writer.
        #[arg(value_parser = Role::parse)]
        role: Role,
        #[command(flatten)]
        files: FileArgs,
    },
}

#[derive(Debug, Subcommand)]
enum SessionCommand {
    /// Seal new sessions with a new key. The old key keeps opening sessions for the longest
    /// session lifetime (or --keep-old), so nobody is signed out; every guard sharing the state
    /// directory picks the new key up within seconds.
    RotateKey {
        /// How long sessions sealed with the old key stay valid; 0 signs everyone out now.
        /// [default: the longest auth.session.lifetime, 12h]
        #[arg(long, value_name = "DURATION", value_parser = model::parse_duration)]
        keep_old: Option<Duration>,
        #[command(flatten)]
        files: FileArgs,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Create a token and print it once; only its SHA-256 is stored.
    Create {
        /// The token's name (shown to the upstream in X-Forwarded-User).
        name: String,
        /// Lifetime, e.g. 90d. [default: never expires]
        #[arg(long, value_name = "DURATION", value_parser = model::parse_duration)]
        expires: Option<Duration>,
        /// What the token may do: reader (sees everything, changes nothing) or writer.
        /// [default: the site's default_role]
        #[arg(long, value_name = "ROLE", value_parser = Role::parse)]
        role: Option<Role>,
        #[command(flatten)]
        files: FileArgs,
    },
    /// List tokens with their status (never the token).
    List {
        #[command(flatten)]
        files: FileArgs,
    },
    /// Revoke a token: it gets 401 from the next reload on (within 2 s).
    Revoke {
        /// The token's name.
        name: String,
        #[command(flatten)]
        files: FileArgs,
    },
}

/// Flags of `guard serve`: `--config`, and one flag per setting in the table of
/// `guard_config::settings`. Every flag also reads a `GUARD_*` environment variable.
#[derive(Debug)]
struct ServeArgs {
    /// The configuration file, if given.
    config: Option<PathBuf>,
    /// The flags and variables given, as the top layer of the configuration.
    flags: Overlay,
}

impl clap::FromArgMatches for ServeArgs {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        Ok(ServeArgs {
            config: m.get_one::<PathBuf>("config").cloned(),
            flags: overlay_from(m)?,
        })
    }

    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        *self = ServeArgs::from_arg_matches(m)?;
        Ok(())
    }
}

impl clap::Args for ServeArgs {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        serve_flags(cmd)
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        serve_flags(cmd)
    }
}

/// Keys outside `tls.acme` that only ACME uses: their flags need `--domain`.
const ACME_ONLY: &[&str] = &["http_listen", "https_port", "tls.hsts_max_age"];

/// `guard serve`'s flags: `--config`, one per row of the settings table, and the rules between
/// them that clap checks before anything runs.
fn serve_flags(cmd: clap::Command) -> clap::Command {
    let config = Arg::new("config")
        .long("config")
        .env("GUARD_CONFIG")
        .value_name("FILE")
        .value_parser(clap::value_parser!(PathBuf))
        .help("Configuration file (guard.yaml). Flags and GUARD_* variables override its values");
    let mut cmd = settings::flags().fold(cmd.arg(config), |cmd, flag| cmd.arg(setting_arg(flag)));
    for flag in settings::flags() {
        let acme = flag.key.starts_with("tls.acme.") || ACME_ONLY.contains(&flag.key);
        if acme && flag.key != "tls.acme.domains" {
            cmd = cmd.mut_arg(flag.key, |a| a.requires("tls.acme.domains"));
        }
    }
    cmd.mut_arg("upstream", |a| a.required_unless_present("config"))
        .mut_arg("tls.cert", |a| a.requires("tls.key"))
        .mut_arg("tls.key", |a| a.requires("tls.cert"))
        .mut_arg("tls.acme.domains", |a| a.conflicts_with("tls.cert"))
        .mut_arg("tls.acme.staging", |a| a.conflicts_with("tls.acme.directory"))
}

/// The clap argument for one row of the settings table; its id is the key path.
fn setting_arg(flag: &'static Flag) -> Arg {
    let arg = Arg::new(flag.key).long(flag.long).env(flag.env()).help(flag.help);
    match flag.set {
        Set::Switch(_) => arg.action(ArgAction::SetTrue),
        Set::Path(_) => arg
            .value_name(flag.value_name)
            .value_parser(clap::value_parser!(PathBuf)),
        Set::Text(_) if !flag.choices.is_empty() => arg
            .value_name(flag.value_name)
            .value_parser(clap::builder::PossibleValuesParser::new(flag.choices)),
        Set::Text(set) => {
            // The row's own setter checks the value, on a scratch overlay.
            let check = move |s: &str| set(&mut Overlay::default(), s).map(|()| s.to_owned());
            let arg = arg.value_name(flag.value_name).value_parser(check);
            if flag.list {
                arg.action(ArgAction::Append).value_delimiter(',')
            } else {
                arg
            }
        }
    }
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
        Command::Adduser(args) => {
            let (path, name) = (args.user.files.users()?, args.user.name.clone());
            admin::refuse_token_named(&args.user.files.tokens()?, &name, unix_now())?;
            let password = read_password(&args)?;
            users::add_user(&path, &name, &password, cost(&args))?;
            println!("guard: added user {name:?} to {}", path.display());
            if let Some(role) = args.role {
                set_role(&args.user.files, &name, role)?;
            }
            Ok(())
        }
        Command::Passwd(args) => {
            let (path, name) = (args.user.files.users()?, args.user.name.clone());
            let password = read_password(&args)?;
            users::set_password(&path, &name, &password, cost(&args))?;
            println!("guard: changed the password of {name:?} in {}", path.display());
            Ok(())
        }
        Command::Deluser(args) => {
            let path = args.files.users()?;
            users::delete_user(&path, &args.name)?;
            println!("guard: removed user {:?} from {}", args.name, path.display());
            Ok(())
        }
        Command::Users(files) => {
            let path = files.users()?;
            let names = match users::list_users(&path) {
                Err(UsersError::File(FileError::NotFound { .. })) => Vec::new(),
                other => other?,
            };
            let roles = match roles::load(&files.groups()?) {
                Err(FileError::NotFound { .. }) => Roles::default(),
                other => other.map_err(|e| Failure::Runtime(e.into()))?.0,
            };
            // A name alone has the site's default role; the groups file's role and admin follow.
            for n in names {
                let role = roles.role_of(&n).map(|r| format!("\t{r}")).unwrap_or_default();
                let admin = if roles.is_admin(&n) { "\tadmin" } else { "" };
                println!("{n}{role}{admin}");
            }
            Ok(())
        }
        Command::Role(RoleCommand::Set { name, role, files }) => {
            let path = files.users()?;
            let known = match users::list_users(&path) {
                Err(UsersError::File(FileError::NotFound { .. })) => Vec::new(),
                other => other?,
            };
            if !known.contains(&name) {
                return Err(Failure::Config(anyhow::anyhow!(
                    "{}: no user {name:?} (tokens get their role from `guard token create --role`)",
                    path.display()
                )));
            }
            set_role(&files, &name, role)
        }
        Command::Token(cmd) => token(cmd),
        Command::Session(SessionCommand::RotateKey { keep_old, files }) => {
            let (path, lifetime) = files.choice().session_keys()?;
            let keep = keep_old.unwrap_or(lifetime).as_secs();
            let id = guard_config::session::rotate(&path, unix_now(), keep)
                .map_err(|e| Failure::Runtime(anyhow::Error::new(e)))?;
            println!(
                "guard: sessions are now sealed with key {id} in {}; the old key opens them for {keep}s more",
                path.display()
            );
            Ok(())
        }
        Command::Deploy(args) => deploy(*args),
        Command::Check { config } => {
            let settings = guard_config::resolve(&Overlay::default(), Some(&config))?;
            println!("{}: ok", config.display());
            print!("{}", guard_config::summary(&settings));
            Ok(())
        }
        Command::Healthcheck { listen } => healthcheck(listen),
    }
}

fn deploy(a: DeployArgs) -> Result<(), Failure> {
    let opts = guard_deploy::DeployOptions {
        target: a.target,
        domains: a.domains,
        acme_email: a.acme_email,
        backend: a.backend,
        artifacts: a.artifacts,
        mlflow_version: a.mlflow_version,
        with_notebook: a.with_notebook,
        mlflow_permissions: a.mlflow_permissions,
        out_dir: a.out_dir,
        force: a.force,
        guard_bin: a.guard_bin,
        mlflow_bin: a.mlflow_bin,
        base_dir: a.base_dir,
        namespace: a.namespace,
        image: a.image,
        mlflow_image: a.mlflow_image,
        replicas: a.replicas,
        mlflow_replicas: a.mlflow_replicas,
        with_postgres: a.with_postgres,
        acme_challenge: a.acme_challenge,
    };
    let report = guard_deploy::run(opts).map_err(|e| {
        let usage = e.is_usage();
        let e = anyhow::Error::new(e);
        if usage {
            Failure::Config(e)
        } else {
            Failure::Runtime(e)
        }
    })?;
    for path in &report.written {
        println!("wrote {}", path.display());
    }
    println!("\nnext:");
    for step in &report.next_steps {
        println!("  {step}");
    }
    Ok(())
}

fn healthcheck(listen: Option<SocketAddr>) -> Result<(), Failure> {
    let port = listen
        .unwrap_or_else(|| defaults::DEFAULT_LISTEN.parse().expect("default parses"))
        .port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Runtime(e.into()))?;
    runtime
        .block_on(guard_proxy::healthcheck::check(addr))
        .map_err(|e| Failure::Runtime(e.into()))?;
    println!("guard at {addr} is healthy");
    Ok(())
}

fn cost(args: &PasswordArgs) -> u32 {
    args.cost.unwrap_or(guard_config::htpasswd::DEFAULT_BCRYPT_COST)
}

/// A password from stdin (`--password-stdin`: the first line) or typed twice without echo.
fn read_password(args: &PasswordArgs) -> Result<guard_config::secret::Secret, Failure> {
    use std::io::{BufRead, IsTerminal};
    let password = if args.password_stdin {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .map_err(|e| Failure::Runtime(anyhow::anyhow!("cannot read the password from stdin: {e}")))?;
        line.trim_end_matches(['\n', '\r']).to_owned()
    } else {
        if !std::io::stdin().is_terminal() {
            return Err(Failure::Config(anyhow::anyhow!(
                "standard input is not a terminal: pass --password-stdin to read the password from it"
            )));
        }
        let ask = |prompt: &str| {
            rpassword::prompt_password(prompt)
                .map_err(|e| Failure::Runtime(anyhow::anyhow!("cannot read the password: {e}")))
        };
        let first = ask(&format!("Password for {}: ", args.user.name))?;
        let again = ask("Again: ")?;
        if first != again {
            return Err(Failure::Config(anyhow::anyhow!(
                "the two passwords differ; nothing changed"
            )));
        }
        first
    };
    if password.is_empty() {
        return Err(Failure::Config(anyhow::anyhow!(
            "empty password refused; nothing changed"
        )));
    }
    Ok(guard_config::secret::Secret::new(password))
}

/// Each library error says whether it is the operator's to fix (exit 2) or a run-time failure.
fn classified(e: impl std::error::Error + Send + Sync + 'static, usage: bool) -> Failure {
    let e = anyhow::Error::new(e);
    if usage {
        Failure::Config(e)
    } else {
        Failure::Runtime(e)
    }
}

impl From<UsersError> for Failure {
    fn from(e: UsersError) -> Failure {
        let usage = e.is_usage();
        classified(e, usage)
    }
}

impl From<TokensError> for Failure {
    fn from(e: TokensError) -> Failure {
        let usage = e.is_usage();
        classified(e, usage)
    }
}

impl From<AdminError> for Failure {
    fn from(e: AdminError) -> Failure {
        match e {
            AdminError::Config(errors) => errors.into(),
            AdminError::Users(e) => e.into(),
            AdminError::Tokens(e) => e.into(),
            e => classified(e, true),
        }
    }
}

fn token(cmd: TokenCommand) -> Result<(), Failure> {
    match cmd {
        TokenCommand::Create {
            name,
            expires,
            role,
            files,
        } => {
            let path = files.tokens()?;
            admin::refuse_user_named(&files.choice().every_users_file()?, &name)?;
            let token = tokens::create_token(&path, &name, role, expires, unix_now())?;
            eprintln!(
                "guard: created token {name:?} in {}; it is shown once, store it now:",
                path.display()
            );
            println!("{}", token.expose());
            Ok(())
        }
        TokenCommand::List { files } => {
            let now = unix_now();
            for t in tokens::list_tokens(&files.tokens()?)? {
                let expires = t
                    .expires
                    .map(guard_config::clock::format_utc)
                    .unwrap_or_else(|| "never".into());
                println!(
                    "{}\t{:?}\tcreated {}\texpires {}",
                    t.name,
                    t.status(now),
                    guard_config::clock::format_utc(t.created),
                    expires
                );
            }
            Ok(())
        }
        TokenCommand::Revoke { name, files } => {
            let path = files.tokens()?;
            tokens::revoke_token(&path, &name, unix_now())?;
            println!("guard: revoked token {name:?} in {}", path.display());
            Ok(())
        }
    }
}

/// The command line as the top layer of the configuration: only what was given is set, so the
/// file (and then the defaults) fill in the rest.
fn overlay_from(m: &ArgMatches) -> Result<Overlay, clap::Error> {
    let mut o = Overlay::default();
    for flag in settings::flags() {
        match flag.set {
            Set::Switch(set) => {
                if m.get_flag(flag.key) {
                    set(&mut o);
                }
            }
            Set::Path(set) => {
                if let Some(path) = m.get_one::<PathBuf>(flag.key) {
                    set(&mut o, path.clone());
                }
            }
            Set::Text(set) => {
                for s in m.get_many::<String>(flag.key).into_iter().flatten() {
                    set(&mut o, s).map_err(|e| {
                        clap::Error::raw(clap::error::ErrorKind::ValueValidation, format!("--{}: {e}", flag.long))
                    })?;
                }
            }
        }
    }
    Ok(o)
}

/// The flag that set a configuration key, for errors about values that came from flags.
fn flag_for(key: &str) -> Option<String> {
    // An error about a whole section names the flag that turns it on.
    let key = match key {
        "tls.acme" => "tls.acme.domains",
        "auth.session" => "auth.session.lifetime",
        key => key,
    };
    settings::flags()
        .find(|f| f.key == key)
        .map(|f| format!("--{}", f.long))
}

/// Every configuration error is a usage failure; those about flag values name the flag.
impl From<ConfigErrors> for Failure {
    fn from(errors: ConfigErrors) -> Failure {
        let lines: Vec<String> = errors
            .iter()
            .map(
                |e| match (&e.file, flag_for(e.path.split('[').next().unwrap_or(&e.path))) {
                    (None, Some(flag)) => format!("{flag}: {}", e.message),
                    // The flags' one site: its section name means nothing on a command line.
                    (None, None) if e.path == "auth" => e.message.clone(),
                    _ => e.to_string(),
                },
            )
            .collect();
        Failure::Config(anyhow::anyhow!(lines.join("\n")))
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
    guard_proxy::accesslog::set_json(format == LogFormat::Json);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}

fn serve(args: ServeArgs) -> Result<(), Failure> {
    use anyhow::Context;
    let flags = args.flags;
    let settings = guard_config::resolve(&flags, args.config.as_deref())?;
    let public_url = match &settings.tls {
        TlsSource::Acme(a) if a.https_port == 443 => Some(format!("https://{}", a.domains[0])),
        TlsSource::Acme(a) => Some(format!("https://{}:{}", a.domains[0], a.https_port)),
        _ => None,
    };
    init_logging(settings.log_format);
    let listen = settings.listen;
    let upstream = settings.sites[0]
        .upstreams
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    let reloader = Reloader {
        config: args.config.clone(),
        flags,
        running: settings.clone(),
    };
    let mut prepared = guard_proxy::prepare(settings).map_err(|e| Failure::Config(e.into()))?;

    // This thread accepts connections and runs the housekeeping (reloads, ACME, metrics); the
    // connections themselves run on guard_proxy's worker threads.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
        .map_err(Failure::Runtime)?;
    runtime.block_on(async move {
        prepared.fetch_jwt_keys().await.map_err(|e| Failure::Config(e.into()))?;
        let (listener, local) = bind("--listen", listen)?;
        print_startup(local, &upstream, &prepared, public_url.as_deref());
        if let Some(addr) = prepared.plain_listen() {
            let (plain, local) = bind("--http-listen", addr)?;
            println!("guard: plain listener on {local}, answering ACME HTTP-01 and redirecting to https");
            prepared.set_plain_listener(plain);
        }
        if let Some(addr) = prepared.metrics_listen() {
            let (m, local) = bind("--metrics-listen", addr)?;
            if !local.ip().is_loopback() {
                tracing::warn!("metrics on {local} are reachable from outside this machine; prefer a loopback address");
            }
            println!("guard: metrics on {}", guard_proxy::metrics::describe(local));
            prepared.set_metrics_listener(m);
        }
        tokio::spawn(reloader.run(prepared.handle()));
        guard_proxy::serve(prepared, listener, shutdown_signal())
            .await
            .map_err(|e| Failure::Runtime(e.into()))
    })
}

/// Binds one of guard's listeners and reads back its address (the real port when `addr` asks
/// for port 0); a failure names the flag (or key) that chose the address.
fn bind(flag: &str, addr: SocketAddr) -> Result<(tokio::net::TcpListener, SocketAddr), Failure> {
    use anyhow::Context;
    let listener = guard_proxy::server::bind(addr)
        .with_context(|| format!("{flag} {addr}: cannot listen"))
        .map_err(Failure::Runtime)?;
    let local = listener
        .local_addr()
        .context("cannot read the listening address")
        .map_err(Failure::Runtime)?;
    Ok((listener, local))
}

/// What a user needs to point the MLflow client at guard, on stdout.
fn print_startup(local: SocketAddr, upstream: &str, prepared: &guard_proxy::Prepared, public_url: Option<&str>) {
    let host = if local.ip().is_unspecified() || local.ip().is_loopback() {
        "localhost".to_string()
    } else {
        local.ip().to_string()
    };
    let url = public_url.map_or_else(|| format!("https://{host}:{}", local.port()), str::to_owned);
    println!("guard: listening on {local}, forwarding to {upstream}");
    println!("MLFLOW_TRACKING_URI={url}");
    if let Some(ca) = &prepared.trust_anchor {
        if prepared.created_certificate {
            println!("guard: made a self-signed certificate; clients trust it with:");
        }
        println!("MLFLOW_TRACKING_SERVER_CERT_PATH={}", ca.display());
    }
}

/// What SIGHUP re-reads: the configuration file (sites, upstreams, users and tokens files
/// apply live; everything else is reported as needing a restart), then users, tokens and
/// certificate files.
struct Reloader {
    config: Option<PathBuf>,
    flags: Overlay,
    running: defaults::ServeSettings,
}

impl Reloader {
    async fn run(mut self, handle: guard_proxy::Handle) {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            return;
        };
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP received: reloading");
            if let Some(path) = self.config.clone() {
                self.reload_config(&path, &handle);
            }
            handle.reload_files();
        }
    }

    fn reload_config(&mut self, path: &Path, handle: &guard_proxy::Handle) {
        let new = match guard_config::resolve(&self.flags, Some(path)) {
            Ok(new) => new,
            Err(errors) => {
                for e in errors.iter() {
                    tracing::error!("{e}");
                }
                tracing::error!("{}: not reloaded; the running configuration stays", path.display());
                return;
            }
        };
        for what in self.running.restart_needed(&new) {
            tracing::warn!(
                "{}: {what} changed; it takes effect at the next restart",
                path.display()
            );
        }
        match handle.replace_sites(&new.sites) {
            Ok(()) => {
                tracing::info!("{}: reloaded, {} site(s)", path.display(), new.sites.len());
                self.running.sites = new.sites;
            }
            Err(e) => tracing::error!("{}: not reloaded, the running sites stay: {e}", path.display()),
        }
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use clap::CommandFactory;

    use super::*;

    /// Flags of `guard serve` that set no configuration key.
    const FLAGS_WITHOUT_KEY: &[&str] = &[
        // Names the file itself.
        "--config",
        // clap's own.
        "--help",
        "--version",
    ];

    /// Configuration keys with no flag of their own, by prefix.
    const KEYS_WITHOUT_FLAG: &[&str] = &[
        // Several sites live in a file; the flags describe the one site of the shorthand.
        "sites",
        // Path lists per site are file-only: a flag would apply to every site at once.
        "public_paths",
        // Identity providers, each several keys: no flag could say one.
        "auth.jwt",
        "auth.oidc",
    ];

    fn serve_flags() -> BTreeSet<String> {
        let mut cli = Cli::command();
        cli.build();
        let serve = cli
            .get_subcommands()
            .find(|c| c.get_name() == "serve")
            .expect("guard has a serve subcommand");
        serve
            .get_arguments()
            .filter_map(|a| a.get_long())
            .map(|l| format!("--{l}"))
            .collect()
    }

    /// The keys that hold a value (not a section such as `limits`).
    fn leaf_keys() -> Vec<String> {
        let keys = guard_config::raw::schema_keys();
        keys.iter()
            .filter(|k| !keys.iter().any(|other| other.starts_with(&format!("{k}."))))
            .filter(|k| {
                !KEYS_WITHOUT_FLAG
                    .iter()
                    .any(|p| *k == p || k.starts_with(&format!("{p}[")) || k.starts_with(&format!("{p}.")))
            })
            .cloned()
            .collect()
    }

    /// The first line of clap's message: what was refused and why, without the usage.
    fn refusal(args: &[&str], cmd: clap::Command) -> Option<String> {
        let e = cmd.try_get_matches_from(args).err()?;
        Some(e.to_string().lines().next().unwrap_or_default().to_owned())
    }

    #[test]
    fn table_flags_refuse_numbers_and_addresses_as_clap_s_own_parsers_do() {
        use clap::builder::ValueParser;
        use clap::value_parser;
        // The parsers these flags had when they were derived.
        let cases: Vec<(&str, ValueParser)> = vec![
            ("https-port", value_parser!(u16).range(1..).into()),
            ("max-connections", value_parser!(u32).range(1..).into()),
            ("max-h2-streams", value_parser!(u32).range(1..).into()),
            ("auth-cache-size", value_parser!(u32).range(1..).into()),
            ("max-connections-per-client", value_parser!(u32).into()),
            ("lockout-failures", value_parser!(u32).into()),
            ("max-headers", value_parser!(usize).into()),
            ("listen", value_parser!(SocketAddr).into()),
        ];
        let values = [
            "x",
            "",
            "-1",
            "0",
            "1",
            "65536",
            "4294967296",
            "99999999999999999999",
            "127.0.0.1:0",
        ];
        for (long, parser) in cases {
            let flag = settings::flags().find(|f| f.long == long).expect("a table flag");
            let derived = || {
                let arg = Arg::new("v")
                    .long(long)
                    .value_name(flag.value_name)
                    .value_parser(parser.clone());
                clap::Command::new("serve").arg(arg)
            };
            let mut cli = Cli::command();
            cli.build();
            let serve = cli
                .find_subcommand("serve")
                .expect("guard has a serve subcommand")
                .clone();
            for value in values {
                let option = format!("--{long}");
                let given = [
                    "serve",
                    "--upstream",
                    "x:1",
                    "--domain",
                    "a.example.com",
                    &option,
                    value,
                ];
                let built = refusal(&given, serve.clone());
                assert_eq!(
                    built,
                    refusal(&["serve", &option, value], derived()),
                    "{option} {value:?}"
                );
            }
        }
    }

    /// Every command and subcommand of guard, depth first.
    fn all_commands(cmd: &clap::Command) -> Vec<clap::Command> {
        let mut out = vec![cmd.clone()];
        for sub in cmd.get_subcommands() {
            out.extend(all_commands(sub));
        }
        out
    }

    #[test]
    fn help_shows_each_default_once() {
        let mut cli = Cli::command();
        cli.build();
        for cmd in all_commands(&cli) {
            for arg in cmd.get_arguments() {
                // clap appends `[default: X]` for a default_value; text saying it again doubles it.
                let help = [arg.get_help(), arg.get_long_help()]
                    .into_iter()
                    .flatten()
                    .map(|h| h.to_string())
                    .collect::<String>();
                if !arg.get_default_values().is_empty() {
                    assert!(
                        !help.contains("[default:"),
                        "guard {} --{}: the help repeats clap's default: {help}",
                        cmd.get_name(),
                        arg.get_long().unwrap_or_default()
                    );
                }
            }
        }
        let mut deploy = cli.find_subcommand("deploy").expect("guard deploy").clone();
        let help = deploy.render_long_help().to_string();
        assert_eq!(help.matches("[default: .]").count(), 1, "{help}");
        // --image's default is written out in its help; it is the one the deploy crate uses.
        let image = format!("[default: {}]", guard_deploy::default_guard_image());
        assert_eq!(help.matches(&image).count(), 1, "{help}");
    }

    #[test]
    fn every_configuration_key_has_a_serve_flag() {
        let flags = serve_flags();
        for key in leaf_keys() {
            let flag = flag_for(&key).unwrap_or_else(|| panic!("{key}: no flag in flag_for"));
            assert!(
                flags.contains(&flag),
                "{key}: flag_for says {flag}, which guard serve lacks"
            );
        }
    }

    #[test]
    fn every_serve_flag_sets_a_configuration_key() {
        let named: BTreeSet<String> = leaf_keys().iter().filter_map(|k| flag_for(k)).collect();
        for flag in serve_flags() {
            if FLAGS_WITHOUT_KEY.contains(&flag.as_str()) {
                continue;
            }
            assert!(named.contains(&flag), "{flag}: sets no configuration key (flag_for)");
        }
    }
}
