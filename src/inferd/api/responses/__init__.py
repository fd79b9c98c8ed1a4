"""OpenAI's Responses API, translated to the chat path every engine serves."""
