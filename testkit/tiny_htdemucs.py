"""`python -m testkit.tiny_htdemucs [--out PATH] [--seed 0]`: train the tiny HTDemucs tests and the demo use.

A random-init HTDemucs separates nothing: its "vocals + other" output has no pitch left in it, so the melody
chroma of every segment is the same pitch class in every frame, and every melody test and the demo's chroma metric
compare constants. This module trains the tiny architecture (`tiny_configs.htdemucs_kwargs("tiny")`, 0.1M parameters) on
the synthesized catalog, whose instruments are rendered as separate stems: drums -> drums, bass -> bass,
pad -> other, lead -> vocals (the synthesized music has no singing; the lead carries the melody, as vocals do in
the music audiocraft's melody conditioner was built for). The loss is demucs' own: L1 between the estimated and the
true source waveforms. A few hundred steps do not make a good separator, but enough that the melody stems keep the
melody and drop the drums and bass, which is what the chroma needs (see `separation_quality`).

The result (`tiny-htdemucs.safetensors` beside this file, about 0.5 MB) is committed; `mgft tiny-models` packs it in
demucs' own file layout. How it is trained and measured, with the figures: `docs/tiny-models.md`.
"""

from __future__ import annotations

import dataclasses
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from testkit.assets import asset_arguments, pin_threads, write_asset
from testkit.tiny_configs import htdemucs_kwargs

DEMUCS_RATE = 44_100
ASSET = Path(__file__).with_name("tiny-htdemucs.safetensors")
"""The committed tiny separator: the state dict of `HTDemucs(**tiny_configs.htdemucs_kwargs("tiny"))` after training."""

TRAIN_CATALOG = {"tracks": 24, "seconds": 12.0, "seed": 1234}
HELDOUT_CATALOG = {"tracks": 6, "seconds": 8.0, "seed": 4321}
SYNTH_TO_DEMUCS = {"drums": "drums", "bass": "bass", "pad": "other", "lead": "vocals"}
"""Which synthesized stem trains which of htdemucs' sources."""


def synth_stems(tracks: int, seconds: float, seed: int, sources: list[str]) -> list[np.ndarray]:
    """Render a synthesized catalog at 44.1 kHz stereo as separated sources.

    Args:
        tracks: number of tracks to draw.
        seconds: mean track length.
        seed: catalog seed (`testkit.synth.plan_catalog`).
        sources: the demucs source order (e.g. `["drums", "bass", "other", "vocals"]`).

    Returns:
        float32 arrays `[S, 2, N]` per track; their sum over S is the mix, peak-normalized as `render_track` does.
    """
    from testkit import synth

    out = []
    for spec in synth.plan_catalog(tracks, seconds, seed):
        spec = dataclasses.replace(spec, sample_rate=DEMUCS_RATE, frames=round(spec.duration * DEMUCS_RATE), channels=2)
        stems = synth.render_stems(spec)  # {name: [N, 2]}, drums missing when the track has none
        n = spec.frames
        stacked = np.zeros((len(sources), 2, n), np.float32)
        for name, stem in stems.items():
            stacked[sources.index(SYNTH_TO_DEMUCS[name])] = stem.T
        peak = np.abs(stacked.sum(0)).max()
        out.append(stacked * (10 ** (synth.PEAK_DBFS / 20) / max(peak, 1e-9)))
    return out


def random_crops(tracks: list[np.ndarray], count: int, samples: int, rng: np.random.Generator) -> torch.Tensor:
    """`count` random crops of the sources: `[count, S, 2, samples]`, each with a random gain (demucs' remix)."""
    out = np.zeros((count, *tracks[0].shape[:2], samples), np.float32)
    for i in range(count):
        track = tracks[int(rng.integers(len(tracks)))]
        start = int(rng.integers(0, max(1, track.shape[-1] - samples)))
        crop = track[..., start : start + samples]
        out[i, ..., : crop.shape[-1]] = crop * rng.uniform(0.25, 1.25)
    return torch.from_numpy(out)


@torch.no_grad()
def separation_quality(model: torch.nn.Module, tracks: list[np.ndarray]) -> dict[str, float]:
    """How much melody the separator's melody stems (vocals + other) keep, on held-out tracks.

    The chroma extractor is the one prep uses (argmax per frame). `melody_agreement` is the fraction of frames whose
    pitch class from the estimated melody stems equals that of the true lead + pad; chance is about 1/12, and a
    separator whose output has no pitch content gives the same class everywhere. `distinct_classes` counts the
    pitch classes the estimated melody chroma uses.
    """
    import julius

    from data_prep.chroma import ChromaExtractor
    from data_prep.schema import SAMPLE_RATE
    from data_prep.stems import melody_stems, stem_indices

    extractor = ChromaExtractor()
    indices = stem_indices(model.sources)
    agree, total, classes = 0, 0, set()
    for track in tracks:
        mix = torch.from_numpy(track.sum(0))[None]  # [1, 2, N] at 44.1 kHz
        mix32 = julius.resample_frac(mix, DEMUCS_RATE, SAMPLE_RATE)
        truth32 = julius.resample_frac(torch.from_numpy(track[indices].sum(0)).mean(0)[None], DEMUCS_RATE, SAMPLE_RATE)
        estimate = melody_stems(model, mix32)  # [1, N32] mono 32 kHz, through apply_model as prep runs it
        n = min(estimate.shape[-1], truth32.shape[-1])
        est = extractor(estimate[:, None, :n]).argmax(-1)  # [1, F]
        ref = extractor(truth32[:, None, :n]).argmax(-1)
        agree += int((est == ref).sum())
        total += est.numel()
        classes |= set(est.flatten().tolist())
    return {"melody_agreement": agree / total, "distinct_classes": float(len(classes))}


def train_tiny_htdemucs(steps: int = 400, batch_size: int = 4, crop_seconds: float = 2.0, lr: float = 3e-3,
                        seed: int = 0, log_every: int = 50, catalog: dict[str, float] | None = None):
    """Train the tiny HTDemucs with demucs' L1 waveform loss on synthesized stems.

    Args:
        steps: optimizer steps.
        batch_size: crops per step.
        crop_seconds: crop length (the model's `segment` is restored to the released 7.8 s afterwards).
        lr: Adam learning rate.
        seed: seeds the initialization and the crops.
        log_every: print the loss every this many steps (0: silent).
        catalog: `synth_stems` arguments of the training audio (default `TRAIN_CATALOG`).

    Returns:
        The trained `demucs.htdemucs.HTDemucs` in eval mode.
    """
    from demucs.htdemucs import HTDemucs

    kwargs = htdemucs_kwargs("tiny")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    tracks = synth_stems(**(catalog or TRAIN_CATALOG), sources=kwargs["sources"])
    model = HTDemucs(**kwargs).train()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    samples = round(crop_seconds * DEMUCS_RATE)
    started = time.time()
    for step in range(steps):
        sources = random_crops(tracks, batch_size, samples, rng)  # [B, S, 2, N]
        estimate = model(sources.sum(1))  # [B, S, 2, N]
        loss = (estimate - sources).abs().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if log_every and (step % log_every == 0 or step == steps - 1):
            print(f"  step {step:5d}  L1 {loss.item():.4f}  {time.time() - started:6.1f} s", flush=True)
    model.segment = Fraction(kwargs["segment"])  # training mode overwrote it with the crop length
    return model.eval().requires_grad_(False)


def main(argv: list[str] | None = None) -> None:
    """Train the tiny HTDemucs, print its separation quality on held-out synthesized tracks, write the file."""
    parser = asset_arguments(__doc__.splitlines()[0], ASSET, int(TRAIN_CATALOG["tracks"]))
    parser.add_argument("--steps", type=int, default=400)
    args = parser.parse_args(argv)
    started = pin_threads()
    model = train_tiny_htdemucs(args.steps, seed=args.seed, catalog={**TRAIN_CATALOG, "tracks": args.train_tracks})
    quality = separation_quality(model, synth_stems(**HELDOUT_CATALOG, sources=list(model.sources)))
    write_asset(model, args.out, "tiny htdemucs", started, quality)


if __name__ == "__main__":
    main()
