"""Multi-band diffusion: the MBD decoder (tokens -> waveform), its file layout, and training it one band at a time."""
