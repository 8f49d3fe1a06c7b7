# Build with the toolchain this project is developed on; run on a slim Debian as uid 1001.
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin ticket-supervisor

FROM debian:bookworm-slim
RUN useradd --uid 1001 --create-home --home-dir /app app \
 && mkdir -p /app/data && chown 1001 /app/data
COPY --from=build /src/target/release/ticket-supervisor /usr/local/bin/ticket-supervisor
USER 1001
WORKDIR /app
ENV DATA_DIR=/app/data
EXPOSE 8000 50052 9090
HEALTHCHECK --interval=15s --timeout=3s --retries=3 CMD ["ticket-supervisor", "healthcheck"]
ENTRYPOINT ["ticket-supervisor"]
