# microfunnel service image. Build: docker build -t microfunnel .
# Run:   docker run -e MICROFUNNEL__KAFKA__BROKERS=kafka:9092 -e MICROFUNNEL__HTTP__LISTEN=0.0.0.0:9464 \
#          -p 9464:9464 microfunnel
FROM rust:1-bookworm AS build
WORKDIR /src
# librdkafka is built from source (bundled) with vendored OpenSSL: needs cmake-free make, perl.
RUN apt-get update && apt-get install -y --no-install-recommends make perl && rm -rf /var/lib/apt/lists/*
COPY Cargo.toml Cargo.lock rustfmt.toml ./
COPY src src
COPY benches benches
COPY examples examples
RUN cargo build --release --locked --bin microfunnel

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 microfunnel
COPY --from=build /src/target/release/microfunnel /usr/local/bin/microfunnel
COPY deploy/journeys /etc/microfunnel/journeys
COPY deploy/config/local.toml /etc/microfunnel/microfunnel.toml
ENV MICROFUNNEL__JOURNEY__PATH=/etc/microfunnel/journeys/b2b.toml
USER microfunnel
EXPOSE 9464
# Inside a container the endpoint must listen beyond loopback: set MICROFUNNEL__HTTP__LISTEN=0.0.0.0:9464.
ENTRYPOINT ["/usr/local/bin/microfunnel"]
CMD ["run", "--config", "/etc/microfunnel/microfunnel.toml"]
