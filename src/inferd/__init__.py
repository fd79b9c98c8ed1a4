"""inferd: serve open models on your own machines behind an OpenAI-compatible API."""

__version__ = "0.1.0"
