"""Collection specification (name, dimension, metric, HNSW parameters, quantization) and its validation."""

from __future__ import annotations

import enum
import json
import re
from dataclasses import asdict, dataclass

from core.errors import InvalidArgument
from core.limits import MAX_BATCH_ITEMS
from core.text import quote

MAX_DIMENSION = 16384
MAX_K = 10_000
MAX_EF = 10_000
MAX_GET_IDS = MAX_BATCH_ITEMS
DEFAULT_M = 16
DEFAULT_EF_CONSTRUCTION = 200
DEFAULT_EF_SEARCH = 64

_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


class Metric(enum.Enum):
    """Distance functions; the values match the protobuf enum numbers."""

    COSINE = 1
    INNER_PRODUCT = 2
    L2 = 3

    @property
    def hnsw_space(self) -> str:
        # Cosine vectors are normalised by us, so hnswlib's inner-product space is exact for them.
        return "l2" if self is Metric.L2 else "ip"


class Quantization(enum.Enum):
    """How the graph stores vectors; the values match the protobuf enum numbers (0, unspecified,
    reads as NONE). INT8: one byte per dimension in memory, full-precision rows on disk that
    re-score the graph's best candidates (docs/quantization.md)."""

    NONE = 1
    INT8 = 2


@dataclass(frozen=True)
class CollectionSpec:
    name: str
    dimension: int
    metric: Metric
    m: int = DEFAULT_M
    ef_construction: int = DEFAULT_EF_CONSTRUCTION
    ef_search: int = DEFAULT_EF_SEARCH
    quantization: Quantization = Quantization.NONE

    def to_json(self) -> str:
        """Canonical JSON; ``quantization`` is left out when NONE, so the spec files and snapshot
        manifests of unquantized collections stay what older releases wrote and read."""
        data = asdict(self)
        data["metric"] = self.metric.name
        if self.quantization is Quantization.NONE:
            del data["quantization"]
        else:
            data["quantization"] = self.quantization.name
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> CollectionSpec:
        data = json.loads(text)
        data["metric"] = Metric[data["metric"]]
        data["quantization"] = Quantization[data.get("quantization", "NONE")]
        return cls(**data)


def validate_name(name: str) -> str:
    if not _NAME_RE.fullmatch(name):
        raise InvalidArgument(
            f"invalid collection name {quote(name)}: "
            "1..128 characters from [A-Za-z0-9_.-], not starting with '.' or '-'"
        )
    return name


def make_spec(
    name: str,
    dimension: int,
    metric_number: int,
    m: int = 0,
    ef_construction: int = 0,
    ef_search: int = 0,
    quantization_number: int = 0,
) -> CollectionSpec:
    """Validates raw request fields and fills defaults (0 means default; quantization 0 is NONE).
    Every metric can be quantized; an unknown quantization number is InvalidArgument."""
    validate_name(name)
    if not 1 <= dimension <= MAX_DIMENSION:
        raise InvalidArgument(f"dimension must be in 1..{MAX_DIMENSION}, got {dimension}")
    try:
        metric = Metric(metric_number)
    except ValueError:
        raise InvalidArgument("metric must be METRIC_COSINE, METRIC_INNER_PRODUCT or METRIC_L2") from None
    m = m or DEFAULT_M
    ef_construction = ef_construction or DEFAULT_EF_CONSTRUCTION
    ef_search = ef_search or DEFAULT_EF_SEARCH
    if not 2 <= m <= 128:
        raise InvalidArgument(f"hnsw.m must be in 2..128, got {m}")
    if not 8 <= ef_construction <= 4096 or ef_construction < m:
        raise InvalidArgument(f"hnsw.ef_construction must be in 8..4096 and >= m, got {ef_construction}")
    if not 1 <= ef_search <= MAX_EF:
        raise InvalidArgument(f"hnsw.ef_search must be in 1..{MAX_EF}, got {ef_search}")
    try:
        quantization = Quantization(quantization_number or Quantization.NONE.value)
    except ValueError:
        raise InvalidArgument(
            f"quantization must be QUANTIZATION_NONE or QUANTIZATION_INT8, got {quantization_number}"
        ) from None
    return CollectionSpec(name, dimension, metric, m, ef_construction, ef_search, quantization)
