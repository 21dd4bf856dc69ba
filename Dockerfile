# One image for every process of the service: `python -m shard`, `python -m server` (or the console
# scripts vsearch-shard, vsearch-server, vsearch; vsearch-healthcheck for container health checks).
#
# Build stage: wheels of the server package (setup.py generates the gRPC stubs and compiles
# shard._vsnative into it), of the Python SDK (the CLI's client) and of every dependency
# (hnswlib compiles from source), so the runtime stage needs no compiler.
FROM python:3.11-slim AS build
RUN apt-get update && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY proto ./proto
COPY vsproto ./vsproto
COPY core ./core
COPY shard ./shard
COPY router ./router
COPY server ./server
COPY cli ./cli
COPY clipmodel ./clipmodel
COPY triton_models ./triton_models
COPY clients/python ./clients/python
# shard._vsnative fetches the pinned hnswlib 0.8.0 sdist (needs the package index). Portable by
# default (no -march=native): an image runs on other machines than the one that built it; pass
# --build-arg VS_NATIVE_PORTABLE=0 for a host-tuned image. A failed native build fails the image.
ARG VS_NATIVE_PORTABLE=1
RUN VECTORSEARCH_PROTO_ROOT=/src/proto pip wheel --no-cache-dir --no-deps --wheel-dir /wheels ./clients/python \
    && VS_BUILD_NATIVE=1 VS_NATIVE_PORTABLE=$VS_NATIVE_PORTABLE VS_NATIVE_CACHE=/tmp/vs-native \
    pip wheel --no-cache-dir --find-links /wheels --wheel-dir /wheels .

FROM python:3.11-slim
# Runs as an unprivileged user (uid/gid 10001, as deploy/k8s's securityContext expects); /data
# is its own, so a fresh named volume mounted there is writable.
RUN groupadd --system --gid 10001 vectorsearch \
    && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /home/vectorsearch vectorsearch \
    && mkdir /data && chown 10001:10001 /data
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels vectorsearch vectorsearch-client \
    && rm -rf /wheels
ENV PYTHONUNBUFFERED=1
USER 10001:10001
WORKDIR /data
ENTRYPOINT ["python", "-m"]
CMD ["server", "--help"]
