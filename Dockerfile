# guard: TLS and authentication in front of MLflow. Built from a guard checkout by the
# docker-compose.yml that `guard deploy compose` writes, or by `docker build -t guard .`.

# Build stage: the Rust toolchain, discarded afterwards.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
# --locked: exactly the dependency versions in Cargo.lock, never a silent update.
RUN cargo build --profile dist --locked --bin guard

# Runtime: Debian slim with CA certificates (for the ACME directory), guard, and a non-root user.
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --home-dir /var/lib/guard \
        --shell /usr/sbin/nologin guard \
    && install -d -o guard -g guard -m 0700 /var/lib/guard
COPY --from=build /src/target/dist/guard /usr/local/bin/guard
USER guard
# Explicit: for a non-root user guard would otherwise default to ~/.local/state/guard.
ENV GUARD_STATE_DIR=/var/lib/guard
WORKDIR /var/lib/guard
# users, tokens, certificates and the ACME account live in /var/lib/guard: mount a volume there
# (a named volume starts with this directory's owner and mode). Compose runs guard on these
# unprivileged ports and maps the host's 443 and 80 (or 8443) onto them.
EXPOSE 8443 8080
ENTRYPOINT ["guard"]
CMD ["serve"]
