"""Public gRPC API server: collections, upsert, search by vector/text/image, admin (next issue)."""
