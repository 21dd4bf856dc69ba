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
ENV PYTHONUNBUFFERED=1
ENTRYPOINT ["python", "-m"]
CMD ["server", "--help"]
