"""The HTTP API: OpenAI-compatible endpoints and Xinference-compatible management."""
