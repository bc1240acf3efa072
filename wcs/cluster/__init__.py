"""The cluster (docs/cluster.md): nodes and worker processes sharing one Redis stream directory;
the worker supervisor, its private Redis and the workers' placements."""
