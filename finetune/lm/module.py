"""The MusicGen LightningModule: transformers' MusicGen / MusicGen-Melody trained with audiocraft's semantics.

A batch's path to the loss (shapes for K codebooks, T frames, S = T + 1 delayed steps, D model width):

    captions --(CFG / word dropout)--> frozen T5 (fp32) --> enc_to_dec_proj * mask        # [B, L, D]
    chroma   --(CFG / attribute dropout)--> audio_enc_to_dec_proj * valid mask          # [B, 235, D] (melody)
    codes [B, K, T] --> delayed inputs [B, K, S] --> MusicGen decoder --> logits [B, K, S, card]
    codes [B, K, T] --> the code each of the first T steps predicts (delayed targets) [B, K, T] + loss mask
    logits[:, :, :T] vs delayed targets --> masked per-codebook cross-entropy, mean over K

Text models attend to the text by cross-attention *without* a key padding mask (padded positions are zero vectors, as
in audiocraft; docs/fidelity.md); melody models prepend [chroma, text] to the audio sequence (docs/fidelity.md).

The step waits for the device once: `on_before_optimizer_step` reads whether the gradients are finite (a skipped step
must not run AdamW at all). Everything else stays on the device: metrics are logged as tensors and read only when a
logger or the progress bar asks (every `trainer.log_every_n_steps`, the bar's refresh rate), the delays are copied to
the device once, masks multiply instead of selecting, the gradient norm is computed once and clips too.
"""

from __future__ import annotations

import logging
import math
import random
import time
from typing import Any

import lightning as L
import torch

from finetune.architectures import LORA_TARGETS
from finetune.lm.captions import word_dropout
from finetune.lm.conditioning import (
    MELODY_DEFAULTS,
    TEXT_DEFAULTS,
    batch_draw,
    melody_condition,
    text_condition,
)
from finetune.lm.data import Batch, stream_seed
from finetune.lm.load import load_musicgen
from finetune.lm.loss import codebook_nll_sums, masked_codebook_ce
from finetune.lm.patterns import build_delayed_inputs, delayed_targets, delays_for
from finetune.training.ema import EMA
from finetune.training.fsdp import global_norm, is_dtensor, reshard

log = logging.getLogger(__name__)

NULL_CHROMA_FRAMES = 5
"""audiocraft trains a nulled melody as a length-0 wav: its chroma is 5 masked (all-zero) frames (docs/fidelity.md)."""


class MusicGenLM(L.LightningModule):
    """Fine-tune a MusicGen language model (text, melody, stereo; full or LoRA)."""

    def __init__(
        self,
        pretrained: str,
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.95),
        weight_decay: float = 0.1,
        eps: float = 1e-8,
        warmup_steps: int = 4000,
        total_steps: int | None = None,
        min_lr_ratio: float = 0.0,
        cfg_dropout: float | None = None,
        word_dropout: float | None = None,
        chroma_dropout: float | None = None,
        dropout: float = 0.0,
        ema_decay: float | None = 0.99,
        ema_every: int = 10,
        lora_rank: int = 0,
        lora_alpha: float = 16.0,
        lora_dropout: float = 0.0,
        lora_targets: list[str] | None = None,
        freeze: list[str] | None = None,
        mono_to_stereo: bool = False,
        gradient_checkpointing: bool = False,
        compile: bool = False,
        max_nonfinite_steps: int = 5,
        seed: int = 0,
        audiocraft_base: str | None = None,
    ) -> None:
        """Build the model from a transformers checkpoint (hub id or local directory).

        Args:
            pretrained: MusicGen or MusicGen-Melody checkpoint: a hub id (facebook/musicgen-small) or a directory.
            lr: Peak learning rate (AdamW).
            betas: AdamW betas; audiocraft uses (0.9, 0.95), not transformers' (0.9, 0.999).
            weight_decay: Decoupled weight decay on every trainable parameter (audiocraft excludes none).
            eps: AdamW epsilon.
            warmup_steps: Linear warmup from 0 to `lr`; then cosine decay to `min_lr_ratio * lr`.
            total_steps: Length of the schedule (default: the trainer's max_steps).
            min_lr_ratio: Final learning rate as a fraction of `lr`.
            cfg_dropout: Probability that a batch trains unconditionally (default 0.3 text, 0.2 melody).
            word_dropout: T5 word dropout (default 0.3 text, 0.2 melody).
            chroma_dropout: Melody attribute dropout of the chroma (default 0.5 for melody models).
            dropout: Decoder dropout; audiocraft trained with 0.0 while hub configs say 0.1 (docs/fidelity.md).
            ema_decay: EMA decay of the trainable weights (None disables EMA); validation uses the EMA weights.
            ema_every: Update the EMA every this many optimizer steps (audiocraft: 10).
            lora_rank: LoRA rank; 0 trains the full model. With LoRA only the adapters train and are checkpointed.
            lora_alpha: LoRA scaling numerator.
            lora_dropout: Dropout on the LoRA path.
            lora_targets: Decoder module names to adapt (default q/k/v/out projections and the feed-forward).
            freeze: Name prefixes of parameters to freeze in a full fine-tune (e.g. decoder.model.decoder.embed_tokens).
            mono_to_stereo: Initialize a stereo model from a mono checkpoint (codebook k takes mono's k // 2).
            gradient_checkpointing: Recompute decoder activations in backward to save memory.
            compile: `torch.compile` each decoder layer when training starts (regional compilation, as torchtune
                does: the layers share one compiled graph, so compile time does not grow with depth). For GPUs;
                the first steps pay the compilation (bench/gpu.sh measures both).
            max_nonfinite_steps: Stop after this many consecutive steps with non-finite loss or gradients.
            seed: Seed of the batch-level condition dropouts (identical on every rank).
            audiocraft_base: When `pretrained` is an audiocraft export (state_dict.bin), the transformers MusicGen
                checkpoint that supplies T5, EnCodec and the tokenizer (default: the facebook/musicgen-* hub one).
        """
        super().__init__()
        self.save_hyperparameters()
        self.model, self.tokenizer, self.is_melody = load_musicgen(
            pretrained, dropout=dropout, mono_to_stereo=mono_to_stereo, audiocraft_base=audiocraft_base
        )
        decoder_cfg = self.model.config.decoder
        self.num_codebooks = decoder_cfg.num_codebooks
        self.delays = delays_for(decoder_cfg.num_codebooks, getattr(decoder_cfg, "audio_channels", 1))
        self.card = decoder_cfg.vocab_size
        defaults = MELODY_DEFAULTS if self.is_melody else TEXT_DEFAULTS
        self.cfg_dropout = defaults["cfg_dropout"] if cfg_dropout is None else cfg_dropout
        self.word_dropout = defaults["word_dropout"] if word_dropout is None else word_dropout
        self.chroma_dropout = defaults["chroma_dropout"] if chroma_dropout is None else chroma_dropout

        # Frozen as in audiocraft: T5 and EnCodec never train; the projections into the decoder do.
        self.model.text_encoder.requires_grad_(False)
        self.model.audio_encoder.requires_grad_(False)
        if lora_rank > 0:
            self._add_lora(lora_rank, lora_alpha, lora_dropout, lora_targets)
        for prefix in freeze or []:
            matched = [p.requires_grad_(False) for n, p in self.model.named_parameters() if n.startswith(prefix)]
            if not matched:
                raise ValueError(f"freeze: no parameter name starts with {prefix!r}")
        if gradient_checkpointing:
            self.model.decoder.gradient_checkpointing_enable()
        # Only trainable weights go into checkpoints; the rest is reloaded from `pretrained`.
        self.strict_loading = False
        self.ema = EMA(self._trainable(), ema_decay, ema_every) if ema_decay else None
        self._nonfinite_streak = 0
        self._nonfinite_total = 0
        self._skipped_samples: set[str] = set()  # the corrupt samples this rank's data skipped, named
        self._last_validation: dict[str, float] | None = None  # {"step": n, "val/ce": ...}: the model card's metrics
        self._step_skipped = False
        self._grad_norm: torch.Tensor | None = None  # this step's global norm, reused by the gradient clipping
        self._sharded = False
        self._compiled = False
        self._micro_batch = 0  # which micro-batch of the optimizer step (gradient accumulation) is in flight
        self._last_step_time: float | None = None
        self._val_sums: torch.Tensor | None = None
        self.last_cfg_null = False
        self.last_captions: list[str | None] = []
        # from_pretrained returns eval mode and Lightning 2.x keeps module modes as it finds them; transformers'
        # gradient checkpointing and LoRA dropout only act in train mode.
        self.train()

    @classmethod
    def from_checkpoint(cls, path: str, trust_checkpoint: bool = False) -> tuple[MusicGenLM, dict[str, Any]]:
        """Rebuild a trained module from an mgft checkpoint, with EMA weights loaded when the run kept an EMA.

        Returns the module (eval mode) and the checkpoint dict. Checkpoints load with `weights_only=True`.
        """
        from finetune.checkpoints.safe_load import safe_torch_load
        from finetune.errors import BadFileError

        checkpoint = safe_torch_load(path, trust_checkpoint=trust_checkpoint)
        if not isinstance(checkpoint, dict) or "hyper_parameters" not in checkpoint:
            hint = (" (an audiocraft export: fine-tune from it with `mgft fit --model.pretrained`, or generate from "
                    "its folder)" if isinstance(checkpoint, dict) and "best_state" in checkpoint else "")
            raise BadFileError(f"{path} is not a checkpoint of `mgft fit` (it has no hyper_parameters){hint}")
        # LightningCLI adds private entries (`_instantiator`, `_class_path`) that are not constructor arguments.
        hparams = {k: v for k, v in checkpoint["hyper_parameters"].items() if not k.startswith("_")}
        module = cls(**hparams)
        module.on_load_checkpoint(checkpoint)  # validates the keys, restores the EMA
        module.load_state_dict(checkpoint["state_dict"], strict=False)
        if module.ema is not None:  # audiocraft exports and samples from the EMA weights
            with torch.no_grad():
                for name, param in module.ema.params.items():
                    param.copy_(module.ema.shadow[name].to(param.dtype))
        return module.eval(), checkpoint

    # ---- set-up -------------------------------------------------------------------------------------------------
    def _add_lora(self, rank: int, alpha: float, dropout: float, targets: list[str] | None) -> None:
        from peft import LoraConfig, inject_adapter_in_model

        config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout,
                            target_modules=targets or list(LORA_TARGETS))
        self.model.requires_grad_(False)
        inject_adapter_in_model(config, self.model.decoder)
        for name, p in self.model.named_parameters():
            p.requires_grad_("lora_" in name)

    def _trainable(self) -> dict[str, torch.nn.Parameter]:
        return {n: p for n, p in self.model.named_parameters() if p.requires_grad}

    @property
    def is_sharded(self) -> bool:
        """Whether FSDP2 has sharded the decoder (`configure_model` under `ShardedStrategy`)."""
        return self._sharded

    def configure_model(self) -> None:
        """Compile the decoder layers (`compile`), and under a model-parallel strategy shard them with FSDP2.

        Lightning calls this once the process group and device mesh exist; without a mesh (single device, DDP) it
        only compiles. Layers are compiled before they are sharded, as torchtitan orders it. The EMA must be
        rebuilt after sharding: `fully_shard` replaces the parameter objects the EMA was made from.
        """
        if self.hparams.compile and not self._compiled:
            from finetune.training.fsdp import decoder_layers

            for layer in decoder_layers(self.model):
                layer.compile()
            self._compiled = True
        mesh = self.device_mesh
        if mesh is None or self._sharded:
            return
        from finetune.training.fsdp import shard_musicgen

        dp_mesh = mesh["data_parallel"] if mesh.mesh_dim_names and "data_parallel" in mesh.mesh_dim_names else mesh
        bf16 = mesh.device_type == "cuda" and "bf16" in str(self.trainer.precision)
        shard_musicgen(self.model, dp_mesh, bf16=bf16)
        self._sharded = True
        if self.ema is not None:
            self.ema = EMA(self._trainable(), self.hparams.ema_decay, self.hparams.ema_every)

    def sharded_state_templates(self) -> dict[str, torch.Tensor]:
        """Where a distributed checkpoint's sharded extras load into: the EMA shadows, by their checkpoint path."""
        if self.ema is None:
            return {}
        return {f"/mgft/ema/shadow/{name}": shadow for name, shadow in self.ema.shadow.items()}

    def train(self, mode: bool = True) -> MusicGenLM:
        """Set train or eval mode, keeping the frozen T5 and EnCodec in eval mode."""
        super().train(mode)
        # Frozen parts stay in eval mode (no T5 dropout), as audiocraft's T5Conditioner with finetune=False.
        self.model.text_encoder.eval()
        self.model.audio_encoder.eval()
        return self

    def on_fit_start(self) -> None:
        """Check the shards against the model before the first step, and print the trainable parameter count.

        The shards must hold the model's number of codebooks, and a melody model needs shards with chroma.
        """
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None and hasattr(datamodule, "describe"):
            found = datamodule.describe()
            if found.get("num_codebooks") not in (None, self.num_codebooks):
                raise ValueError(f"the shards hold {found['num_codebooks']} codebooks but {self.hparams.pretrained} "
                                 f"has {self.num_codebooks}: prep with --channels {self.num_codebooks // 4}")
            if self.is_melody and not found.get("has_chroma", True):
                raise ValueError("a melody model needs shards prepped with --melody (chroma.npy)")
        n_train = sum(p.numel() for p in self._trainable().values())
        n_all = sum(p.numel() for p in self.model.parameters())
        print(f"mgft: {n_train:,} trainable of {n_all:,} parameters ({100 * n_train / n_all:.2f}%)")

    # ---- forward ------------------------------------------------------------------------------------------------
    def conditions(self, batch: Batch, train: bool) -> torch.Tensor:
        """The decoder's condition: cross-attention memory (text) or prefix (melody), `[B, L, D]`.

        The batch-level draws (CFG, melody attribute dropout) and the word dropout are seeded per micro-batch, by
        (seed, optimizer step, micro-batch within the step, and for words the rank): under gradient accumulation
        every micro-batch draws anew, and a resumed run draws what the uninterrupted run did. A CFG-dropped batch
        gets audiocraft's null text, `""` for every item: one zeroed `</s>` token, not the captions' padded length,
        which matters for melody models, where the text is part of the prefix.
        """
        captions = list(batch["captions"])
        b = len(captions)
        step = f"{self.global_step}.{self._micro_batch}"
        cfg_null = train and batch_draw(self.hparams.seed, step, "cfg") < self.cfg_dropout
        self.last_cfg_null = cfg_null  # what this batch trained with (logged, and checked across ranks in tests)
        if cfg_null:
            captions = [""] * b  # audiocraft's ClassifierFreeGuidanceDropout nulls every text to ""
        elif train and self.word_dropout > 0:
            rng = random.Random(f"{self.hparams.seed}:{step}:{self.global_rank}:words")
            captions = [word_dropout(c, self.word_dropout, rng) if c else c for c in captions]
        self.last_captions = captions  # the texts this batch trained with, after dropout
        null = torch.full((b,), cfg_null, dtype=torch.bool)
        text = text_condition(self.model, self.tokenizer, captions, null, self.device)  # [B, L, D]
        if not self.is_melody:
            return text
        chroma_null = cfg_null or (train and batch_draw(self.hparams.seed, step, "chroma") < self.chroma_dropout)
        if chroma_null or batch.get("chroma") is None:
            # Not `proj.weight.new_zeros`: under FSDP2 the weight is a sharded DTensor outside the module's forward.
            width = self.model.audio_enc_to_dec_proj.out_features
            melody = torch.zeros(b, NULL_CHROMA_FRAMES, width, dtype=text.dtype, device=text.device)
        else:
            melody = melody_condition(self.model, batch["chroma"], batch["chroma_valid_frames"])  # [B, F, D]
        return torch.cat([melody, text.to(melody.dtype)], dim=1)

    def forward(self, batch: Batch, train: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits of the decoder's first T steps `[B, K, T, card]`, the code each predicts and the loss mask.

        Targets and mask are `[B, K, T]` (`patterns.delayed_targets`): step s of codebook q predicts frame
        `s - delay_q` of the codes, audiocraft's pairs of logits and codes, with the codes moved instead of the logits.
        """
        codes = batch["codes"]  # [B, K, T]
        b, k, t = codes.shape
        if k != self.num_codebooks:
            raise ValueError(f"batch has {k} codebooks, the model {self.num_codebooks}")
        # audiocraft's `padding_with_special_token`: padded frames enter the decoder as the special token, not as
        # code 0, so the delayed codebooks' last valid predictions never see fake codebook-0 context.
        frame = torch.arange(t, device=codes.device)  # [T]
        padded = frame[None, None, :] >= batch["valid_frames"].to(codes.device)[:, None, None]  # [B, 1, T]
        codes_in = torch.where(padded, self.card, codes)  # [B, K, T]
        inputs = build_delayed_inputs(codes_in, self.delays, special=self.card)  # [B, K, S]
        condition = self.conditions(batch, train)
        if self.is_melody:
            out = self.model.decoder(input_ids=inputs.reshape(b * k, -1), encoder_hidden_states=condition)
        else:
            # No encoder_attention_mask: audiocraft attends to the zeroed padding (docs/fidelity.md).
            out = self.model.decoder(input_ids=inputs.reshape(b * k, -1), encoder_hidden_states=condition,
                                     encoder_attention_mask=None)
        # Drop the melody prefix, and the last step: it predicts the tail audiocraft drops (keep_only_valid_steps).
        logits = out.logits.reshape(b, k, -1, self.card)[:, :, -(t + 1):-1]  # [B, K, T, card], a view
        targets, mask = delayed_targets(codes, batch["valid_frames"], self.delays)  # [B, K, T] each
        return logits, targets, mask

    # ---- steps --------------------------------------------------------------------------------------------------
    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        """Masked cross-entropy of a batch with condition dropout; logs loss per codebook, frames/s and the CFG draw."""
        # Lightning accumulates over consecutive batch indices: (batch_idx % n) is the micro-batch within the step.
        self._micro_batch = batch_idx % max(1, self.trainer.accumulate_grad_batches)
        # Decoder and LoRA dropout draw from torch's global generator, which checkpoints do not hold: seeding it per
        # (seed, step, micro-batch, rank) makes a resumed run draw what the uninterrupted run did.
        torch.manual_seed(stream_seed(self.hparams.seed, "dropout", self.global_step, self._micro_batch,
                                      self.global_rank))
        logits, targets, mask = self(batch, train=True)
        loss, per_codebook = masked_codebook_ce(logits, targets, mask)
        b = batch["codes"].shape[0]
        # Device tensors are logged as they are (read when logged); host values as CPU tensors, since a Python
        # number would be copied to the device, a sync. A non-finite loss is logged too: its step is skipped in
        # `on_before_optimizer_step` and counted in train/skipped_steps.
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=b)
        self.log_dict({f"train/ce_q{i}": ce for i, ce in enumerate(per_codebook.detach())}, batch_size=b)
        now = time.perf_counter()
        if self._last_step_time is not None:  # host time between launches: a mean over many steps is what counts
            frames = batch["valid_frames"].sum() * self.trainer.world_size
            self.log("train/frames_per_s", frames.float() / (now - self._last_step_time), batch_size=b)
        self._last_step_time = now
        self.log("train/cfg_null", torch.tensor(float(self.last_cfg_null)), batch_size=b)
        self._report_skipped(batch.get("skipped") or [])
        # A host value; this rank's count (ranks read disjoint shards).
        self.log("train/skipped_samples", torch.tensor(float(len(self._skipped_samples))), batch_size=b)
        return loss

    def _report_skipped(self, skipped: list[str]) -> None:
        """Name each corrupt sample the data skipped, once: a resampled stream meets the same one again and again."""
        for entry in skipped:  # "sample KEY in SHARD: reason"
            name = entry.split(": ", 1)[0]
            if name not in self._skipped_samples:
                self._skipped_samples.add(name)
                log.warning("skipped corrupt data (%d so far on rank %d): %s", len(self._skipped_samples),
                            self.global_rank, entry)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Skip the step on every rank together when any rank's gradients are non-finite."""
        grads = [p.grad for p in self._trainable().values() if p.grad is not None]
        norm = global_norm(grads).to(self.device)  # over all ranks' shards under FSDP2 (one all-reduce)
        self._grad_norm = norm
        bad = (~torch.isfinite(norm)).float()
        # DDP averaged the gradients in backward, but the ranks still agree: one whose gradients went non-finite
        # after the all-reduce must not be the only one to skip.
        if self.trainer.world_size > 1 and not self._sharded:
            bad = self.trainer.strategy.reduce(bad, reduce_op="sum")
        # The step's one host sync. Skipping must leave AdamW's moments and step count untouched, not just the
        # weights (a zeroed gradient would still decay the moments and the weights), so the host decides.
        self._step_skipped = bool(bad > 0)
        if self._step_skipped:
            for p in self._trainable().values():
                p.grad = None  # AdamW skips parameters without gradients: the weights stay finite
            self._nonfinite_total += 1
            self._nonfinite_streak += 1
            if self._nonfinite_streak >= self.hparams.max_nonfinite_steps:
                raise RuntimeError(
                    f"{self._nonfinite_streak} consecutive steps had non-finite loss or gradients (step "
                    f"{self.global_step}); stopping. Lower the learning rate, check the data, or resume from the last "
                    "checkpoint (checkpoints never hold non-finite weights)."
                )
        else:
            self._nonfinite_streak = 0
            self.log("train/grad_norm", norm)
        self.log("train/skipped_steps", torch.tensor(float(self._nonfinite_total)))
        self.log("train/lr", torch.tensor(float(optimizer.param_groups[0]["lr"])))

    def configure_gradient_clipping(self, optimizer: torch.optim.Optimizer, gradient_clip_val: float | None = None,
                                    gradient_clip_algorithm: str | None = None) -> None:
        """Clip by the global norm `on_before_optimizer_step` computed, instead of Lightning computing it again.

        Same result as `torch.nn.utils.clip_grad_norm_` (`trainer.gradient_clip_val`, algorithm "norm"): gradients
        scaled by `min(1, max_norm / (norm + 1e-6))`, with one foreach multiply per device and dtype.
        """
        if gradient_clip_val is None or gradient_clip_algorithm not in (None, "norm") or self._grad_norm is None:
            super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
            return
        if not self._step_skipped:  # a skipped step has no gradients left
            torch.nn.utils.clip_grads_with_norm_(list(self._trainable().values()), gradient_clip_val, self._grad_norm)

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        """Take the optimizer step, then update the EMA (here, after the step, not at batch end)."""
        super().optimizer_step(*args, **kwargs)
        if self.ema is not None:  # here, not at batch end: see finetune/training/ema.py
            self.ema.after_optimizer_step(self.global_step, skipped=self._step_skipped)

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        """Add the batch's token-weighted NLL sums per codebook `[2, K]` to the epoch's."""
        self._report_skipped(batch.get("skipped") or [])
        logits, targets, mask = self(batch, train=False)
        sums = codebook_nll_sums(logits, targets, mask)  # [2, K], token-weighted over the epoch
        self._val_sums = sums if self._val_sums is None else self._val_sums + sums

    def on_validation_epoch_start(self) -> None:
        """Reset the NLL sums and swap the EMA weights in, so validation measures the EMA."""
        self._val_sums = None
        if self.ema is not None:
            # Under FSDP2 a unit whose forward ran without a backward (the last layer, kept gathered for backward;
            # a sample generation) still holds its gathered weights: they would be used instead of the swapped ones.
            reshard(self.model)
            self._ema_ctx = self.ema.swapped()
            self._ema_ctx.__enter__()

    def on_validation_epoch_end(self) -> None:
        """Swap the training weights back and log CE and perplexity, overall and per codebook, summed over ranks."""
        if self.ema is not None:
            # Validation's forward left FSDP2 units gathered with the EMA weights; the next training step would run
            # on them (the interrupted and the uninterrupted run then part ways at the first step after validation).
            reshard(self.model)
            self._ema_ctx.__exit__(None, None, None)
        if self._val_sums is None:
            return
        sums = self.trainer.strategy.reduce(self._val_sums, reduce_op="sum") if self.trainer.world_size > 1 \
            else self._val_sums
        ce_k = sums[0] / sums[1].clamp(min=1)
        metrics = {"val/ce": ce_k.mean(), "val/ppl": ce_k.mean().exp()}
        for i, ce in enumerate(ce_k):
            metrics[f"val/ce_q{i}"] = ce
            metrics[f"val/ppl_q{i}"] = ce.exp()
        self.log_dict(metrics, prog_bar=False, sync_dist=False)
        if not self.trainer.sanity_checking:
            self._last_validation = {"step": self.global_step, **{k: float(v) for k, v in metrics.items()}}

    # ---- optimization -------------------------------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW over the trainable parameters; linear warmup, then cosine decay to `min_lr_ratio`, stepped per step."""
        hp = self.hparams
        optimizer = torch.optim.AdamW(list(self._trainable().values()), lr=hp.lr, betas=tuple(hp.betas),
                                      eps=hp.eps, weight_decay=hp.weight_decay)
        total = hp.total_steps or self.trainer.max_steps
        if not total or total < 0:
            raise ValueError("set trainer.max_steps (or model.total_steps) so the cosine schedule has a length")
        warmup = min(hp.warmup_steps, total)

        def lr_lambda(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return hp.min_lr_ratio + (1 - hp.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ---- checkpoints --------------------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep only the trainable weights (refusing non-finite ones) and add mgft's extras.

        The extras: the base model id, the EMA, the count of skipped non-finite steps, the corrupt samples skipped and
        the last logged metrics.
        """
        trainable = {f"model.{n}" for n in self._trainable()}
        state = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}
        # Under FSDP2 each rank checks its own shards and the ranks agree, so all raise or none does.
        bad = [k for k, v in state.items() if v.is_floating_point()
               and not torch.isfinite(v.to_local() if is_dtensor(v) else v).all()]
        if self._sharded and self.trainer.world_size > 1:
            anywhere = self.trainer.strategy.reduce(torch.tensor(float(len(bad)), device=self.device), reduce_op="sum")
            bad = bad or ([f"(a shard on another rank: {int(anywhere)} tensors)"] if anywhere > 0 else [])
        if bad:
            raise RuntimeError(f"refusing to checkpoint non-finite weights: {bad[:5]}")
        checkpoint["state_dict"] = state
        checkpoint["mgft"] = {
            "pretrained": self.hparams.pretrained,
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "nonfinite_total": self._nonfinite_total,
            "skipped_samples": sorted(self._skipped_samples),  # this rank's (rank 0's in a multi-rank checkpoint)
            # The last logged values, and the last validation with its step (export model cards report the latter).
            "metrics": {k: float(v) for k, v in self.trainer.callback_metrics.items() if v.numel() == 1}
            if self._trainer is not None else {},
            "validation": self._last_validation,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Check the keys against this model's trainable weights, then restore the EMA and the skipped-step count."""
        expected = {f"model.{n}" for n in self._trainable()}
        unknown = set(checkpoint["state_dict"]) - expected
        missing = expected - set(checkpoint["state_dict"])
        if unknown or missing:
            raise RuntimeError(f"checkpoint does not match this model: {len(unknown)} unexpected keys "
                               f"{sorted(unknown)[:3]}, {len(missing)} missing {sorted(missing)[:3]}")
        extra = checkpoint.get("mgft", {})
        if self.ema is not None and extra.get("ema"):
            self.ema.load_state_dict(extra["ema"])
        self._nonfinite_total = extra.get("nonfinite_total", 0)
        self._skipped_samples = set(extra.get("skipped_samples", []))
        self._last_validation = extra.get("validation")
