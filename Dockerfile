# freshgate container: multi-stage, non-root, with a health check.
#
#   docker build -t freshgate .
#   docker run -p 8080:8080 -e FRESHGATE_UPSTREAM=http://app:3000 freshgate
#
# Settings come from the environment (FRESHGATE_UPSTREAM, FRESHGATE_REDIS,
# FRESHGATE_NAMESPACE, FRESHGATE_ADMIN_LISTEN, FRESHGATE_ADMIN_TOKEN, ...) and
# the config file named by FRESHGATE_CONFIG: mount your rules over
# /etc/freshgate (a directory, so hot reload follows the file being replaced).
# Arguments after the image name replace only `run`'s flags, never the config:
#   docker run freshgate run --listen 0.0.0.0:8081
# docs/operations.md has compose and Kubernetes examples.

FROM rust:1-bookworm AS build
# PGO=true (`docker build --build-arg PGO=true .`): a profile-guided build,
# scripts/build-pgo run inside this stage (two whole builds and about 75 s
# of training on the build's loopback): 14-23 % more requests/s
# (docs/benchmarks.md run 18). Its llvm-profdata: rustup's llvm-tools where
# it can be fetched, else Debian's.
ARG PGO=false
# cmake: pingora's zlib-ng build.
RUN case "$PGO" in true|false) ;; *) echo "PGO=$PGO: use true or false" >&2; exit 1;; esac \
    && apt-get update && apt-get install -y --no-install-recommends cmake \
    && if [ "$PGO" = true ]; then \
         apt-get install -y --no-install-recommends wrk redis-server curl python3 llvm-19 \
         && (rustup component add llvm-tools 2>/dev/null || true); fi \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Dependencies first, in a layer of their own: a source change recompiles
# freshgate only, not pingora and the other crates (the release profile's LTO
# still optimises them all together at the end: ~2.5 minutes on 2 cores).
# A profile-guided build compiles everything again with its profile.
COPY Cargo.toml Cargo.lock ./
COPY vendor ./vendor
RUN [ "$PGO" = true ] || { mkdir -p src benches \
    && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && for b in $(awk '/^\[\[bench\]\]/ {b = 1; next} b && /^name/ {gsub(/"/, "", $3); print $3; b = 0}' Cargo.toml); do \
         echo 'fn main() {}' > "benches/$b.rs"; done \
    && cargo build --release --locked \
    && rm -rf src benches; }
COPY src ./src
COPY benches ./benches
COPY config ./config
COPY scripts/build-pgo ./scripts/build-pgo
# Newer than the placeholders, whatever times the build context kept.
RUN touch src/main.rs src/lib.rs \
    && if [ "$PGO" = true ]; then \
         mkdir -p target/release && b=$(bash scripts/build-pgo) && cp "$b" target/release/freshgate; \
       else cargo build --release --locked; fi \
    && strip target/release/freshgate

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --no-create-home freshgate
COPY --from=build /src/target/release/freshgate /usr/local/bin/freshgate
COPY deploy/container/freshgate.yaml /etc/freshgate/freshgate.yaml
ENV FRESHGATE_CONFIG=/etc/freshgate/freshgate.yaml \
    FRESHGATE_LISTEN=0.0.0.0:8080 \
    FRESHGATE_ADMIN_LISTEN=127.0.0.1:9090 \
    NO_COLOR=1
USER 10001
EXPOSE 8080 9090
# Asks the admin listener wherever FRESHGATE_ADMIN_LISTEN puts it.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD ["freshgate", "health"]
# SIGTERM drains: shutdown.grace_period + shutdown.timeout in the bundled
# config is 8 s, inside Docker's default 10 s stop timeout.
STOPSIGNAL SIGTERM
ENTRYPOINT ["freshgate"]
CMD ["run"]
