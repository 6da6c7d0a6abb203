"""Integration tests against a real local LLM engine (vLLM's CPU build)."""
