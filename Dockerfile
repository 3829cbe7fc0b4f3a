# syntax=docker/dockerfile:1
#
# stompgate container image.
#
#   docker build -t stompgate .
#   docker run --rm -p 15674:15674 \
#       -e STOMPGATE_AMQP_URL=amqp://guest:guest@rabbitmq:5672/%2f stompgate
#
# The build context is the whole repository minus what .dockerignore leaves
# out (target/, .git, node_modules, the deploy kit): cargo needs the
# workspace member bench/ and the [[bench]] sources under benches/ to load
# the manifest, even though only the `stompgate` binary is built.

# ---- build ---------------------------------------------------------------
FROM rust:1-bookworm AS builder
WORKDIR /src

# The whole context (see .dockerignore). Dependencies are cached by the
# cache mounts rather than by a layer of stand-in sources: the registry and
# the compiled dependencies in target/ survive between builds (BuildKit, the
# default builder since Docker 23), so a change to src/ recompiles only the
# stompgate crate, and a new [[bin]] or [[bench]] in Cargo.toml cannot break
# a hand-written dependency layer.
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin stompgate \
    && install -D -m 0755 target/release/stompgate /out/stompgate

# ---- runtime -------------------------------------------------------------
FROM debian:bookworm-slim

# ca-certificates for amqps:// URLs. coreutils (in the base image) provides
# the `sleep` that Kubernetes' preStop hook runs (deploy/kubernetes).
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 stompgate \
    && useradd --system --uid 10001 --gid stompgate --home-dir /nonexistent \
        --no-create-home --shell /usr/sbin/nologin stompgate

COPY --from=builder /out/stompgate /usr/local/bin/stompgate

# In a container the gateway must listen on every interface (its built-in
# default is 127.0.0.1:15674). Precedence (docs/configuration.md): flags >
# STOMPGATE_* variables > the --config file > defaults, so this variable
# overrides a `listen` key in a mounted file; `--listen` overrides both.
ENV STOMPGATE_LISTEN=0.0.0.0:15674
EXPOSE 15674

# Numeric, so that Kubernetes' runAsNonRoot can check it.
USER 10001:10001

# The gateway drains on SIGTERM: /readyz turns 503, sessions are closed over
# drain_window_ms (default 5 s), and it exits 0 at most 10 s after that.
# Give it time: `docker stop -t 30`, compose's stop_grace_period, Kubernetes'
# terminationGracePeriodSeconds.
STOPSIGNAL SIGTERM

# Health is probed from outside (Kubernetes probes, the load balancer):
# GET /healthz (liveness) and GET /readyz (routing); no curl in this image.
ENTRYPOINT ["/usr/local/bin/stompgate"]
