# Build with the toolchain this project is developed on (rust-toolchain.toml: the same 1.95.0, so rustup
# uses the image's; it adds rustfmt and clippy, listed there); run on a slim Debian as uid 1001.
FROM rust:1.95.0-slim-bookworm AS build
# cmake and these headers build the bundled librdkafka (see scripts/lib/build-deps.sh).
RUN apt-get update && apt-get install -y --no-install-recommends cmake make g++ pkg-config libssl-dev zlib1g-dev \
    libcurl4-openssl-dev libsasl2-dev && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin ticket-supervisor --bin ticketctl

FROM debian:bookworm-slim
# The binary links OpenSSL 3 and zlib dynamically (librdkafka's TLS); CA certificates for TLS to brokers,
# MongoDB and webhook targets.
RUN apt-get update && apt-get install -y --no-install-recommends libssl3 zlib1g ca-certificates \
 && rm -rf /var/lib/apt/lists/*
RUN useradd --uid 1001 --create-home --home-dir /app app \
 && mkdir -p /app/data && chown 1001 /app/data
COPY --from=build /src/target/release/ticket-supervisor /src/target/release/ticketctl /usr/local/bin/
USER 1001
WORKDIR /app
ENV DATA_DIR=/app/data
EXPOSE 8000 50052 9090
HEALTHCHECK --interval=15s --timeout=3s --retries=3 CMD ["ticket-supervisor", "healthcheck"]
ENTRYPOINT ["ticket-supervisor"]
