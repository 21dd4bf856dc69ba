# One image for every process of the service (shard now; router/server later).
FROM python:3.11-slim AS base
RUN apt-get update && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md ./
COPY proto ./proto
COPY vsproto ./vsproto
COPY shard ./shard
COPY router ./router
COPY server ./server
RUN pip install --no-cache-dir -e . && python -m vsproto.build
ENV PYTHONUNBUFFERED=1
EXPOSE 7001
ENTRYPOINT ["python", "-m", "shard"]
CMD ["--data-dir", "/data", "--listen", "0.0.0.0:7001"]
