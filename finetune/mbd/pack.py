"""`mgft mbd-pack`: the band checkpoints of an MBD training run -> one `mbd_musicgen_32khz.th` file.

    mgft mbd-pack "runs/mbd/band*/checkpoints/last.ckpt" --out exports/mbd/mbd_musicgen_32khz.th
    mgft mbd-pack runs/b0/checkpoints/last.ckpt,runs/b1/checkpoints/last.ckpt,... --out exports/mbd

Each band contributes its EMA weights (as audiocraft exports its EMA `best_state`) and its frozen normalizer
statistics. The file has audiocraft's layout, so `mgft generate --decoder mbd --mbd FILE` and audiocraft's
`load_diffusion_models` both read it.
"""

from __future__ import annotations

import glob
from pathlib import Path


def mbd_pack(checkpoints: str, *, out: str, trust_checkpoint: bool = False) -> str:
    """Pack trained band checkpoints (any order) into one MBD file.

    Args:
        checkpoints: One mgft MBD checkpoint per band (`mgft mbd-fit` runs' `checkpoints/last.ckpt`), comma-separated
            or as a glob.
        out: The `.th` file to write, or a folder (the file is then `mbd_musicgen_32khz.th` in it).
        trust_checkpoint: Allow checkpoints that need arbitrary unpickling (never for files you did not make).

    Returns:
        The path written.
    """
    from finetune.mbd.decoder import MBD_FILENAME, save_mbd
    from finetune.mbd.module import MBDBand
    from finetune.mbd.processor import MultiBandProcessor

    paths = [p for part in checkpoints.split(",") if part.strip() for p in sorted(glob.glob(part.strip()))]
    if not paths:
        raise FileNotFoundError(f"no checkpoint matches {checkpoints!r}")
    modules = [MBDBand.from_checkpoint(path, trust_checkpoint) for path in paths]
    by_band = {m.band_cfg.band: m for m in modules}
    n_bands = {m.band_cfg.n_bands for m in modules}
    if len(n_bands) != 1:
        raise ValueError(f"the checkpoints disagree on the number of bands: {sorted(n_bands)}")
    expected = list(range(n_bands.pop()))
    if sorted(by_band) != expected or len(modules) != len(expected):
        found = [m.band_cfg.band for m in modules]
        raise ValueError(f"need exactly one checkpoint per band {expected}; got bands {found}")
    bands = []
    for index in expected:
        band = by_band[index].band_model(use_ema=True)
        processor = band.processor
        if isinstance(processor, MultiBandProcessor) and not processor.frozen:
            print(f"warning: band {index}'s normalizer saw {int(processor.counts.item())} of "
                  f"{processor.num_samples} items before training stopped; its statistics are less reliable")
        bands.append(band)
    target = Path(out)
    if target.suffix != ".th":
        target = target / MBD_FILENAME
    save_mbd(bands, target)
    print(f"wrote {len(bands)} bands to {target}")
    return str(target)
