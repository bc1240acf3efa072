"""The cluster (docs/cluster.md): nodes and worker processes sharing one Redis stream directory."""
