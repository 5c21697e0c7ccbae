"""The load generator and the peers: see bench/README.md."""
