"""Pictures people would rather look at than read: spectrograms and chroma of generated and reference audio.

Used by the training-sample callback (`samples/step_*/`, wandb) and by `mgft eval`'s report. matplotlib only, no
Lightning, so the evaluation and its help stay light to import.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from data_prep.schema import SAMPLE_RATE


def spectrogram_png(wav: np.ndarray, path: Path, title: str) -> Path:
    """Log-magnitude spectrogram of `wav` `[C, N]` (channel mean) at 32 kHz, saved as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = torch.from_numpy(wav.mean(0))
    spec = torch.stft(x, n_fft=1024, hop_length=256, window=torch.hann_window(1024), return_complex=True).abs()
    db = 20 * torch.log10(spec.clamp(min=1e-5))  # [F, frames]
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.imshow(db.numpy(), origin="lower", aspect="auto", cmap="magma", vmin=float(db.max()) - 80,
              extent=(0, x.shape[0] / SAMPLE_RATE, 0, SAMPLE_RATE / 2000))
    ax.set(xlabel="seconds", ylabel="kHz", title=title[:80])
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def chroma_png(chroma: np.ndarray, path: Path, title: str) -> Path:
    """A `[frames, 12]` chroma as a pitch-class picture."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 2.5))
    ax.imshow(chroma.T, origin="lower", aspect="auto", cmap="Greys", interpolation="nearest")
    ax.set_yticks(range(12), ["C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B"], fontsize=6)
    ax.set(xlabel="chroma frame (7.8 Hz)", title=title[:80])
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
