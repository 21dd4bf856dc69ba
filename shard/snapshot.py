"""Atomic, checksummed snapshots of a graph layer.

A snapshot is a directory ``snap-{applied_seq:020d}`` under ``snapshots/`` holding
``graph.hnsw`` (hnswlib's own format), ``ids.bin`` (label -> id), ``payloads.bin`` (label ->
the item's payload; written only when some item has one, absent in snapshots written before
payloads existed), ``versions.bin`` (label -> the item's version, the seq of the log record
that wrote it; absent in snapshots written before versions existed: all read as 0, unknown),
for an int8 collection ``vectors.f32`` (label -> the float32 row; the graph file holds int8
codes, and the manifest the quantizer, ``"quantizer": {"lo": [...], "scale": s}``) and
``MANIFEST.json``. It is
written into a temporary directory, every file and the directory are fsynced, and the
directory is renamed into place, so a crash leaves either no snapshot or a complete one.

The manifest records format version, applied seq, spec, element/live counts and the size and
CRC32C of each file; it carries a CRC32C of its own canonical JSON. ``load_newest`` verifies all
of it and never returns a snapshot that fails a check; it falls back to older ones.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from crc32c import crc32c

from core.errors import CorruptionError
from core.spec import CollectionSpec
from shard import hnsw
from shard.fsutil import fsync_dir, fsync_file
from shard.graph import ROWS_FILE, Graph, Int8Quantizer, RowsFile, mark_deleted, uninitialised_index
from shard.hnsw import HnswIndex
from shard.idtable import IdTable

FORMAT = 1
GRAPH_FILE = "graph.hnsw"
IDS_FILE = "ids.bin"
PAYLOADS_FILE = "payloads.bin"
VERSIONS_FILE = "versions.bin"
MANIFEST = "MANIFEST.json"
_PREFIX = "snap-"
_IDS_HEADER = struct.Struct("<4sIQ")
_IDS_MAGIC = b"VSID"
_PAYLOADS_HEADER = struct.Struct("<4sQ")
_PAYLOADS_MAGIC = b"VSPL"
_VERSIONS_MAGIC = b"VSVR"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SnapshotInfo:
    path: Path
    applied_seq: int


def snapshot_name(applied_seq: int) -> str:
    return f"{_PREFIX}{applied_seq:020d}"


def _file_crc(path: Path) -> int:
    crc = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            crc = crc32c(chunk, crc)
    return crc


def encode_ids(ids: IdTable) -> bytes:
    """Label -> id: a header, each id's UTF-8 length (uint16; 0: a dead label), then the ids back
    to back."""
    lengths, blob = ids.encoded()
    return _IDS_HEADER.pack(_IDS_MAGIC, FORMAT, len(lengths)) + lengths.astype("<u2").tobytes() + blob


def decode_ids(data: bytes) -> IdTable:
    """CorruptionError if ``data`` is not what :func:`encode_ids` wrote."""
    try:
        magic, version, count = _IDS_HEADER.unpack_from(data)
    except struct.error as exc:
        raise CorruptionError("ids file is truncated") from exc
    if magic != _IDS_MAGIC or version != FORMAT:
        raise CorruptionError("ids file has a bad header")
    start = _IDS_HEADER.size
    if len(data) < start + 2 * count:
        raise CorruptionError("ids file is shorter than its index")
    lengths = np.frombuffer(data, dtype="<u2", count=count, offset=start).astype(np.int64)
    try:
        return IdTable.from_lengths(data[start + 2 * count :], lengths)
    except ValueError as exc:
        raise CorruptionError(f"ids file: {exc}") from exc


def encode_payloads(payloads: list[bytes]) -> bytes:
    """Label -> payload: a header, the lengths (uint32 each), then the payloads back to back."""
    lengths = np.fromiter((len(b) for b in payloads), dtype="<u4", count=len(payloads))
    return _PAYLOADS_HEADER.pack(_PAYLOADS_MAGIC, len(payloads)) + lengths.tobytes() + b"".join(payloads)


def decode_payloads(data: bytes) -> list[bytes]:
    magic, count = _PAYLOADS_HEADER.unpack_from(data)
    if magic != _PAYLOADS_MAGIC:
        raise CorruptionError("payloads file has a bad header")
    start = _PAYLOADS_HEADER.size
    lengths = np.frombuffer(data, dtype="<u4", count=count, offset=start).astype(np.int64)
    ends = np.cumsum(lengths) + start + 4 * count
    if (ends[-1] if count else start) != len(data):
        raise CorruptionError("payloads file length does not match its index")
    starts = ends - lengths
    return [data[s:e] for s, e in zip(starts.tolist(), ends.tolist(), strict=True)]


def encode_versions(versions: npt.NDArray[np.int64]) -> bytes:
    """Label -> version: a header, then one little-endian int64 per label."""
    return _PAYLOADS_HEADER.pack(_VERSIONS_MAGIC, len(versions)) + versions.astype("<i8").tobytes()


def decode_versions(data: bytes) -> npt.NDArray[np.int64]:
    magic, count = _PAYLOADS_HEADER.unpack_from(data)
    if magic != _VERSIONS_MAGIC:
        raise CorruptionError("versions file has a bad header")
    if len(data) != _PAYLOADS_HEADER.size + 8 * count:
        raise CorruptionError("versions file length does not match its count")
    return np.frombuffer(data, dtype="<i8", count=count, offset=_PAYLOADS_HEADER.size).astype(np.int64)


def _manifest_checksum(body: dict[str, object]) -> int:
    return crc32c(json.dumps(body, sort_keys=True, separators=(",", ":")).encode())


def write_snapshot(root: Path, spec: CollectionSpec, graph: Graph) -> SnapshotInfo:
    """Writes ``graph`` as the snapshot for ``graph.applied_seq``; durable when it returns.

    RuntimeError, writing nothing, when ``graph``'s index holds more elements than the graph (a
    fold that shared the index failed part way: the next fold rebuilds it). Labels the graph no
    longer holds (id "") may be left unmarked in the index file: loading marks them deleted."""
    if graph.index.element_count != graph.elements:
        raise RuntimeError(
            f"snapshot at seq {graph.applied_seq}: the index holds {graph.index.element_count} elements, "
            f"the graph {graph.elements} (a failed fold added to it); the next fold rebuilds it"
        )
    root.mkdir(parents=True, exist_ok=True)
    final = root / snapshot_name(graph.applied_seq)
    tmp = root / f".tmp-{snapshot_name(graph.applied_seq)}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    graph.index.save_index(str(tmp / GRAPH_FILE))
    (tmp / IDS_FILE).write_bytes(encode_ids(graph.ids))
    names = [GRAPH_FILE, IDS_FILE]
    if any(graph.label_payloads):
        (tmp / PAYLOADS_FILE).write_bytes(encode_payloads(graph.label_payloads))
        names.append(PAYLOADS_FILE)
    (tmp / VERSIONS_FILE).write_bytes(encode_versions(graph.label_seq))
    names.append(VERSIONS_FILE)
    rows_path = graph.full_rows_path
    if rows_path is not None:
        if rows_path.name.startswith(".tmp-"):  # the fold's private file: moved, not copied
            os.replace(rows_path, tmp / ROWS_FILE)
        else:
            shutil.copyfile(rows_path, tmp / ROWS_FILE)
        names.append(ROWS_FILE)
    files = {}
    for name in names:
        path = tmp / name
        fsync_file(path)
        files[name] = {"size": path.stat().st_size, "crc32c": _file_crc(path)}
    body: dict[str, object] = {
        "format": FORMAT,
        "applied_seq": graph.applied_seq,
        "spec": json.loads(spec.to_json()),
        "elements": graph.elements,
        "live": graph.live,
        "files": files,
    }
    if graph.quantizer is not None:
        body["quantizer"] = graph.quantizer.to_json()
    manifest = dict(body, checksum=_manifest_checksum(body))
    with open(tmp / MANIFEST, "w") as handle:
        json.dump(manifest, handle, sort_keys=True, indent=1)
        handle.flush()
        os.fsync(handle.fileno())
    fsync_dir(tmp)
    if final.exists():  # an earlier attempt at the same seq (e.g. a compaction that found no work)
        shutil.rmtree(final)
    os.rename(tmp, final)
    fsync_dir(root)
    if rows_path is not None:
        graph.full_rows_path = final / ROWS_FILE  # the same file (its open reader stays valid)
    return SnapshotInfo(final, graph.applied_seq)


def list_snapshots(root: Path) -> list[SnapshotInfo]:
    """Snapshot directories, newest first (not verified)."""
    if not root.exists():
        return []
    found = []
    for path in root.iterdir():
        if path.name.startswith(".tmp-"):  # a crash mid-write (a snapshot or a fold's rows file)
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            continue
        if path.name.startswith(_PREFIX) and path.is_dir():
            try:
                found.append(SnapshotInfo(path, int(path.name[len(_PREFIX) :])))
            except ValueError:
                continue
    return sorted(found, key=lambda s: s.applied_seq, reverse=True)


def verify(info: SnapshotInfo, spec: CollectionSpec) -> dict[str, object]:
    """Returns the manifest if every check passes, else raises CorruptionError."""
    try:
        manifest = json.loads((info.path / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise CorruptionError(f"snapshot {info.path}: unreadable manifest ({exc})") from exc
    if not isinstance(manifest, dict) or "checksum" not in manifest:
        raise CorruptionError(f"snapshot {info.path}: manifest has no checksum")
    checksum = manifest.pop("checksum")
    if checksum != _manifest_checksum(manifest):
        raise CorruptionError(f"snapshot {info.path}: manifest checksum mismatch")
    if manifest.get("format") != FORMAT:
        raise CorruptionError(f"snapshot {info.path}: unsupported format {manifest.get('format')}")
    if manifest.get("applied_seq") != info.applied_seq:
        raise CorruptionError(f"snapshot {info.path}: manifest seq does not match its name")
    if CollectionSpec.from_json(json.dumps(manifest["spec"])) != spec:
        raise CorruptionError(f"snapshot {info.path}: written for a different collection spec")
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise CorruptionError(f"snapshot {info.path}: manifest lists no files")
    for name in (GRAPH_FILE, IDS_FILE, *(n for n in files if n not in (GRAPH_FILE, IDS_FILE))):
        meta = files.get(name)
        path = info.path / name
        if not isinstance(meta, dict) or not path.exists():
            raise CorruptionError(f"snapshot {info.path}: {name} is missing")
        if path.stat().st_size != meta["size"] or _file_crc(path) != meta["crc32c"]:
            raise CorruptionError(f"snapshot {info.path}: {name} fails its checksum")
    return manifest


def load_index(info: SnapshotInfo, spec: CollectionSpec, extra_capacity: int = 0) -> HnswIndex:
    """The verified snapshot's hnswlib index alone, private, with room for ``extra_capacity``
    more elements: a compaction's copy of the graph it folds into, which takes the labels' ids,
    payloads and versions from the graph in memory (the same as the snapshot's files) rather
    than a second set of them."""
    manifest = verify(info, spec)
    quantizer = _quantizer(info, spec, manifest)
    index = _load_graph_file(info, spec, int(manifest["elements"]), extra_capacity, quantizer)  # type: ignore[call-overload]
    _mark_unlisted(index, decode_ids((info.path / IDS_FILE).read_bytes()))
    return index


def _mark_unlisted(index: HnswIndex, ids: IdTable) -> None:
    """Marks deleted the labels without an id that the index file left unmarked (a fold that
    shared its index marks superseded labels only once older graphs are gone, and a snapshot
    may be written before that)."""
    lengths, _ = ids.encoded()
    unlisted = np.flatnonzero(lengths == 0).tolist()
    if not unlisted or hnsw.deleted_count(index) == len(unlisted):
        return
    mark_deleted(index, unlisted)


def _quantizer(info: SnapshotInfo, spec: CollectionSpec, manifest: dict[str, object]) -> Int8Quantizer | None:
    """The manifest's int8 quantizer (None for an unquantized spec); CorruptionError if an int8
    snapshot has none or no rows file."""
    if "quantizer" not in manifest:
        if spec.quantization.name != "NONE":
            raise CorruptionError(f"snapshot {info.path}: int8 collection without a quantizer")
        return None
    if ROWS_FILE not in manifest["files"]:  # type: ignore[operator]
        raise CorruptionError(f"snapshot {info.path}: int8 snapshot without {ROWS_FILE}")
    try:
        return Int8Quantizer.from_json(manifest["quantizer"], spec.dimension)
    except (ValueError, TypeError, KeyError) as exc:
        raise CorruptionError(f"snapshot {info.path}: {exc}") from exc


def _load_graph_file(
    info: SnapshotInfo, spec: CollectionSpec, elements: int, extra_capacity: int, quantizer: Int8Quantizer | None
) -> HnswIndex:
    index = uninitialised_index(spec, quantizer)
    index.load_index(str(info.path / GRAPH_FILE), max_elements=max(1, elements + extra_capacity))
    index.set_ef(1)
    if index.element_count != elements:
        raise CorruptionError(f"snapshot {info.path}: graph holds {index.element_count} elements")
    return index


def load(info: SnapshotInfo, spec: CollectionSpec, extra_capacity: int = 0) -> Graph:
    """Loads a verified snapshot into a new, private Graph with room for ``extra_capacity``."""
    manifest = verify(info, spec)
    ids = decode_ids((info.path / IDS_FILE).read_bytes())
    elements = len(ids)
    if elements != manifest["elements"]:
        raise CorruptionError(f"snapshot {info.path}: ids file holds {elements} labels")
    quantizer = _quantizer(info, spec, manifest)
    index = _load_graph_file(info, spec, elements, extra_capacity, quantizer)
    full_rows = None
    if quantizer is not None:
        full_rows = RowsFile(info.path / ROWS_FILE, spec.dimension, elements)
    _mark_unlisted(index, ids)
    payloads: list[bytes] = []
    if PAYLOADS_FILE in manifest["files"]:  # type: ignore[operator]
        payloads = decode_payloads((info.path / PAYLOADS_FILE).read_bytes())
        if len(payloads) != elements:
            raise CorruptionError(f"snapshot {info.path}: payloads file holds {len(payloads)} labels")
    versions = np.zeros(elements, dtype=np.int64)
    if VERSIONS_FILE in manifest["files"]:  # type: ignore[operator]
        versions = decode_versions((info.path / VERSIONS_FILE).read_bytes())
        if len(versions) != elements:
            raise CorruptionError(f"snapshot {info.path}: versions file holds {len(versions)} labels")
    graph = Graph(
        index,
        ids,
        info.applied_seq,
        payloads,
        versions,
        quantizer=quantizer,
        full_rows=full_rows,
        full_rows_path=info.path / ROWS_FILE if quantizer is not None else None,
    )
    graph.attach_file(info.path / GRAPH_FILE)
    return graph


def load_newest(root: Path, spec: CollectionSpec) -> tuple[Graph | None, list[SnapshotInfo]]:
    """Loads the newest snapshot that verifies. Returns (graph or None, the snapshots kept).

    A snapshot that fails verification is logged, renamed aside (``.corrupt-*``) and skipped.
    """
    kept: list[SnapshotInfo] = []
    graph: Graph | None = None
    for info in list_snapshots(root):
        if graph is not None:
            kept.append(info)
            continue
        try:
            graph = load(info, spec)
            kept.append(info)
        except (CorruptionError, RuntimeError, OSError, ValueError, KeyError) as exc:
            log.error("ignoring damaged snapshot %s: %s", info.path, exc)
            info.path.rename(info.path.with_name(f".corrupt-{info.path.name}"))
            fsync_dir(root)
    return graph, kept


def remove(info: SnapshotInfo) -> None:
    shutil.rmtree(info.path, ignore_errors=True)
