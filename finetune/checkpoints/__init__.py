"""Checkpoint files: atomic writes, safe loading, audiocraft's and transformers' formats, export."""
