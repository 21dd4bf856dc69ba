"""Router: consistent-hash ring over shards, parallel fan-out and top-k merge (next issue)."""
