//! The systemd target: guard.service and mlflow.service, each as its own dynamic user with its
//! data in its StateDirectory=, mlflow bound to 127.0.0.1, and the sandboxing systemd offers
//! (guard.service rates "OK", 2.0 or lower, in `systemd-analyze security`).

use std::fmt::Write as _;

use guard_config::model::Upstream;

use crate::mlflow;
use crate::model::{Backend, Deployment, Layout, Tls, STOP_TIMEOUT_SECS};
use crate::quote::{systemd_command, systemd_env};
use crate::secrets::Secrets;
use crate::RenderedFile;

/// Where the next steps install mlflow.env; mlflow.service reads it from there.
pub const MLFLOW_ENV_PATH: &str = "/etc/mlflow/mlflow.env";

/// Where the next steps install MLflow's auth config and guard's authorization function
/// (`--mlflow-permissions`).
pub const MLFLOW_AUTH_PATH: &str = "/etc/mlflow/auth";
/// Where the next steps install the secret both services load as a credential.
pub const UPSTREAM_SECRET_PATH: &str = "/etc/guard/upstream.secret";
/// The credential's name; each service reads it as `%d/upstream-secret`.
const SECRET_CREDENTIAL: &str = "upstream-secret";

/// StateDirectory= roots (systemd always puts a system unit's state under /var/lib).
const GUARD_STATE: &str = "/var/lib/guard";
const MLFLOW_STATE: &str = "/var/lib/mlflow";

/// Renders guard.service and mlflow.service, plus mlflow.env (0600) when mlflow needs a secret.
pub fn render(d: &Deployment, layout: &Layout, secrets: &Secrets) -> Vec<RenderedFile> {
    let mut files = vec![
        RenderedFile::new("guard.service", guard_unit(d, layout), 0o644),
        RenderedFile::new("mlflow.service", mlflow_unit(d, layout), 0o644),
    ];
    if mlflow::needs_env_file(d) {
        files.push(RenderedFile::new(
            "mlflow.env",
            mlflow::host_env_file(d, secrets, "guard deploy systemd"),
            0o600,
        ));
    }
    if d.mlflow_permissions {
        files.extend(mlflow::auth_files(
            secrets,
            "guard deploy systemd",
            mlflow::HOST_AUTH_DB,
        ));
    }
    files
}

/// The commands to run after writing, in order.
pub fn next_steps(d: &Deployment, layout: &Layout) -> Vec<String> {
    let out = d.out_dir.display();
    let guard = layout.guard_bin.display();
    let mut steps = vec![
        mlflow::install_hint(d, &layout.mlflow_bin),
        // The copy of the guard that wrote these files, beside them.
        format!("sudo install -m 0755 {out}/guard {guard}"),
    ];
    if d.backend == Backend::Postgres {
        steps.push("sudo -u postgres createuser --pwprompt mlflow && sudo -u postgres createdb --owner mlflow mlflow    # the password is PGPASSWORD in mlflow.env".into());
    }
    if mlflow::needs_env_file(d) {
        steps.push(format!("sudo install -D -m 0600 {out}/mlflow.env {MLFLOW_ENV_PATH}"));
    }
    if d.mlflow_permissions {
        steps.push(format!(
            "sudo install -D -m 0600 {out}/{secret} {UPSTREAM_SECRET_PATH} && sudo install -D -m 0644 -t {MLFLOW_AUTH_PATH} {out}/{auth}/*",
            secret = mlflow::UPSTREAM_SECRET_FILE,
            auth = mlflow::AUTH_DIR,
        ));
    }
    if let Tls::Acme { domains, .. } = &d.tls {
        steps.push(format!(
            "point DNS for {} at this host and open ports 80 and 443",
            domains.join(", ")
        ));
    }
    steps.push(format!(
        "sudo install -m 0644 {out}/guard.service {out}/mlflow.service /etc/systemd/system/ && sudo systemctl daemon-reload && sudo systemctl enable --now mlflow guard"
    ));
    steps.push(format!(
        "sudo systemd-run --pty --wait --collect -p DynamicUser=yes -p User=guard -p StateDirectory=guard {guard} adduser --state-dir {GUARD_STATE} alice && sudo systemctl reload guard    # add a user as guard's own user, then reload"
    ));
    steps.push(format!("open {}", public_url(d, layout)));
    steps
}

fn public_url(d: &Deployment, layout: &Layout) -> String {
    let port = layout.public_port(&d.tls);
    match &d.tls {
        Tls::Acme { domains, .. } if port == 443 => format!("https://{}/", domains[0]),
        Tls::Acme { domains, .. } => format!("https://{}:{port}/", domains[0]),
        Tls::SelfSigned => format!("https://localhost:{port}/ (self-signed certificate)"),
    }
}

/// Whether guard binds a port below 1024 and so needs CAP_NET_BIND_SERVICE.
fn needs_bind_capability(d: &Deployment, layout: &Layout) -> bool {
    let http = match (&d.tls, layout.guard_http_listen) {
        (Tls::SelfSigned, _) => None,
        (Tls::Acme { .. }, Some(addr)) => Some(addr.port()),
        (Tls::Acme { .. }, None) => Some(80),
    };
    layout.public_port(&d.tls) < 1024 || http.is_some_and(|p| p < 1024)
}

/// guard's command line, shared with the supervisor target: explicit flags, so an environment
/// inherited from whoever starts the supervisor cannot change them.
pub(crate) fn guard_args(d: &Deployment, layout: &Layout, state_dir: &str) -> Vec<String> {
    let upstream = Upstream {
        host: "127.0.0.1".into(),
        port: layout.mlflow_port,
        tls: false,
    };
    let mut args = vec![
        layout.guard_bin.to_string_lossy().into_owned(),
        "serve".into(),
        "--upstream".into(),
        upstream.authority(),
        "--state-dir".into(),
        state_dir.into(),
    ];
    if let Some(addr) = layout.guard_listen {
        args.extend(["--listen".into(), addr.to_string()]);
    }
    if let Tls::Acme { domains, email } = &d.tls {
        if let Some(addr) = layout.guard_http_listen {
            args.extend(["--http-listen".into(), addr.to_string()]);
        }
        for domain in domains {
            args.extend(["--domain".into(), domain.clone()]);
        }
        args.extend(["--acme-email".into(), email.clone()]);
    }
    args
}

/// The sandbox both units share. Each line removes something neither program uses.
const COMMON_HARDENING: &str = "\
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
PrivateDevices=yes
PrivateMounts=yes
PrivateIPC=yes
ProtectHostname=yes
ProtectClock=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectProc=invisible
RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
RemoveIPC=yes
LockPersonality=yes
KeyringMode=private
DevicePolicy=closed
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallFilter=~@privileged @resources
SystemCallErrorNumber=EPERM
";

fn guard_unit(d: &Deployment, layout: &Layout) -> String {
    let mut out = String::from(
        "# guard: TLS and authentication in front of MLflow. Written by `guard deploy systemd`.\n\
         # Add users as guard's own user, then reload (SIGHUP re-reads users and tokens):\n",
    );
    let _ = writeln!(
        out,
        "#   sudo systemd-run --pty --wait --collect -p DynamicUser=yes -p User=guard -p StateDirectory=guard {} adduser --state-dir {GUARD_STATE} NAME\n\
         #   sudo systemctl reload guard",
        layout.guard_bin.display()
    );
    out.push_str(
        "\n[Unit]\n\
         Description=guard: TLS and authentication in front of MLflow\n\
         Wants=network-online.target mlflow.service\n\
         After=network-online.target mlflow.service\n\
         \n[Service]\n\
         Type=exec\n",
    );
    if d.mlflow_permissions {
        // Specifiers are written as they are: systemd_command would escape the `%`.
        let _ = writeln!(
            out,
            "# The secret MLflow's authorization function checks, readable by this service alone.\n\
             LoadCredential={SECRET_CREDENTIAL}:{UPSTREAM_SECRET_PATH}\n\
             ExecStart={} --upstream-secret-file %d/{SECRET_CREDENTIAL}",
            systemd_command(&guard_args(d, layout, GUARD_STATE))
        );
    } else {
        let _ = writeln!(
            out,
            "ExecStart={}",
            systemd_command(&guard_args(d, layout, GUARD_STATE))
        );
    }
    let _ = write!(
        out,
        "ExecReload=/bin/kill -HUP $MAINPID\n\
         Restart=on-failure\n\
         RestartSec=2s\n\
         # Longer than guard's 30 s shutdown grace, so uploads in flight can finish.\n\
         TimeoutStopSec={STOP_TIMEOUT_SECS}s\n\
         # One descriptor per client and per upstream connection.\n\
         LimitNOFILE=65536\n\
         \n\
         # Its own user, allocated by systemd; StateDirectory= follows it (users, tokens,\n\
         # certificates and the ACME account live there).\n\
         DynamicUser=yes\n\
         User=guard\n\
         StateDirectory=guard\n\
         StateDirectoryMode=0700\n\
         UMask=0077\n\
         \n"
    );
    if needs_bind_capability(d, layout) {
        out.push_str(
            "# Ports below 1024 without root, and no other privilege.\n\
             AmbientCapabilities=CAP_NET_BIND_SERVICE\n\
             CapabilityBoundingSet=CAP_NET_BIND_SERVICE\n",
        );
    } else {
        out.push_str(
            "# No privileged port, so no capability at all.\n\
             CapabilityBoundingSet=\n\
             PrivateUsers=yes\n",
        );
    }
    out.push_str(
        "\n# The sandbox. guard is Rust without a JIT, so no memory is writable and executable,\n\
         # and it reads no system-wide /proc file.\n\
         MemoryDenyWriteExecute=yes\n\
         ProcSubset=pid\n",
    );
    out.push_str(COMMON_HARDENING);
    out.push_str("\n[Install]\nWantedBy=multi-user.target\n");
    out
}

fn mlflow_unit(d: &Deployment, layout: &Layout) -> String {
    let public_port = layout.public_port(&d.tls);
    let upstream = format!("127.0.0.1:{}", layout.mlflow_port);
    let backend = mlflow::host_backend_uri(d, MLFLOW_STATE);
    let artifacts = mlflow::host_artifacts(d, MLFLOW_STATE);
    let mlflow_bin = layout.mlflow_bin.to_string_lossy().into_owned();

    let mut out = String::from(
        "# MLflow tracking server for guard, written by `guard deploy systemd`. It listens on\n\
         # 127.0.0.1 only: guard is the way in.\n\
         \n[Unit]\n\
         Description=MLflow tracking server (behind guard)\n",
    );
    if d.backend == Backend::Postgres {
        out.push_str("After=network.target postgresql.service\n");
    } else {
        out.push_str("After=network.target\n");
    }
    out.push_str("\n[Service]\nType=exec\n");
    let _ = writeln!(
        out,
        "Environment={}",
        systemd_env(
            "MLFLOW_SERVER_ALLOWED_HOSTS",
            &mlflow::allowed_hosts(&d.tls, public_port, &upstream)
        )
    );
    let _ = writeln!(
        out,
        "Environment={}",
        systemd_env(
            "MLFLOW_SERVER_CORS_ALLOWED_ORIGINS",
            &mlflow::cors_origins(&d.tls, public_port)
        )
    );
    let _ = writeln!(out, "Environment={}", systemd_env("HOME", MLFLOW_STATE));
    if mlflow::needs_env_file(d) {
        let _ = writeln!(out, "EnvironmentFile={MLFLOW_ENV_PATH}");
    }
    if d.mlflow_permissions {
        let _ = writeln!(
            out,
            "# The auth app trusts the user guard names only with guard's secret (guard_mlflow_auth.py).\n\
             Environment={}\n\
             Environment={}\n\
             LoadCredential={SECRET_CREDENTIAL}:{UPSTREAM_SECRET_PATH}\n\
             Environment=GUARD_UPSTREAM_SECRET_FILE=%d/{SECRET_CREDENTIAL}\n\
             # basic_auth.ini's user store is relative: it lives in the state directory.\n\
             WorkingDirectory={MLFLOW_STATE}",
            systemd_env("MLFLOW_AUTH_CONFIG_PATH", &format!("{MLFLOW_AUTH_PATH}/basic_auth.ini")),
            systemd_env("PYTHONPATH", MLFLOW_AUTH_PATH),
        );
    }
    let _ = writeln!(
        out,
        "# Creates the schema in a new database and migrates an old one before the workers start.\n\
         ExecStartPre={}",
        systemd_command(&[mlflow_bin.as_str(), "db", "upgrade", &backend])
    );
    let _ = writeln!(
        out,
        "ExecStart={}",
        systemd_command(&mlflow::server_command(
            d,
            &mlflow_bin,
            "127.0.0.1",
            layout.mlflow_port,
            &backend,
            &artifacts
        ))
    );
    let _ = write!(
        out,
        "Restart=on-failure\n\
         RestartSec=5s\n\
         # Schema migrations of a large database can take minutes.\n\
         TimeoutStartSec=15min\n\
         TimeoutStopSec={STOP_TIMEOUT_SECS}s\n\
         \n\
         DynamicUser=yes\n\
         User=mlflow\n\
         StateDirectory=mlflow\n\
         StateDirectoryMode=0700\n\
         UMask=0077\n"
    );
    if !d.artifacts.is_s3() {
        // Nothing but clients on loopback (and PostgreSQL on 127.0.0.1): no traffic elsewhere.
        out.push_str(
            "\n# mlflow talks to nothing beyond this host.\n\
             IPAddressAllow=localhost\n\
             IPAddressDeny=any\n",
        );
    }
    out.push_str(
        "\n# The sandbox, with no capability and no other user. Unlike guard's, it leaves out\n\
         # MemoryDenyWriteExecute= (Python's ctypes and cffi callbacks need writable, executable\n\
         # memory) and ProcSubset=pid (libraries read /proc/cpuinfo and /proc/meminfo).\n\
         CapabilityBoundingSet=\n\
         PrivateUsers=yes\n",
    );
    out.push_str(COMMON_HARDENING);
    out.push_str("\n[Install]\nWantedBy=multi-user.target\n");
    out
}
