# syntax=docker/dockerfile:1.7
# SPDX-License-Identifier: Apache-2.0
# The attribution server as a container (README, "Deploying").
#
#   docker build -t attribution-server:cuda .                                  # GPU nodes (default)
#   docker build -t attribution-server:cpu --build-arg VARIANT=cpu \
#     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu .       # laptops and CI
#   docker run --stop-timeout 45 --gpus all -p 50051:50051 -p 9464:9464 attribution-server:cuda --device=cuda
#
# The build stage runs deploy/docker/build-image.sh, the same script scripts/check-container-build runs
# in a clean Debian root (docker builds cannot run on our build machines). The runtime stage holds only
# /opt/attribution (binaries, the libraries they need, the default model) on a slim base, as a non-root
# user; models and config are mounted volumes.
ARG VARIANT=cuda

# CUDA: the toolkit image (nvcc for LibTorch's CMake config and our kernels), Ubuntu 24.04 based; its
# apt sources carry the same gRPC / Protobuf / abseil packages as Debian 12.
FROM nvidia/cuda:13.0.1-cudnn-devel-ubuntu24.04 AS build-cuda
FROM debian:12 AS build-cpu

FROM build-${VARIANT} AS build
ARG VARIANT
ARG TORCH_INDEX_URL=""
# The context leaves .git out: the commit --version and attribution_build_info name comes from here
# (docker build --build-arg BUILD_COMMIT=$(git describe --always --dirty) .).
ARG BUILD_COMMIT=unknown
ENV DEBIAN_FRONTEND=noninteractive TORCH_INDEX_URL=${TORCH_INDEX_URL} BUILD_COMMIT=${BUILD_COMMIT}
WORKDIR /src
COPY . .
RUN deploy/docker/build-image.sh "${VARIANT}" /opt/attribution

# The runtime bases match their build stage's C library: CUDA's base image (driver libraries come from
# the host through the NVIDIA container toolkit) or Debian's slim image.
FROM nvidia/cuda:13.0.1-base-ubuntu24.04 AS runtime-cuda
FROM debian:12-slim AS runtime-cpu

FROM runtime-${VARIANT} AS runtime
COPY --from=build /opt/attribution /opt/attribution
RUN useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin attribution \
    && mkdir -p /models /config && chown attribution:attribution /models /config
ENV PATH=/opt/attribution/bin:${PATH} LD_LIBRARY_PATH=/opt/attribution/lib
USER 10001:10001
# gRPC and Prometheus /metrics.
EXPOSE 50051 9464
VOLUME ["/models", "/config"]
# Through the gRPC health service: healthy once every model is loaded (SERVING), unhealthy while
# draining on SIGTERM. Model loading can take minutes on large models: --start-period covers it.
HEALTHCHECK --interval=15s --timeout=5s --start-period=300s --retries=3 \
  CMD ["attribution-cli", "health", "--server=127.0.0.1:50051", "--timeout=4"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["attribution-server"]
# The embedded default model, on the CPU: arguments given to `docker run` replace these (the listen flags'
# defaults are the same), so `... attribution-server:cuda --device=cuda` serves it on the GPU. With a
# config: docker run ... -v $PWD/deploy/config:/config attribution-server --config=/config/server.json (as
# shipped it serves the embedded model on the CPU: point its models into /models, each with its device).
CMD ["--listen=0.0.0.0:50051", "--metrics_listen=0.0.0.0:9464"]
