# freshgate container: multi-stage, non-root, with a health check.
#   docker build -t freshgate .
#   docker run -p 8080:8080 freshgate run --listen 0.0.0.0:8080 --upstream http://app:3000
FROM rust:1-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends cmake && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
# Declared in Cargo.toml ([[bench]]), so cargo needs it even for a plain build.
COPY benches ./benches
COPY config ./config
RUN cargo build --release --locked && strip target/release/freshgate

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --no-create-home freshgate
COPY --from=build /src/target/release/freshgate /usr/local/bin/freshgate
COPY --from=build /src/config/freshgate.yaml /etc/freshgate/freshgate.yaml
USER 10001
EXPOSE 8080 9090
# The admin listener stays on loopback inside the container; the check runs there too.
HEALTHCHECK --interval=10s --timeout=2s --start-period=5s --retries=3 \
  CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/9090 && printf 'GET /healthz HTTP/1.0\\r\\n\\r\\n' >&3 && grep -q ' 200 ' <&3"]
ENTRYPOINT ["freshgate"]
CMD ["run", "-c", "/etc/freshgate/freshgate.yaml", "--listen", "0.0.0.0:8080"]
