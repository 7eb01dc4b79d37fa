# syntax=docker/dockerfile:1
# The ingest service. Build from the repository root:
#   docker build -f deploy/docker/ingest-service.Dockerfile -t sightline/ingest-service .
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p sightline-ingest --bin ingest-service

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --no-create-home sightline
COPY --from=build /src/target/release/ingest-service /usr/bin/ingest-service
USER 10001:10001
EXPOSE 8081
ENTRYPOINT ["/usr/bin/ingest-service"]
CMD ["--config", "/etc/sightline/ingest.toml", "--listen", "0.0.0.0:8081", "--log-json"]
