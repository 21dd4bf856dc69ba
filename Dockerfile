# One image for every process of the service: `python -m shard`, `python -m server`.
FROM python:3.11-slim AS base
RUN apt-get update && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md ./
COPY proto ./proto
COPY vsproto ./vsproto
COPY core ./core
COPY shard ./shard
COPY router ./router
COPY server ./server
RUN pip install --no-cache-dir -e . && python -m vsproto.build
# shard._vsnative: fetches the pinned hnswlib 0.8.0 sdist (needs the package index) and compiles.
# Portable by default (no -march=native): an image runs on other machines than the one that built
# it; pass --build-arg VS_NATIVE_PORTABLE=0 for a host-tuned image. A failed build fails the image.
ARG VS_NATIVE_PORTABLE=1
RUN VS_NATIVE_PORTABLE=$VS_NATIVE_PORTABLE VS_NATIVE_CACHE=/tmp/vs-native python -m shard.native.build \
    && rm -rf /tmp/vs-native
ENV PYTHONUNBUFFERED=1
ENTRYPOINT ["python", "-m"]
CMD ["server", "--help"]
