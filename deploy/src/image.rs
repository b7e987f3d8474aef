//! guard's image for the targets that run containers (compose, kubernetes): a Dockerfile that
//! packages the guard binary written beside it (a copy of the one that ran `guard deploy`), so
//! the output directory builds on its own, with no guard checkout.

/// The runtime base. guard is linked against the C library of the Debian release it is built
/// on (this repository's Dockerfile and CI use bookworm, glibc 2.36), and a binary runs only
/// where that glibc or a newer one is: [`check_runs_on_base`] refuses to package one that asks
/// for more.
pub const GUARD_BASE_IMAGE: &str = "debian:bookworm-slim";

/// The glibc minor version of [`GUARD_BASE_IMAGE`] (2.36).
pub const BASE_GLIBC_MINOR: u32 = 36;

/// The highest `GLIBC_2.N` symbol version an executable asks for; `None` for one that names
/// none (a static or musl build, which runs on any base).
pub fn glibc_minor_needed(binary: &[u8]) -> Option<u32> {
    const NEEDLE: &[u8] = b"GLIBC_2.";
    binary
        .windows(NEEDLE.len())
        .enumerate()
        .filter(|(_, w)| *w == NEEDLE)
        .filter_map(|(i, _)| {
            let digits: String = binary[i + NEEDLE.len()..]
                .iter()
                .take_while(|b| b.is_ascii_digit())
                .map(|&b| char::from(b))
                .collect();
            digits.parse().ok()
        })
        .max()
}

/// Refuses a guard binary the base image could not start (built on a newer glibc than it has).
pub fn check_runs_on_base(binary: &[u8]) -> Result<(), String> {
    match glibc_minor_needed(binary) {
        Some(n) if n > BASE_GLIBC_MINOR => Err(format!(
            "this guard needs glibc 2.{n}, but its image's base {GUARD_BASE_IMAGE} has 2.{BASE_GLIBC_MINOR}: \
             run `guard deploy` with a guard built on Debian 12 (the repository's Dockerfile builds one)"
        )),
        _ => Ok(()),
    }
}

/// The name of guard's binary in the output directory, and in the image's PATH.
pub const GUARD_BINARY: &str = "guard";

/// The build context holds secrets too (.env, secrets.yaml, auth/): send only the binary.
/// Docker reads the Dockerfile even when it is ignored here.
pub const DOCKERIGNORE: &str = "\
# Only the guard binary goes into the image build: the secrets beside it stay out of the context.
*
!guard
";

/// guard's Dockerfile, naming the command that wrote it.
pub fn guard_dockerfile(generator: &str) -> String {
    format!(
        "# guard: TLS and authentication in front of MLflow, written by `{generator}`.\n\
         # It packages the guard binary beside this file (a copy of the one that wrote it); build\n\
         # it here with `docker build -t guard .`. The base is the Debian release guard is built on,\n\
         # so the binary finds the C library it was linked against.\n\
         FROM {GUARD_BASE_IMAGE}\n\
         # CA certificates for the ACME directory; a non-root user with a fixed uid (10001), which\n\
         # Kubernetes' runAsNonRoot can check and the manifests name.\n\
         RUN apt-get update \\\n    \
             && apt-get install -y --no-install-recommends ca-certificates \\\n    \
             && rm -rf /var/lib/apt/lists/* \\\n    \
             && useradd --system --uid 10001 --user-group --home-dir /var/lib/guard \\\n        \
                 --shell /usr/sbin/nologin guard \\\n    \
             && install -d -o guard -g guard -m 0700 /var/lib/guard\n\
         COPY {GUARD_BINARY} /usr/local/bin/guard\n\
         USER 10001:10001\n\
         # Explicit: for a non-root user guard would otherwise default to ~/.local/state/guard.\n\
         ENV GUARD_STATE_DIR=/var/lib/guard\n\
         WORKDIR /var/lib/guard\n\
         EXPOSE 8443 8080\n\
         ENTRYPOINT [\"guard\"]\n\
         CMD [\"serve\"]\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_glibc_a_binary_needs_is_its_highest_symbol_version() {
        assert_eq!(
            glibc_minor_needed(b"x\0GLIBC_2.2.5\0GLIBC_2.34\0GLIBC_2.17\0"),
            Some(34)
        );
        assert_eq!(glibc_minor_needed(b"static, no versions"), None);
        assert!(check_runs_on_base(b"GLIBC_2.36").is_ok());
        let e = check_runs_on_base(b"GLIBC_2.39").unwrap_err();
        assert!(e.contains("needs glibc 2.39") && e.contains("bookworm"), "{e}");
    }
}
