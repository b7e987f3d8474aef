//! The supervisor target: one self-contained supervisord.conf (its own control socket, logs and
//! pid file) running mlflow on 127.0.0.1 and guard in front of it. Every path and port comes
//! from the [`Layout`], so a test can run the file for real inside a temporary directory.

use std::fmt::Write as _;

use crate::mlflow;
use crate::model::{Backend, Deployment, Layout, Tls, STOP_TIMEOUT_SECS};
use crate::quote::{sh, shlex, supervisor_literal};
use crate::secrets::Secrets;
use crate::systemd::guard_args;
use crate::RenderedFile;

/// supervisord's expansion for the directory holding the config file.
const HERE: &str = "%(here)s";

/// Renders supervisord.conf, plus mlflow.env (0600, beside it) when mlflow needs a secret.
pub fn render(d: &Deployment, layout: &Layout, secrets: &Secrets) -> Vec<RenderedFile> {
    let mut files = vec![RenderedFile::new("supervisord.conf", config(d, layout), 0o644)];
    if d.mlflow_permissions {
        files.extend(mlflow::auth_files(
            secrets,
            "guard deploy supervisor",
            mlflow::HOST_AUTH_DB,
        ));
    }
    if mlflow::needs_env_file(d) {
        files.push(RenderedFile::new(
            "mlflow.env",
            mlflow::host_env_file(d, secrets, "guard deploy supervisor"),
            0o600,
        ));
    }
    files
}

/// The commands to run after writing, in order.
pub fn next_steps(d: &Deployment, layout: &Layout) -> Vec<String> {
    let out = d.out_dir.display();
    let base = layout.base_dir.as_deref().unwrap_or(&d.out_dir).display().to_string();
    let guard = layout.guard_bin.display();
    let mut steps = vec![
        mlflow::install_hint(d, &layout.mlflow_bin),
        // The copy of the guard that wrote these files, beside them.
        format!("sudo install -m 0755 {out}/guard {guard}"),
    ];
    if d.backend == Backend::Postgres {
        steps.push("sudo -u postgres createuser --pwprompt mlflow && sudo -u postgres createdb --owner mlflow mlflow    # the password is PGPASSWORD in mlflow.env".into());
    }
    if d.artifacts.is_s3() {
        steps.push(format!(
            "give mlflow S3 credentials: fill in {out}/mlflow.env, or use an instance role or ~/.aws/credentials"
        ));
    }
    if let Tls::Acme { domains, .. } = &d.tls {
        steps.push(format!(
            "point DNS for {} at this host and open ports 80 and 443",
            domains.join(", ")
        ));
        steps.push(format!(
            "sudo setcap cap_net_bind_service=+ep {guard}    # ports 80 and 443 without running supervisord as root"
        ));
    }
    if layout.base_dir.is_some() {
        steps.push(format!("mkdir -p -m 0700 {base}"));
    }
    steps.push(format!(
        "supervisord -c {out}/supervisord.conf    # stays in the foreground; supervisorctl -c {out}/supervisord.conf status"
    ));
    steps.push(format!(
        "{guard} adduser --state-dir {base}/guard alice && supervisorctl -c {out}/supervisord.conf signal HUP guard    # add a user, then reload"
    ));
    let port = layout.public_port(&d.tls);
    let url = match &d.tls {
        Tls::Acme { domains, .. } if port == 443 => format!("https://{}/", domains[0]),
        Tls::Acme { domains, .. } => format!("https://{}:{port}/", domains[0]),
        Tls::SelfSigned => format!("https://localhost:{port}/ (self-signed certificate)"),
    };
    steps.push(format!("open {url}"));
    steps
}

/// Settings both programs share: start at boot of supervisord, always come back, stop with
/// SIGTERM and enough time for guard's shutdown grace, one log file each.
fn program_common(out: &mut String, base: &str, name: &str, priority: u32, startsecs: u32) {
    let _ = write!(
        out,
        "priority={priority}\n\
         autostart=true\n\
         autorestart=true\n\
         startsecs={startsecs}\n\
         startretries=10\n\
         stopsignal=TERM\n\
         stopwaitsecs={STOP_TIMEOUT_SECS}\n\
         stopasgroup=true\n\
         killasgroup=true\n\
         umask=077\n\
         redirect_stderr=true\n\
         stdout_logfile={base}/{name}.log\n\
         stdout_logfile_maxbytes=10MB\n\
         stdout_logfile_backups=5\n"
    );
}

fn config(d: &Deployment, layout: &Layout) -> String {
    let base = match &layout.base_dir {
        Some(dir) => supervisor_literal(&dir.to_string_lossy()),
        None => HERE.to_string(),
    };
    let mut out = String::from(
        "; guard in front of MLflow under supervisord, written by `guard deploy supervisor`.\n\
         ; Run it in the foreground:  supervisord -c supervisord.conf\n\
         ; Control it:                supervisorctl -c supervisord.conf status\n\
         ; mlflow listens on 127.0.0.1 only; guard is the way in. State, logs, the pid file and\n\
         ; the control socket live in the base directory (this file's directory by default).\n",
    );
    let _ = write!(
        out,
        "\n[supervisord]\n\
         nodaemon=true\n\
         logfile={base}/supervisord.log\n\
         logfile_maxbytes=10MB\n\
         logfile_backups=5\n\
         pidfile={base}/supervisord.pid\n\
         childlogdir={base}\n\
         \n\
         [unix_http_server]\n\
         file={base}/supervisor.sock\n\
         chmod=0700\n\
         \n\
         [rpcinterface:supervisor]\n\
         supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n\
         \n\
         [supervisorctl]\n\
         serverurl=unix://{base}/supervisor.sock\n"
    );

    // mlflow: one sh command, because the schema must be created or migrated before the
    // server's workers start and supervisord has no pre-start hook. `exec` hands the process
    // (and supervisord's signals) to the server.
    let mlflow_dir = format!("{base}/mlflow");
    let mlflow_bin = supervisor_literal(&layout.mlflow_bin.to_string_lossy());
    let backend = mlflow::host_backend_uri(d, &mlflow_dir);
    let artifacts = mlflow::host_artifacts(d, &mlflow_dir);
    let mut script: Vec<String> = Vec::new();
    if mlflow::needs_env_file(d) {
        script.push(format!("set -a && . {} && set +a", sh(&format!("{HERE}/mlflow.env"))));
    }
    // sqlite creates its file but not the directory; the artifact root must exist too.
    let mut dirs = Vec::new();
    // The auth app's user store is relative to the working directory (basic_auth.ini).
    if d.backend == Backend::Sqlite || d.mlflow_permissions {
        dirs.push(mlflow_dir.clone());
    }
    if !d.artifacts.is_s3() {
        dirs.push(artifacts.clone());
    }
    if !dirs.is_empty() {
        script.push(format!(
            "mkdir -p {}",
            dirs.iter().map(|p| sh(p)).collect::<Vec<_>>().join(" ")
        ));
    }
    script.push(format!("{} db upgrade {}", sh(&mlflow_bin), sh(&backend)));
    if d.mlflow_permissions {
        script.push(format!("cd {}", sh(&mlflow_dir)));
    }
    let server = mlflow::server_command(d, &mlflow_bin, "127.0.0.1", layout.mlflow_port, &backend, &artifacts);
    script.push(format!(
        "exec {}",
        server.iter().map(|w| sh(w)).collect::<Vec<_>>().join(" ")
    ));
    let public_port = layout.public_port(&d.tls);
    let upstream = format!("127.0.0.1:{}", layout.mlflow_port);
    let _ = write!(
        out,
        "\n[program:mlflow]\n\
         ; Creates or migrates the schema, then becomes the server (exec), on 127.0.0.1 only.\n\
         command=/bin/sh -c {}\n",
        shlex(&script.join(" && "))
    );
    program_common(&mut out, &base, "mlflow", 10, 10);
    let _ = write!(
        out,
        "environment=MLFLOW_SERVER_ALLOWED_HOSTS=\"{}\",MLFLOW_SERVER_CORS_ALLOWED_ORIGINS=\"{}\"",
        mlflow::allowed_hosts(&d.tls, public_port, &upstream),
        mlflow::cors_origins(&d.tls, public_port),
    );
    if d.mlflow_permissions {
        // The auth app's config, guard's authorization function beside it, and the secret
        // that function checks.
        let auth = format!("{HERE}/{}", mlflow::AUTH_DIR);
        let _ = write!(
            out,
            ",MLFLOW_AUTH_CONFIG_PATH=\"{auth}/basic_auth.ini\",PYTHONPATH=\"{auth}\",\
             GUARD_UPSTREAM_SECRET_FILE=\"{HERE}/{}\"",
            mlflow::UPSTREAM_SECRET_FILE
        );
    }
    out.push('\n');

    // guard: explicit flags, so variables inherited from the shell that started supervisord
    // cannot change its upstream or state directory.
    let mut guard_layout = layout.clone();
    guard_layout.guard_bin = supervisor_literal(&layout.guard_bin.to_string_lossy()).into();
    let mut args = guard_args(d, &guard_layout, &format!("{base}/guard"));
    if d.mlflow_permissions {
        args.push("--upstream-secret-file".into());
        args.push(format!("{HERE}/{}", mlflow::UPSTREAM_SECRET_FILE));
    }
    let _ = write!(
        out,
        "\n[program:guard]\n\
         ; Started after mlflow and stopped before it. SIGHUP (supervisorctl signal HUP guard)\n\
         ; reloads users and tokens.\n\
         command={}\n",
        args.iter().map(|a| shlex(a)).collect::<Vec<_>>().join(" ")
    );
    program_common(&mut out, &base, "guard", 20, 2);
    // guard takes its settings as flags; a backtrace makes a crash in guard.log actionable.
    out.push_str("environment=RUST_BACKTRACE=\"1\"\n");
    out
}
