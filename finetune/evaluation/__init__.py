"""`mgft eval`: held-out metrics (cross-entropy, FAD, chroma similarity), pictures and the HTML report."""
