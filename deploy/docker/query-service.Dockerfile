# syntax=docker/dockerfile:1
# The query service. Build from the repository root:
#   docker build -f deploy/docker/query-service.Dockerfile -t sightline/query-service .
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p sightline-query --bin query-service

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --no-create-home sightline
COPY --from=build /src/target/release/query-service /usr/bin/query-service
USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["/usr/bin/query-service"]
CMD ["--config", "/etc/sightline/query.toml", "--listen", "0.0.0.0:8080", "--log-json"]
