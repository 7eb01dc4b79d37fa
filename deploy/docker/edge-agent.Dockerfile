# syntax=docker/dockerfile:1
# The edge agent, for hosts that run containers (most run it under systemd: deploy/edge/).
# Build from the repository root:
#   docker build -f deploy/docker/edge-agent.Dockerfile -t sightline/edge-agent .
# Run with the camera and a data volume:
#   docker run --device /dev/video0 -v sightline-data:/var/lib/sightline \
#     -v /etc/sightline:/etc/sightline:ro sightline/edge-agent
FROM rust:1.95-bookworm AS build
# DuckDB builds from its bundled C++ sources; the V4L2 bindings need libclang; libjpeg-turbo
# builds from its bundled sources with cmake (and nasm for its x86 SIMD code).
RUN apt-get update && apt-get install -y --no-install-recommends g++ libclang-dev cmake nasm \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p sightline-edge-agent --bin edge-agent

# ONNX Runtime's library comes from PyPI's wheel, as on a host.
FROM python:3.11-slim-bookworm AS onnxruntime
RUN pip install --no-cache-dir onnxruntime==1.31.1 \
    && cp "$(python -c 'import onnxruntime, os; print(os.path.join(os.path.dirname(onnxruntime.__file__), "capi", "libonnxruntime.so." + onnxruntime.__version__))')" /libonnxruntime.so

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --user-group --no-create-home --groups video sightline \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/sightline
COPY --from=build /src/target/release/edge-agent /usr/bin/edge-agent
COPY --from=onnxruntime /libonnxruntime.so /usr/lib/sightline/libonnxruntime.so
COPY models/nanodet_coco_416.onnx models/coco.names /usr/share/sightline/models/
ENV ORT_DYLIB_PATH=/usr/lib/sightline/libonnxruntime.so
USER 10001:10001
VOLUME /var/lib/sightline
EXPOSE 9470
ENTRYPOINT ["/usr/bin/edge-agent"]
CMD ["--config", "/etc/sightline/edge-agent.toml", "--log-json", "run"]
