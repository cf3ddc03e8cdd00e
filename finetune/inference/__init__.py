"""Generation: the one audiocraft-style sampler (used by `mgft generate`, `mgft eval` and training samples)."""
