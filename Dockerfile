# microfunnel service image (README "Deploy").
#   docker build -t microfunnel .
#   docker run -e MICROFUNNEL__KAFKA__BROKERS=kafka:9092 -p 9464:9464 -v microfunnel-state:/var/lib/microfunnel microfunnel
#
# Paths in the image:
#   /usr/local/bin/microfunnel              the binary (ENTRYPOINT)
#   /etc/microfunnel/microfunnel.toml        deploy/config/production.toml (override keys with MICROFUNNEL__SECTION__KEY)
#   /etc/microfunnel/journeys/               deploy/journeys/ (b2b.toml is the configured journey)
#   /var/lib/microfunnel                     state volume: local snapshots, writable by the service's user
# Port: 9464/tcp, HTTP: /metrics, /healthz, /readyz, /shards.
# User: microfunnel, uid 10001, gid 10001 (non-root); working directory /.

# ---- build ------------------------------------------------------------------------------------
FROM rust:1-bookworm AS build
# librdkafka is built from source (bundled) with vendored OpenSSL: needs make and perl.
RUN apt-get update && apt-get install -y --no-install-recommends make perl && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Dependencies first, in their own layer: a build of placeholder sources against the real
# manifests, cached until Cargo.toml or Cargo.lock change.
COPY Cargo.toml Cargo.lock rustfmt.toml ./
RUN mkdir -p src benches examples \
    && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && for b in $(awk '/^\[\[bench\]\]/ { b = 1; next } b && /^name/ { gsub(/"/, "", $3); print $3; b = 0 }' Cargo.toml); do \
         echo 'fn main() {}' > benches/$b.rs; done \
    && echo 'fn main() {}' > examples/plain_consumer.rs \
    && cargo build --release --locked --bin microfunnel \
    && rm -rf src benches examples target/release/.fingerprint/microfunnel-* target/release/deps/microfunnel-* target/release/deps/libmicrofunnel-*
# Then the service itself.
COPY src src
COPY benches benches
COPY examples examples
RUN cargo build --release --locked --bin microfunnel && strip target/release/microfunnel

# ---- runtime ----------------------------------------------------------------------------------
FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 microfunnel \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin microfunnel \
    && mkdir -p /var/lib/microfunnel && chown 10001:10001 /var/lib/microfunnel
COPY --from=build /src/target/release/microfunnel /usr/local/bin/microfunnel
COPY deploy/journeys /etc/microfunnel/journeys
COPY deploy/config/production.toml /etc/microfunnel/microfunnel.toml
USER 10001:10001
WORKDIR /
VOLUME ["/var/lib/microfunnel"]
EXPOSE 9464
# bookworm-slim has no curl: bash's /dev/tcp asks /healthz (200 while the process runs).
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD bash -c 'exec 3<>/dev/tcp/127.0.0.1/9464 && printf "GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n" >&3 && head -n 1 <&3 | grep -q " 200 "'
ENTRYPOINT ["/usr/local/bin/microfunnel"]
CMD ["run", "--config", "/etc/microfunnel/microfunnel.toml"]
