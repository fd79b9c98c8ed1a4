"""Model runtime: each launched model runs in its own OS process, supervised by the server."""
