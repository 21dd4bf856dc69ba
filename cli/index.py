"""``vsearch index DIR|GLOB ...``: stream image files into a collection through IngestImages.

Contract:
- Files: a directory is walked recursively for ``.jpg .jpeg .png .webp`` (any case); any other
  argument is a glob (``**`` allowed) whose matching files are taken whatever their suffix. The
  union is indexed in path order.
- Each file goes as bytes (so a remote server works; the server never reads our disk) with
  ``metadata.uri`` = its ``file://`` URI and no id: the server names it ``sha256:<hex of the
  bytes>``. Resumable: before sending a batch the client hashes its files and asks Get which
  ids are stored; those are skipped without upload, and the server answers ``unchanged`` for
  any it finds stored meanwhile. An interrupted run, re-run, sends only what is missing.
- A file that cannot be read, is empty or over 20 MiB, or that the server cannot decode fails
  alone (reported at the end with the server's message); items the server could not take for
  now (RESOURCE_EXHAUSTED, UNAVAILABLE) are retried with back-off, then reported as failed.
- The collection is created when missing (cosine, the embedding model's dimension: ``--dim``,
  else the server's DescribeEmbeddingModel, else the one ``vsearch up`` recorded for this
  address). Whole-call errors (collection of another
  model, server gone) end the run with CliError; what was written stays written.
- ``--jobs`` batches are in flight at once (so Triton can batch across them); each batch holds
  at most ``--batch`` files and 8 MiB.
"""

from __future__ import annotations

import glob
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from vectorsearch_client import (
    Collection,
    ImageItem,
    ItemStatus,
    Metadata,
    NotFound,
    ResourceExhausted,
    Unimplemented,
    VectorSearchError,
)

from cli.common import CliError, Connection, UpState, call_error
from core import limits
from core.items import content_id

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp"})
MAX_BATCH_BYTES = 8 << 20
RETRY_CODES = frozenset({grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE})


@dataclass(frozen=True)
class IndexOptions:
    collection: str
    batch: int = 32
    jobs: int = 4
    dim: int | None = None
    retries: int = 5
    timeout_s: float = 300.0
    tags: tuple[str, ...] = ()  # given to every image indexed (not to those already stored)


@dataclass
class BatchResult:
    """Per batch: files written (``indexed``), already stored (``skipped``), ``failed`` with why."""

    indexed: int = 0
    skipped: int = 0
    failed: list[tuple[Path, str]] = field(default_factory=list)

    @property
    def files(self) -> int:
        return self.indexed + self.skipped + len(self.failed)


@dataclass
class Report(BatchResult):
    seconds: float = 0.0

    def add(self, batch: BatchResult) -> None:
        self.indexed += batch.indexed
        self.skipped += batch.skipped
        self.failed += batch.failed


def find_files(patterns: Iterable[str]) -> list[Path]:
    """The files named by ``patterns`` (directories walked, globs expanded), sorted, unique.
    CliError when a pattern names nothing."""
    found: set[Path] = set()
    for pattern in patterns:
        path = Path(pattern).expanduser()
        if path.is_dir():
            matches = [p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
        elif path.is_file():
            matches = [path]
        else:
            matches = [Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file()]
            if not matches:
                raise CliError(f"{pattern}: no such file, directory or matching files")
        found.update(p.resolve() for p in matches)
    return sorted(found)


def batches(files: list[Path], size: int, max_bytes: int = MAX_BATCH_BYTES) -> Iterator[list[Path]]:
    """Consecutive runs of at most ``size`` files and ``max_bytes`` (a larger file goes alone)."""
    current: list[Path] = []
    total = 0
    for path in files:
        try:
            length = path.stat().st_size
        except OSError:
            length = 0
        if current and (len(current) >= size or total + length > max_bytes):
            yield current
            current, total = [], 0
        current.append(path)
        total += length
    if current:
        yield current


def ensure_collection(conn: Connection, options: IndexOptions) -> Collection:
    """The collection's description, after creating it (cosine, the model's dimension) when it
    does not exist."""
    client = conn.client
    try:
        return client.describe_collection(options.collection, timeout=30)
    except NotFound:
        pass
    except VectorSearchError as exc:
        raise call_error(exc, f"describe collection {options.collection!r}") from None
    dim = options.dim
    model = ""
    try:  # the model the server embeds with, and its width
        served = client.describe_embedding_model(timeout=30)
        dim = dim or served.dimension
        model = served.embedding_model if dim == served.dimension else ""
    except Unimplemented:  # a server older than the call
        state = UpState.read()
        if state is not None and state.address == conn.address:
            dim = dim or state.dimension
            model = state.embedding_model if dim == state.dimension else ""
    except VectorSearchError as exc:
        raise call_error(exc, "describe the embedding model") from None
    if not dim:
        raise CliError(
            f"collection {options.collection!r} does not exist; pass --dim N (the embedding model's dimension, "
            "512 for openai/clip-vit-base-patch32) to create it"
        )
    try:
        client.create_collection(options.collection, dim, "cosine", embedding_model=model, timeout=30)
        return client.describe_collection(options.collection, timeout=30)
    except VectorSearchError as exc:
        raise call_error(exc, f"create collection {options.collection!r}") from None


class Indexer:
    """Indexes files into ``options.collection`` over ``conn`` (see the module doc)."""

    def __init__(self, conn: Connection, options: IndexOptions) -> None:
        self.conn = conn
        self.options = options

    def run(self, files: list[Path], progress: Callable[[BatchResult], None] | None = None) -> Report:
        """Indexes ``files``; ``progress`` is called (in this thread) after each batch."""
        report = Report()
        started = time.monotonic()
        todo = batches(files, self.options.batch)
        with ThreadPoolExecutor(max_workers=self.options.jobs, thread_name_prefix="index") as pool:
            running: set[Future[BatchResult]] = set()
            try:
                while True:
                    while len(running) < self.options.jobs and (chunk := next(todo, None)) is not None:
                        running.add(pool.submit(self.index_batch, chunk))
                    if not running:
                        break
                    done, running = wait(running, return_when=FIRST_COMPLETED)
                    for future in done:
                        result = future.result()
                        report.add(result)
                        if progress is not None:
                            progress(result)
            finally:
                for future in running:
                    future.cancel()
        report.seconds = time.monotonic() - started
        return report

    def index_batch(self, paths: list[Path]) -> BatchResult:
        """Reads, checks, skips what is stored, ingests the rest; retries what the server could
        not take for now."""
        result = BatchResult()
        contents: dict[Path, bytes] = {}
        for path in paths:
            try:
                data = path.read_bytes()
            except OSError as exc:
                result.failed.append((path, f"cannot read: {exc.strerror or exc}"))
                continue
            if not data or len(data) > limits.MAX_IMAGE_BYTES:
                result.failed.append((path, f"{len(data)} bytes: an image must be 1 byte..20 MiB"))
                continue
            contents[path] = data
        ids = {path: content_id(data) for path, data in contents.items()}
        stored = self._stored(list(dict.fromkeys(ids.values())))
        todo = [path for path in contents if ids[path] not in stored]
        result.skipped += len(contents) - len(todo)
        for attempt in range(self.options.retries + 1):
            if not todo:
                break
            if attempt:
                time.sleep(min(0.25 * 2**attempt, 5.0))
            statuses = self._ingest([(path, contents[path]) for path in todo])
            again = []
            for path, status in zip(todo, statuses, strict=True):
                if status.ok:
                    if status.unchanged:
                        result.skipped += 1
                    else:
                        result.indexed += 1
                elif status.code in RETRY_CODES and attempt < self.options.retries:
                    again.append(path)
                else:
                    result.failed.append((path, f"{status.code.name}: {status.message}"))
            todo = again
        return result

    def _stored(self, ids: list[str]) -> set[str]:
        if not ids:
            return set()
        try:
            got = self.conn.client.get(self.options.collection, ids, timeout=self.options.timeout_s)
        except VectorSearchError as exc:
            raise call_error(exc, "get") from None
        return {item.id for item in got.items}

    def _ingest(self, files: list[tuple[Path, bytes]]) -> list[ItemStatus]:
        """One IngestImages call with one message; a refused stream (too many at once) is retried."""
        tags = list(self.options.tags)
        items = [ImageItem(data=data, metadata=Metadata(uri=path.as_uri(), tags=tags)) for path, data in files]
        for attempt in range(self.options.retries + 1):
            try:
                reply = self.conn.client.ingest_images(
                    self.options.collection, items, batch_size=max(1, len(items)), timeout=self.options.timeout_s
                )
                return reply.items
            except ResourceExhausted as exc:
                if attempt == self.options.retries:
                    raise call_error(exc, "ingest") from None
                time.sleep(min(0.25 * 2 ** (attempt + 1), 5.0))
            except VectorSearchError as exc:
                raise call_error(exc, "ingest") from None
        raise AssertionError("unreachable")
