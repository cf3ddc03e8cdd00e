"""Loading a model for generation or evaluation: one path for mgft checkpoints and transformers folders / hub ids."""

from __future__ import annotations

from pathlib import Path


def check_model_arg(flag: str, path: str) -> None:
    """Refuse, naming `flag`, a model argument that cannot load: a missing path, or a damaged checkpoint.

    Cheap (names, directories and headers only), so commands call it for every model argument before they load any.
    """
    from data_prep.names import check_model_name
    from finetune.checkpoints.integrity import check_checkpoint, is_distributed_checkpoint

    check_model_name(flag, path)
    if (Path(path).is_file() and path.endswith(".ckpt")) or is_distributed_checkpoint(path):
        check_checkpoint(path)


def load_for_inference(path: str, device: str = "cpu", trust_checkpoint: bool = False,
                       audiocraft_base: str | None = None):
    """A `MusicGenLM` in eval mode on `device`, from an mgft checkpoint or a transformers MusicGen folder or hub id.

    From an mgft checkpoint (`.ckpt`, a file, or the folder of a sharded run): EMA weights when the run kept an EMA,
    LoRA adapters applied.

    Args:
        path: a `.ckpt` written by `mgft fit` (file or distributed-checkpoint folder), a folder saved by
            `save_pretrained`, or a hub id.
        device: where the model goes.
        trust_checkpoint: allow checkpoints that need arbitrary unpickling (never for files you did not make).
        audiocraft_base: for an audiocraft export, the transformers MusicGen that gives T5, EnCodec and tokenizer.
    """
    from finetune.checkpoints.distributed import is_distributed_checkpoint
    from finetune.lm.module import MusicGenLM

    check_model_arg("--model", path)

    if (Path(path).is_file() and path.endswith(".ckpt")) or is_distributed_checkpoint(path):
        module, _ = MusicGenLM.from_checkpoint(path, trust_checkpoint)
    else:
        module = MusicGenLM(pretrained=path, ema_decay=None, audiocraft_base=audiocraft_base)
    return module.to(device).eval()
