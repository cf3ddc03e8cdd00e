"""The MusicGen language model: LightningModule, data, delay pattern, loss, conditions, captions, loading."""
