"""Support shared by the tests and the benchmarks: seeded synthetic data, the exact top-k and
recall@k, and helpers that run real shard / server processes and talk to them over the wire.

Nothing in the product imports this package. Only ``datasets`` and ``truth`` are numpy-only (the
benchmark's peers virtualenv imports them); the process helpers need the project and its stubs.
"""
