# Types of the compiled extension shard._vsnative (shard/native/vsnative.cpp, built by
# `python -m shard.native.build`). Import it through shard/hnsw.py, which falls back to hnswlib.
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

HNSWLIB_VERSION: str
BUILD_FLAGS: str
SIMD: str
"""hnswlib's distance kernels in this build on this CPU: "avx512", "avx", "sse" or "none"."""

def _acorn_tuning(
    cap: int = 0, min_seen: int = 0, budget: int = 0, sweep_density: float = -1.0, seed_batch: int = 0
) -> None:
    """Benchmarks only: ACORN parameters of later knn_query calls, process-wide (0 / -1: defaults)."""

def _acorn_stats() -> dict[str, int]:
    """Work of the ACORN queries since the last call, summed (reset by the call): queries,
    expansions, distances, lists (two-hop link lists read), seeds (extra entry points)."""

def _force_live_search(on: bool) -> None:
    """Benchmarks only: every later ``knn_query`` takes the search used beside ``add_items``."""

def _live_searches() -> int:
    """Queries answered by the locking search (an ``add_items`` was running) since the last
    call; reset by the call."""

def read_rows(fd: int, labels: npt.ArrayLike, dim: int) -> npt.NDArray[np.float32]:
    """Rows ``labels`` (int64, 1-D) of a file of float32 rows of ``dim`` on ``fd``: one ``pread``
    each, the GIL released; RuntimeError on a negative label, a read error or a short read."""

class Index:
    """hnswlib 0.8.0's HierarchicalNSW; the same file format as ``hnswlib.Index``.

    Every method may be called from any thread at any time. Searches run concurrently with each
    other and with ``add_items`` (one at a time; while it runs, searches lock each link list they
    read and see the nodes inserted before it started), ``mark_deleted`` and ``unmark_deleted``;
    ``resize_index`` and ``load_index`` wait for the calls in flight and hold new ones back;
    ``save_index`` and ``copy_from`` (of the other index) wait for an ``add_items`` in progress.
    """

    num_threads: int
    ef: int
    def __init__(self, space: str, dim: int) -> None: ...
    def init_index(
        self,
        max_elements: int,
        M: int = 16,
        ef_construction: int = 200,
        random_seed: int = 100,
        allow_replace_deleted: bool = False,
    ) -> None: ...
    def load_index(self, path_to_index: str, max_elements: int = 0, allow_replace_deleted: bool = False) -> None: ...
    def save_index(self, path_to_index: str) -> None: ...
    def copy_from(self, other: Index, max_elements: int = 0) -> None:
        """Makes this uninitialised index an independent copy of ``other`` (same space, dim and
        int8 parameters) with room for ``max_elements``, as if saved and loaded back."""
    def set_int8(self, lo: npt.ArrayLike, scale: float) -> None:
        """int8 codes (``dim + 4`` bytes a vector) with per-dimension offsets ``lo`` (float32
        [dim]) and ``scale`` > 0 (ValueError otherwise); before init_index/load_index only
        (RuntimeError after)."""
    @property
    def int8(self) -> bool: ...
    def add_items(
        self,
        data: npt.ArrayLike,
        ids: npt.ArrayLike | None = None,
        num_threads: int = -1,
        replace_deleted: bool = False,
    ) -> None: ...
    def mark_deleted(self, label: int) -> None: ...
    def unmark_deleted(self, label: int) -> None: ...
    def resize_index(self, new_size: int) -> None: ...
    def set_ef(self, ef: int) -> None: ...
    def get_items(self, ids: npt.ArrayLike | None = None, return_type: str = "numpy") -> npt.NDArray[np.float32]: ...
    def get_ids_list(self) -> list[int]: ...
    def gather(self, labels: npt.ArrayLike) -> npt.NDArray[np.float32]:
        """Stored vectors of live labels (int64), a memcpy from the level-0 block; RuntimeError
        for an absent or deleted label."""
    def knn_query(
        self,
        data: npt.ArrayLike,
        k: int = 1,
        num_threads: int = -1,
        filter: Callable[[int], bool] | None = None,
        allowed: npt.NDArray[np.bool_] | npt.NDArray[np.uint8] | None = None,
        strategy: str = "sweep",
        limit: int = ...,
    ) -> tuple[npt.NDArray[np.uint64] | npt.NDArray[np.int64], npt.NDArray[np.float32]]:
        """strategy "sweep" (hnswlib's filtered traversal) or "acorn" (ACORN-1; needs allowed;
        sweeps while an add_items runs). Only labels below ``limit`` are returned (default: all)."""
    def exact_query(
        self, data: npt.ArrayLike, labels: npt.ArrayLike, k: int = 1, num_threads: int = -1
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]: ...
    def get_max_elements(self) -> int: ...
    def get_current_count(self) -> int: ...
    def index_file_size(self) -> int: ...
    @property
    def space(self) -> str: ...
    @property
    def dim(self) -> int: ...
    @property
    def max_elements(self) -> int: ...
    @property
    def element_count(self) -> int: ...
    @property
    def deleted_count(self) -> int: ...
    @property
    def ef_construction(self) -> int: ...
    @property
    def M(self) -> int: ...
