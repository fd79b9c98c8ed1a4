"""Anthropic's Messages API, translated to the chat path every engine serves."""
