"""Shard server: one process owning HNSW graphs, write-ahead logs and delta layers."""
