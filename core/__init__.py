"""Code shared by shard, router and server: domain errors, the status map, specs, vectors."""
