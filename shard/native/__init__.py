"""Sources of the compiled extension ``shard._vsnative`` and its builder (``python -m shard.native.build``).

``vsnative.cpp`` is ours; hnswlib's headers are not in the repository: the builder takes them from
the hnswlib 0.8.0 sdist (sha256-pinned) at build time. ``shard/hnsw.py`` is what the shard imports.
"""
