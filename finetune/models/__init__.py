"""Model loading, tiny random-init presets and (later) the multi-band diffusion decoder."""
