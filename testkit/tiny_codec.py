"""`python -m testkit.tiny_codec [--out PATH] [--seed 0]`: train the tiny EnCodec that tests and the demo use.

A random-init transformers `EncodecModel` is useless as a tokenizer: its RVQ codebooks are registered as zero
buffers, so every latent's nearest code is code 0 and every shard, LM test and generation sees a constant. This
module gives the tiny codec what EnCodec gets from training, in three seeded phases on synthesized music (the same
procedural catalog `mgft synth-catalog` writes, rendered at 32 kHz, each channel a mono item as the mono codec sees
it):

1. autoencoder: encoder and decoder trained on reconstruction (`ReconstructionLoss`: EnCodec's time-domain L1 and
   multi-scale mel terms, without its GAN, plus spectral terms that keep the pitch), latents not yet quantized;
2. codebooks: residual k-means over the trained encoder's latents, as EnCodec initializes its codebooks (level 0 on
   the latents, level q on what levels 0..q-1 leave), with 2048 codes per level;
3. decoder: the decoder alone is fine-tuned on the quantized latents, so decode(encode(x)) resembles x.

The result (`tiny-encodec-32khz.safetensors` beside this file, 1.8 MB) is committed: `mgft tiny-models` loads it in
milliseconds instead of training for minutes, and the same seed on the same torch build rewrites the same file.
`kmeans_codebooks` also initializes the codebooks of `--size real` (random encoder, k-means over its latents), so
benchmarks time an RVQ whose codes spread like a trained one's. How the codec is trained and measured, with the
figures: `docs/tiny-models.md`.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from testkit.assets import asset_arguments, pin_threads, write_asset
from testkit.tiny_configs import encodec_config

if TYPE_CHECKING:
    from transformers import EncodecModel

SAMPLE_RATE = 32_000
ASSET = Path(__file__).with_name("tiny-encodec-32khz.safetensors")
"""The committed tiny codec: the state dict of `EncodecModel(encodec_config("tiny"))` after `train_tiny_codec()`."""

# Training catalogs: the codec learns on one synthesized catalog and is measured on another (a different seed draws
# other keys, tempi, instruments and melodies).
TRAIN_CATALOG = {"tracks": 24, "seconds": 12.0, "seed": 1234}
HELDOUT_CATALOG = {"tracks": 6, "seconds": 8.0, "seed": 4321}
MEL_SCALES = (256, 512, 1024, 2048)  # n_fft of the multi-scale mel loss (hop n_fft // 4, 64 mel bands each)
SPECTRAL_SCALES = (16384, 4096, 1024, 256)  # n_fft of the spectral-convergence terms (16384: the chroma's STFT)


def synth_audio(tracks: int, seconds: float, seed: int) -> list[np.ndarray]:
    """Render a synthesized catalog at 32 kHz as mono items (each stereo track gives its left and right channel).

    Args:
        tracks: number of tracks to draw.
        seconds: mean track length.
        seed: catalog seed (`testkit.synth.plan_catalog`).

    Returns:
        float32 arrays `[N]`, two per track.
    """
    from testkit import synth

    items = []
    for spec in synth.plan_catalog(tracks, seconds, seed):
        spec = dataclasses.replace(spec, sample_rate=SAMPLE_RATE, frames=round(spec.duration * SAMPLE_RATE), channels=2)
        stereo = synth.render_track(spec)  # [N, 2]
        items += [np.ascontiguousarray(stereo[:, 0]), np.ascontiguousarray(stereo[:, 1])]
    return items


def random_crops(items: list[np.ndarray], count: int, samples: int, rng: np.random.Generator) -> torch.Tensor:
    """Draw `count` crops of `samples` samples from random items at random offsets: `[count, 1, samples]`."""
    out = np.zeros((count, 1, samples), np.float32)
    for i in range(count):
        item = items[int(rng.integers(len(items)))]
        start = int(rng.integers(0, max(1, len(item) - samples)))
        crop = item[start : start + samples]
        out[i, 0, : len(crop)] = crop
    return torch.from_numpy(out)


class MultiScaleMelLoss(torch.nn.Module):
    """L1 between mel magnitudes plus L1 between their logs, summed over several STFT sizes (EnCodec's `l_f`).

    The mel filters are transformers' `mel_filter_bank` (slaney), so no torchaudio is needed.
    """

    def __init__(self, scales: tuple[int, ...] = MEL_SCALES, n_mels: int = 64, sample_rate: int = SAMPLE_RATE):
        super().__init__()
        from transformers.audio_utils import mel_filter_bank

        self.scales = scales
        for n_fft in scales:
            # Small FFTs have fewer bins than mel bands; cap the band count so no filter is all zero.
            bands = min(n_mels, n_fft // 8)
            filters = mel_filter_bank(n_fft // 2 + 1, bands, 0.0, sample_rate / 2, sample_rate, "slaney", "slaney")
            self.register_buffer(f"mel_{n_fft}", torch.tensor(filters, dtype=torch.float32), persistent=False)
            self.register_buffer(f"window_{n_fft}", torch.hann_window(n_fft), persistent=False)

    def mel(self, wav: torch.Tensor, n_fft: int) -> torch.Tensor:
        """Mel magnitudes `[B, frames, bands]` of mono audio `[B, 1, N]`."""
        spec = torch.stft(wav.squeeze(1), n_fft, n_fft // 4, window=getattr(self, f"window_{n_fft}"),
                          return_complex=True).abs()  # [B, bins, frames]
        return spec.transpose(1, 2) @ getattr(self, f"mel_{n_fft}")

    def forward(self, target: torch.Tensor, estimate: torch.Tensor) -> torch.Tensor:
        """The loss (a scalar) between mono audio `target` and `estimate` `[B, 1, N]`, summed over the STFT sizes."""
        loss = target.new_zeros(())
        for n_fft in self.scales:
            a, b = self.mel(target, n_fft), self.mel(estimate, n_fft)
            loss = loss + (a - b).abs().mean() + ((a + 1e-5).log() - (b + 1e-5).log()).abs().mean()
        return loss


class ReconstructionLoss(torch.nn.Module):
    """What the tiny codec is trained on: EnCodec's non-adversarial terms plus three that keep the pitch.

    `0.1 * L1(time) + multi-scale mel` is EnCodec's reconstruction objective (without its GAN). A codec this small
    trained on it alone for minutes learns loudness and onsets but not pitch: its output is dominated by hum at
    multiples of the 50 Hz frame rate, so the chroma of decode(encode(x)) is one pitch class everywhere and every
    melody metric downstream compares constants. So the loss adds the spectral convergence of linear STFT
    magnitudes (n_fft 16384, 4096, 1024, 256; it weighs strong spurious partials, which log spectra forgive), L1
    between log magnitudes at n_fft 4096, and L1 between the normalized chromas of target and estimate, computed by
    prep's own melody extractor (`data_prep.chroma.ChromaExtractor`, n_fft 16384).
    """

    def __init__(self, chroma_weight: float = 2.0) -> None:
        super().__init__()
        from data_prep.chroma import ChromaExtractor

        self.mel = MultiScaleMelLoss()
        self.chroma = ChromaExtractor(argmax=False)
        self.chroma_weight = chroma_weight
        for n_fft in SPECTRAL_SCALES:
            self.register_buffer(f"window_{n_fft}", torch.hann_window(n_fft), persistent=False)

    def _magnitude(self, wav: torch.Tensor, n_fft: int) -> torch.Tensor:
        window = getattr(self, f"window_{n_fft}")
        return torch.stft(wav.squeeze(1), n_fft, n_fft // 4, window=window, return_complex=True).abs()

    def forward(self, target: torch.Tensor, estimate: torch.Tensor) -> torch.Tensor:
        """Scalar loss for mono audio `[B, 1, N]`."""
        loss = 0.1 * (target - estimate).abs().mean() + self.mel(target, estimate)
        for n_fft in SPECTRAL_SCALES:
            a, b = self._magnitude(target, n_fft), self._magnitude(estimate, n_fft)
            loss = loss + (a - b).norm() / (a.norm() + 1e-7)
            if n_fft == 4096:
                loss = loss + ((a + 1e-5).log() - (b + 1e-5).log()).abs().mean()
        chroma = (self.chroma.raw_chroma(target) - self.chroma.raw_chroma(estimate)).abs().mean()
        return loss + self.chroma_weight * chroma


def kmeans(points: torch.Tensor, k: int, iters: int, generator: torch.Generator, chunk: int = 8192) -> torch.Tensor:
    """Lloyd's k-means with centroids seeded from random points; an emptied cluster takes a random point.

    Args:
        points: `[N, D]` float32.
        k: number of centroids.
        iters: Lloyd iterations.
        generator: seeds the initial choice and the refills, so the result is a function of the seed.
        chunk: rows of the distance matrix computed at once (bounds memory at chunk * k floats).

    Returns:
        Centroids `[k, D]`.
    """
    n = points.shape[0]
    centroids = points[torch.randperm(n, generator=generator)[:k]].clone()
    if n < k:  # fewer points than codes: the rest start as jittered copies
        extra = points[torch.randint(n, (k - n,), generator=generator)]
        centroids = torch.cat([centroids, extra + 1e-3 * torch.randn(extra.shape, generator=generator)])
    for _ in range(iters):
        assign = nearest(points, centroids, chunk)  # [N]
        sums = torch.zeros_like(centroids).index_add_(0, assign, points)
        counts = torch.bincount(assign, minlength=k).to(points.dtype)
        empty = counts == 0
        centroids = torch.where(empty[:, None], centroids, sums / counts.clamp(min=1)[:, None])
        if empty.any():
            centroids[empty] = points[torch.randint(n, (int(empty.sum()),), generator=generator)]
    return centroids


def nearest(points: torch.Tensor, centroids: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
    """Index of the nearest centroid for each point `[N, D]` -> `[N]`, by squared Euclidean distance."""
    out = []
    c2 = centroids.pow(2).sum(1)  # [k]
    for start in range(0, points.shape[0], chunk):
        p = points[start : start + chunk]
        out.append((c2[None, :] - 2 * p @ centroids.T).argmin(dim=1))  # |p|^2 is the same for every centroid
    return torch.cat(out)


@torch.no_grad()
def encoder_latents(model: EncodecModel, items: list[np.ndarray], max_frames: int | None = None) -> torch.Tensor:
    """The encoder's latent frames of whole items, stacked: `[frames, codebook_dim]`.

    Args:
        model: an EnCodec model.
        items: mono float32 audio arrays.
        max_frames: stop once this many frames are gathered (bounds the time of real-size encoders).
    """
    frames = []
    total = 0
    for item in items:
        z = model.encoder(torch.from_numpy(item)[None, None])  # [1, D, T]
        frames.append(z[0].T)
        total += z.shape[-1]
        if max_frames is not None and total >= max_frames:
            break
    latents = torch.cat(frames)
    return latents[:max_frames] if max_frames is not None else latents


@torch.no_grad()
def kmeans_codebooks(model: EncodecModel, latents: torch.Tensor, iters: int = 20, seed: int = 0) -> None:
    """Set every RVQ level's codebook by k-means over the residual that the levels before it leave.

    This is how EnCodec starts its codebooks (audiocraft's `EuclideanCodebook` runs k-means on the first batch);
    the buffers `embed`, `embed_avg`, `cluster_size` and `inited` are written as a trained model stores them.

    Args:
        model: a transformers `EncodecModel`; its quantizer is changed in place.
        latents: encoder output frames `[N, codebook_dim]`.
        iters: Lloyd iterations per level.
        seed: seeds the k-means.
    """
    size = model.config.codebook_size
    if latents.shape[0] < 2 * size:
        # With fewer points than codes level 0 reproduces every point exactly and the deeper levels get nothing.
        raise ValueError(f"k-means of {size} codes per level needs at least {2 * size} latent frames, got "
                         f"{latents.shape[0]}: encode more audio")
    generator = torch.Generator().manual_seed(seed)
    residual = latents.float()
    for layer in model.quantizer.layers:
        codebook = layer.codebook
        centroids = kmeans(residual, codebook.codebook_size, iters, generator)
        assign = nearest(residual, centroids)
        counts = torch.bincount(assign, minlength=codebook.codebook_size).float()
        codebook.embed.copy_(centroids)
        codebook.embed_avg.copy_(centroids * counts[:, None])
        codebook.cluster_size.copy_(counts)
        codebook.inited.fill_(1.0)
        residual = residual - centroids[assign]


def log_mel_correlation(reference: torch.Tensor, estimate: torch.Tensor, n_fft: int = 1024) -> float:
    """Correlation between the log-mel spectrograms of two mono signals `[N]`, each band's mean over time removed.

    Removing the per-band means makes the score measure what changes over time (notes, onsets, drum hits): a decoder
    that ignores its codes and always outputs the catalog's average spectrum scores about 0, not the 0.8 a plain
    spectrogram correlation gives it.

    Args:
        reference: the original audio.
        estimate: audio of the same length (e.g. decode(encode(reference))).
        n_fft: STFT size (hop n_fft // 4, 64 mel bands).

    Returns:
        A Pearson correlation in [-1, 1]; 1 means the same time-frequency pattern.
    """
    mel = MultiScaleMelLoss(scales=(n_fft,))
    a = (mel.mel(reference[None, None].float(), n_fft)[0] + 1e-5).log()  # [frames, bands]
    b = (mel.mel(estimate[None, None].float(), n_fft)[0] + 1e-5).log()
    a, b = a - a.mean(0, keepdim=True), b - b.mean(0, keepdim=True)
    return float((a * b).sum() / (a.norm() * b.norm() + 1e-12))


@torch.no_grad()
def codec_quality(model: EncodecModel, items: list[np.ndarray], seed: int = 0) -> dict[str, float]:
    """How much the codec's codes say about the audio, on held-out items.

    Returns:
        `reconstruction`: mean `log_mel_correlation` between x and decode(encode(x)); `random_codes`: the same for
        decode(codes drawn uniformly at random); `chroma_agreement`: the fraction of chroma frames (prep's melody
        extractor, argmax) whose pitch class is the same in x and decode(encode(x)), `chroma_random_codes` the same
        for random codes (chance is about 1/12); `distinct_codes_min`: the fewest distinct codes any codebook used;
        `entropy_q0_bits`: the entropy of codebook 0's code histogram.
    """
    from data_prep.chroma import ChromaExtractor

    extractor = ChromaExtractor()
    generator = torch.Generator().manual_seed(seed)
    bandwidth = float(model.config.target_bandwidths[-1])
    scores: dict[str, list[float]] = {"reconstruction": [], "random_codes": [], "chroma_agreement": [],
                                      "chroma_random_codes": []}
    all_codes = []
    for item in items:
        x = torch.from_numpy(item)[None, None]
        codes = model.encode(x, None, bandwidth=bandwidth).audio_codes  # [1, 1, K, T]
        all_codes.append(codes[0, 0])
        y = model.decode(codes, [None]).audio_values[..., : x.shape[-1]]
        noise = torch.randint(model.config.codebook_size, codes.shape, generator=generator)
        z = model.decode(noise, [None]).audio_values[..., : x.shape[-1]]
        pitch = extractor(x).argmax(-1)  # [1, F]
        scores["reconstruction"].append(log_mel_correlation(x[0, 0], y[0, 0]))
        scores["random_codes"].append(log_mel_correlation(x[0, 0], z[0, 0]))
        scores["chroma_agreement"].append(float((extractor(y).argmax(-1) == pitch).float().mean()))
        scores["chroma_random_codes"].append(float((extractor(z).argmax(-1) == pitch).float().mean()))
    codes = torch.cat(all_codes, dim=1)  # [K, sum T]
    q0 = torch.bincount(codes[0], minlength=model.config.codebook_size).float()
    p = q0[q0 > 0] / q0.sum()
    return {
        **{key: float(np.mean(values)) for key, values in scores.items()},
        "distinct_codes_min": float(min(len(torch.unique(row)) for row in codes)),
        "entropy_q0_bits": float(-(p * p.log2()).sum()),
    }


def train_tiny_codec(
    autoencoder_steps: int = 1000,
    decoder_steps: int = 400,
    batch_size: int = 8,
    crop_seconds: float = 1.0,
    lr: float = 3e-3,
    seed: int = 0,
    log_every: int = 100,
    catalog: dict[str, float] | None = None,
) -> EncodecModel:
    """Train the tiny EnCodec in three phases (autoencoder, k-means codebooks, decoder on quantized latents).

    Args:
        autoencoder_steps: steps of phase 1.
        decoder_steps: steps of phase 3.
        batch_size: crops per step.
        crop_seconds: crop length.
        lr: Adam learning rate (betas 0.5, 0.9 as EnCodec).
        seed: seeds the initialization, the crops and the k-means.
        log_every: print the loss every this many steps (0: silent).
        catalog: `synth_audio` arguments of the training audio (default `TRAIN_CATALOG`).

    Returns:
        The trained `EncodecModel` in eval mode.
    """
    from transformers import EncodecModel

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    items = synth_audio(**(catalog or TRAIN_CATALOG))
    model = EncodecModel(encodec_config("tiny")).train()
    loss_fn = ReconstructionLoss()
    samples = round(crop_seconds * SAMPLE_RATE)

    def run(steps: int, params, quantized: bool, phase: str) -> None:
        opt = torch.optim.Adam(params, lr=lr, betas=(0.5, 0.9))
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
        started = time.time()
        for step in range(steps):
            x = random_crops(items, batch_size, samples, rng)  # [B, 1, N]
            if quantized:
                with torch.no_grad():
                    z = model.quantizer.decode(model.quantizer.encode(model.encoder(x)))  # [B, D, T]
            else:
                z = model.encoder(x)
            y = model.decoder(z)[..., :samples]
            loss = loss_fn(x, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if log_every and (step % log_every == 0 or step == steps - 1):
                print(f"  {phase} step {step:5d}  loss {loss.item():.3f}  {time.time() - started:6.1f} s", flush=True)

    run(autoencoder_steps, list(model.parameters()), quantized=False, phase="autoencoder")
    model.eval()
    kmeans_codebooks(model, encoder_latents(model, items), seed=seed)
    model.decoder.train()
    run(decoder_steps, list(model.decoder.parameters()), quantized=True, phase="decoder")
    return model.eval().requires_grad_(False)


def main(argv: list[str] | None = None) -> None:
    """Train the tiny codec, print its quality on held-out synthesized audio and write the safetensors file."""
    parser = asset_arguments(__doc__.splitlines()[0], ASSET, int(TRAIN_CATALOG["tracks"]))
    parser.add_argument("--autoencoder-steps", type=int, default=1000)
    parser.add_argument("--decoder-steps", type=int, default=400)
    args = parser.parse_args(argv)
    started = pin_threads()
    catalog = {**TRAIN_CATALOG, "tracks": args.train_tracks}
    model = train_tiny_codec(args.autoencoder_steps, args.decoder_steps, seed=args.seed, catalog=catalog)
    write_asset(model, args.out, "tiny codec", started, codec_quality(model, synth_audio(**HELDOUT_CATALOG)))


if __name__ == "__main__":
    main()
