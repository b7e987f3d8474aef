//! One step from the file to settings. [`parse_str`] and [`load_file`] read `guard.yaml` into an
//! [`Overlay`], checking every value and the sites list; [`finish`] applies defaults to a merged
//! overlay and checks what crosses settings (certificate sources, ACME names, files, listeners).
//! Each reports every problem it finds at once, each with its key path and `line:column`.
//!
//! Problems of the file alone come from `load_file`; problems that depend on the command line
//! too (a missing upstream the flags might give) come from `finish`, once the layers are merged.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use crate::acme::{self, AcmeSettings, ChallengeChoice};
use crate::check::*;
use crate::error::{ConfigError, ConfigErrors};
use crate::file_error::FileError;
use crate::origins::Origins;
use crate::overlay::{AcmeOverlay, AuthOverlay, Overlay, TlsOverlay};
use crate::raw;
use crate::serve::{self, AuthSettings, Limits, LogFormat, ServeSettings, SiteSettings, TlsSource};
use crate::settings::SiteOverlay;
use crate::tokens::{self, TokensError};
use crate::users::{self, UsersError};
use crate::yaml;

/// The name of the one site of the single-site shorthand and of a site with neither name nor
/// hosts.
pub const DEFAULT_SITE_NAME: &str = "default";

/// Reads and checks a configuration file. Relative paths in it are resolved against the file's
/// directory.
pub fn load_file(path: &Path) -> Result<Overlay, ConfigErrors> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: Some(name.clone()),
            position: None,
            path: String::new(),
            message: format!("cannot read the configuration: {}", io_message(&e)),
        }])
    })?;
    parse_in(&text, &name, &base_dir(path))
}

/// Checks the text of a configuration file. `name` is the file's path: messages show it, and
/// relative paths in the text are resolved against its directory.
pub fn parse_str(text: &str, name: &str) -> Result<Overlay, ConfigErrors> {
    parse_in(text, name, &base_dir(Path::new(name)))
}

fn base_dir(file: &Path) -> PathBuf {
    let file = std::path::absolute(file).unwrap_or_else(|_| file.to_path_buf());
    file.parent().map(Path::to_path_buf).unwrap_or_default()
}

fn parse_in(text: &str, name: &str, base: &Path) -> Result<Overlay, ConfigErrors> {
    let problem = |p: yaml::Problem| ConfigError {
        file: Some(name.to_owned()),
        position: Some(p.pos),
        path: p.path,
        message: p.message,
    };
    let (root, problems) = yaml::parse(text).map_err(|p| ConfigErrors(vec![problem(p)]))?;
    let (raw, more) = yaml::deserialize::<raw::Config>(&root, raw::moved_key);
    let origins = Origins::from_index(name, yaml::index(&root));
    let mut c = Check {
        origins: &origins,
        errors: problems.into_iter().chain(more).map(problem).collect(),
        base,
    };
    let mut overlay = from_raw(raw.unwrap_or_default(), &mut c);
    if let Some(sites) = &overlay.sites {
        check_sites(sites, &overlay, &mut c);
    }
    let errors = c.errors;
    overlay.origins = origins;
    ConfigErrors::or_ok(errors, overlay)
}

fn from_raw(mut r: raw::Config, c: &mut Check<'_>) -> Overlay {
    let mut tls = r.tls.take().unwrap_or_default();
    let sites = r.sites.take().map(|sites| {
        sites
            .into_iter()
            .enumerate()
            .map(|(i, s)| site_from_raw(s, &format!("sites[{i}]"), c))
            .collect()
    });
    let mut o = Overlay::rows_from_raw(&mut r, "", c);
    o.tls = TlsOverlay::rows_from_raw(&mut tls, "tls", c);
    o.tls.acme = tls.acme.map(|mut a| AcmeOverlay::rows_from_raw(&mut a, "tls.acme", c));
    o.sites = sites;
    o
}

fn site_from_raw(s: raw::Site, at: &str, c: &mut Check<'_>) -> SiteOverlay {
    let p = |key: &str| format!("{at}.{key}");
    // A bad host stays in the list (already reported) so later hosts keep their index.
    let hosts = s
        .hosts
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(j, h)| {
            c.value(&format!("{at}.hosts[{j}]"), Some(h.as_str()), parse_host)
                .unwrap_or(h)
        })
        .collect();
    SiteOverlay {
        name: c.value(&p("name"), s.name, |n| parse_site_name(&n).map(|()| n)),
        hosts,
        upstream: crate::check::upstreams(c, &p("upstream"), s.upstream),
        preserve_host: s.preserve_host,
        public_paths: c.values(&p("public_paths"), s.public_paths, parse_public_path),
        auth: AuthOverlay::rows_from_raw(&mut s.auth.unwrap_or_default(), &p("auth"), c),
    }
}

/// What `guard serve` runs on: the flags over the configuration file over the defaults,
/// validated.
pub fn resolve(flags: &Overlay, config: Option<&Path>) -> Result<ServeSettings, ConfigErrors> {
    finish(flags.over_file(config)?)
}

/// Applies the defaults to a merged overlay and checks what crosses settings: the certificate
/// source, ACME's email and names, that referenced files exist and can be read, that every site
/// has a way in, that sites do not share host names, and that the listeners differ.
pub fn finish(o: Overlay) -> Result<ServeSettings, ConfigErrors> {
    let origins = o.origins.clone();
    let mut c = Check {
        origins: &origins,
        errors: Vec::new(),
        base: Path::new(""),
    };
    let state_dir = o.state_dir.clone().unwrap_or_else(default_state_dir);
    let acme_on = o.tls.acme.is_some();
    let listen = o.listen.unwrap_or_else(|| {
        let default = if acme_on {
            acme::DEFAULT_ACME_LISTEN
        } else {
            serve::DEFAULT_LISTEN
        };
        default.parse().expect("the default listen address parses")
    });
    let sites = finish_sites(&o, &state_dir, &mut c);
    if let Some(ca) = &o.upstream_ca_file {
        if !sites.iter().flat_map(|s| &s.upstreams).any(|u| u.tls) {
            c.error(
                "upstream_ca_file",
                "no upstream is https://, so there is nothing to trust it for",
            );
        } else if let Err(e) = check_readable(ca) {
            c.error("upstream_ca_file", e);
        }
    }
    let tls = finish_tls(&o, listen, &mut c);
    let limits = Limits::resolve(&o.limits);
    let settings = ServeSettings {
        listen,
        tls: tls.unwrap_or(TlsSource::SelfSigned),
        state_dir,
        limits,
        trusted_proxies: o.trusted_proxies.clone().unwrap_or_default(),
        log_format: o.log_format.unwrap_or(LogFormat::Text),
        shutdown_grace: o.shutdown_grace.unwrap_or(serve::DEFAULT_SHUTDOWN_GRACE),
        metrics: o.metrics_listen.map(|listen| serve::MetricsSettings {
            listen,
            user_labels: o.metrics_user_labels.unwrap_or(false),
        }),
        sites,
    };
    ConfigErrors::or_ok(c.errors, settings)
}

fn finish_sites(o: &Overlay, state_dir: &Path, c: &mut Check<'_>) -> Vec<SiteSettings> {
    let mut out = Vec::new();
    let balance = serve::BalanceSettings::resolve(&o.balance);
    let Some(list) = &o.sites else {
        let upstream = o.upstream.clone();
        if upstream.is_none() {
            c.error("upstream", "missing: give an upstream (host:port) or a list of sites");
        }
        let auth = AuthSettings::resolve(&AuthOverlay::default(), &o.auth, state_dir);
        check_auth_files(&auth, "auth.users", "auth.tokens", "auth", c);
        if let Some(upstreams) = upstream {
            out.push(SiteSettings {
                name: DEFAULT_SITE_NAME.into(),
                hosts: Vec::new(),
                upstreams,
                balance: balance.clone(),
                upstream_ca_file: o.upstream_ca_file.clone(),
                preserve_host: o.preserve_host.unwrap_or(false),
                auth,
                public_paths: o.public_paths.clone().unwrap_or_default(),
            });
        }
        return out;
    };
    check_sites(list, o, c);
    for (i, s) in list.iter().enumerate() {
        let at = format!("sites[{i}]");
        let auth = AuthSettings::resolve(&s.auth, &o.auth, state_dir);
        let from = |set: bool, key: &str| {
            if set {
                format!("{at}.auth.{key}")
            } else {
                format!("auth.{key}")
            }
        };
        check_auth_files(
            &auth,
            &from(s.auth.users.is_some(), "users"),
            &from(s.auth.tokens.is_some(), "tokens"),
            &format!("{at}.auth"),
            c,
        );
        let Some(upstreams) = s.upstream.clone() else {
            c.error(
                &format!("{at}.upstream"),
                "missing: where this site's requests go, e.g. mlflow:5000",
            );
            continue;
        };
        out.push(SiteSettings {
            name: site_name(s),
            hosts: s.hosts.clone(),
            upstreams,
            balance: balance.clone(),
            upstream_ca_file: o.upstream_ca_file.clone(),
            preserve_host: s.preserve_host.unwrap_or(false),
            auth,
            public_paths: s.public_paths.clone().unwrap_or_default(),
        });
    }
    out
}

/// Each site's name and auth settings as [`finish`] resolves them, without its checks: the
/// users and tokens files may not exist yet (`guard adduser --config` writes the first user).
/// A file without `sites` has one site, `default`.
pub fn site_auth(o: &Overlay) -> Vec<(String, AuthSettings)> {
    let state_dir = o.state_dir.clone().unwrap_or_else(default_state_dir);
    match &o.sites {
        None => vec![(
            DEFAULT_SITE_NAME.into(),
            AuthSettings::resolve(&AuthOverlay::default(), &o.auth, &state_dir),
        )],
        Some(list) => list
            .iter()
            .map(|s| (site_name(s), AuthSettings::resolve(&s.auth, &o.auth, &state_dir)))
            .collect(),
    }
}

fn site_name(s: &SiteOverlay) -> String {
    s.name
        .clone()
        .or_else(|| s.hosts.first().cloned())
        .unwrap_or_else(|| DEFAULT_SITE_NAME.into())
}

/// The checks of a sites list that the file alone decides: the shorthand is not mixed in, and
/// names, host names and the catch-all site are each taken once.
fn check_sites(list: &[SiteOverlay], o: &Overlay, c: &mut Check<'_>) {
    for (key, set) in [
        ("upstream", o.upstream.is_some()),
        ("preserve_host", o.preserve_host.is_some()),
        ("public_paths", o.public_paths.is_some()),
    ] {
        if set {
            c.error(key, format!("cannot be combined with sites; set {key} in each site"));
        }
    }
    if list.is_empty() {
        c.error("sites", "empty: give at least one site");
    }
    let mut names: HashMap<String, usize> = HashMap::new();
    let mut hosts: HashMap<&str, (usize, usize)> = HashMap::new();
    let mut catch_all: Option<usize> = None;
    for (i, s) in list.iter().enumerate() {
        let name = site_name(s);
        if let Some(first) = names.get(&name) {
            c.error(
                &format!("sites[{i}].name"),
                format!("{name:?} is already the name of sites[{first}]; give each site its own name"),
            );
        } else {
            names.insert(name, i);
        }
        if s.hosts.is_empty() {
            match catch_all {
                Some(first) => c.error(
                    &format!("sites[{i}].hosts"),
                    format!("no hosts, like sites[{first}]: only one site may serve the hosts no other site claims"),
                ),
                None => catch_all = Some(i),
            }
        }
        for (j, h) in s.hosts.iter().enumerate() {
            match hosts.get(h.as_str()) {
                Some(&(fi, fj)) if fi == i => c.error(
                    &format!("sites[{i}].hosts[{j}]"),
                    format!("{h:?} is listed twice (hosts[{fj}])"),
                ),
                Some(&(fi, _)) => c.error(
                    &format!("sites[{i}].hosts[{j}]"),
                    format!(
                        "{h:?} is already a host of sites[{fi}] ({:?}); a host name belongs to one site",
                        site_name(&list[fi])
                    ),
                ),
                None => {
                    hosts.insert(h, (i, j));
                }
            }
        }
    }
}

/// The proxy's start-up rule, checked ahead: with authentication on, the users and tokens files
/// may each be missing, but what exists must load and let at least one user or token in.
fn check_auth_files(auth: &AuthSettings, users_at: &str, tokens_at: &str, at: &str, c: &mut Check<'_>) {
    if auth.disabled {
        return;
    }
    let users = match users::load(&auth.users_file) {
        Ok((u, _)) => Some(u.len()),
        Err(UsersError::File(FileError::NotFound { .. })) => Some(0),
        Err(e) => {
            c.error(users_at, unreadable(&auth.users_file, &e));
            None
        }
    };
    let tokens = match tokens::load(&auth.tokens_file) {
        Ok(t) => Some(t.len()),
        Err(TokensError::File(FileError::NotFound { .. })) => Some(0),
        Err(e) => {
            c.error(tokens_at, unreadable(&auth.tokens_file, &e));
            None
        }
    };
    if users == Some(0) && tokens == Some(0) {
        let (u, t) = (auth.users_file.display(), auth.tokens_file.display());
        c.error(
            at,
            format!(
                "no users or tokens configured (users file {u}, tokens file {t}): add a user with \
                 `guard adduser --users {u} NAME` or a token with `guard token create --tokens {t} NAME`, \
                 or turn authentication off with --dangerous-no-auth (auth.dangerous_no_auth: true)"
            ),
        );
    }
}

/// Why an existing users or tokens file cannot be used, without repeating its path twice.
fn unreadable(path: &Path, e: &(dyn std::error::Error + 'static)) -> String {
    if path.is_dir() {
        return format!("{:?}: is a directory, not a file", path.display().to_string());
    }
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&lowercase_first(&s.to_string()));
        source = s.source();
    }
    message
}

/// A file guard must read at start: it exists, is a file, and opens.
fn check_readable(path: &Path) -> Result<(), String> {
    let shown = path.display().to_string();
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(format!("{shown:?}: no such file")),
        Err(e) => Err(format!("{shown:?}: {}", io_message(&e))),
        Ok(m) if m.is_dir() => Err(format!("{shown:?}: is a directory, not a file")),
        Ok(_) => std::fs::File::open(path)
            .map(drop)
            .map_err(|e| format!("{shown:?}: cannot read: {}", io_message(&e))),
    }
}

fn finish_tls(o: &Overlay, listen: SocketAddr, c: &mut Check<'_>) -> Option<TlsSource> {
    let t = &o.tls;
    let Some(a) = &t.acme else {
        for (key, set) in [
            ("http_listen", o.http_listen.is_some()),
            ("https_port", o.https_port.is_some()),
            ("tls.hsts_max_age", t.hsts_max_age.is_some()),
        ] {
            if set {
                c.error(key, "only used with tls.acme (certificates from ACME)");
            }
        }
        return match (&t.cert, &t.key) {
            (Some(cert), Some(key)) => {
                let mut ok = true;
                for (at, path) in [("tls.cert", cert), ("tls.key", key)] {
                    if let Err(e) = check_readable(path) {
                        c.error(at, e);
                        ok = false;
                    }
                }
                ok.then(|| TlsSource::Files {
                    cert: cert.clone(),
                    key: key.clone(),
                })
            }
            (Some(_), None) => {
                c.error("tls.cert", "a certificate needs its key; set tls.key too");
                None
            }
            (None, Some(_)) => {
                c.error("tls.key", "a key needs its certificate; set tls.cert too");
                None
            }
            (None, None) => Some(TlsSource::SelfSigned),
        };
    };
    if t.cert.is_some() || t.key.is_some() {
        c.error(
            "tls.acme",
            "cannot be combined with tls.cert and tls.key; choose one certificate source",
        );
    }
    let email = a.email.clone();
    if email.is_none() {
        c.error(
            "tls.acme.email",
            "missing: certificates from ACME need a contact address, e.g. ops@example.com",
        );
    }
    let directory = match (a.staging, &a.directory) {
        (Some(true), Some(_)) => {
            c.error(
                "tls.acme.staging",
                "cannot be combined with tls.acme.directory; staging is Let's Encrypt's",
            );
            None
        }
        (Some(true), None) => Some(acme::LETS_ENCRYPT_STAGING.to_owned()),
        (_, Some(d)) => Some(d.clone()),
        (_, None) => Some(acme::LETS_ENCRYPT_PRODUCTION.to_owned()),
    };
    let lets_encrypt = directory
        .as_deref()
        .is_some_and(|d| d == acme::LETS_ENCRYPT_PRODUCTION || d == acme::LETS_ENCRYPT_STAGING);
    // The certificate covers the listed names, then every site's hosts.
    let mut names: Vec<(String, String)> = Vec::new();
    for (j, d) in a.domains.iter().flatten().enumerate() {
        names.push((format!("tls.acme.domains[{j}]"), d.clone()));
    }
    for (i, s) in o.sites.iter().flatten().enumerate() {
        for (j, h) in s.hosts.iter().enumerate() {
            names.push((format!("sites[{i}].hosts[{j}]"), h.clone()));
        }
    }
    let named = !names.is_empty();
    let mut domains: Vec<String> = Vec::new();
    for (at, name) in names {
        if name.parse::<IpAddr>().is_ok() {
            c.error(
                &at,
                format!("{name:?} is an IP address; certificates from ACME need a DNS name"),
            );
        } else if lets_encrypt && !is_public_name(&name) {
            c.error(
                &at,
                format!(
                    "{name:?} is not a public name; Let's Encrypt issues certificates only for names \
                     like mlflow.example.com (set tls.acme.directory for a private CA)"
                ),
            );
        } else if !domains.contains(&name) {
            domains.push(name);
        }
    }
    if !named {
        c.error(
            "tls.acme.domains",
            "no names to certify: give sites their hosts, or list names here",
        );
    }
    if let Some(ca) = &a.ca_root {
        if let Err(e) = check_readable(ca) {
            c.error("tls.acme.ca_root", e);
        }
    }
    let http_listen = o.http_listen.unwrap_or_else(|| {
        acme::DEFAULT_HTTP_LISTEN
            .parse()
            .expect("the default http listen address parses")
    });
    if conflicts(listen, http_listen) {
        if o.http_listen.is_some() {
            c.error(
                "http_listen",
                format!("{http_listen} conflicts with listen {listen}; the two listeners need different ports"),
            );
        } else {
            c.error(
                "listen",
                format!("{listen} conflicts with http_listen {http_listen} (its default with tls.acme); the two listeners need different ports"),
            );
        }
    }
    Some(TlsSource::Acme(AcmeSettings {
        domains,
        email: email?,
        directory: directory?,
        ca_root: a.ca_root.clone(),
        challenge: a.challenge.unwrap_or(ChallengeChoice::Auto),
        http_listen,
        https_port: o.https_port.unwrap_or(acme::DEFAULT_HTTPS_PORT),
        hsts_max_age: t.hsts_max_age.unwrap_or(acme::DEFAULT_HSTS_MAX_AGE),
    }))
}

/// Two listeners that cannot both bind: the same port on the same address, or on a wildcard.
fn conflicts(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() != 0 && a.port() == b.port() && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

/// A name a public CA can issue for: it has a dot and a top-level label that is not all digits.
fn is_public_name(name: &str) -> bool {
    name.rsplit_once('.')
        .is_some_and(|(_, tld)| !tld.is_empty() && !tld.bytes().all(|b| b.is_ascii_digit()))
}

/// guard's state directory when none is set: system-wide as root, per user otherwise, so
/// `guard adduser` and `guard serve` agree without flags.
pub fn default_state_dir() -> PathBuf {
    use std::os::unix::fs::MetadataExt;
    let is_root = std::fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false);
    if is_root {
        return PathBuf::from(serve::DEFAULT_STATE_DIR);
    }
    if let Some(x) = std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(x).join("guard");
    }
    match std::env::var_os("HOME") {
        Some(h) => PathBuf::from(h).join(".local/state/guard"),
        None => PathBuf::from(serve::DEFAULT_STATE_DIR),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listeners_conflict_on_a_shared_port() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(conflicts(a("0.0.0.0:80"), a("127.0.0.1:80")));
        assert!(conflicts(a("10.0.0.1:80"), a("10.0.0.1:80")));
        assert!(!conflicts(a("10.0.0.1:80"), a("10.0.0.2:80")));
        assert!(!conflicts(a("0.0.0.0:443"), a("0.0.0.0:80")));
    }
}
