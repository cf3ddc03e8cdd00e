"""MusicGenLM against independent implementations of audiocraft's training semantics."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from finetune.lm.conditioning import batch_draw
from finetune.lm.module import MusicGenLM


def _batch(k: int, t: int, melody: bool, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    b = 3
    batch = {
        "codes": torch.randint(0, 2048, (b, k, t), generator=g),
        "valid_frames": torch.tensor([t, t - 5, 4]),
        "captions": ["a calm jazz piano trio", None, "upbeat electronic drums and bass"],
        "keys": ["a", "b", "c"],
        "skipped": 0,
        "chroma": None,
        "chroma_valid_frames": None,
    }
    if melody:
        batch["chroma"] = F.one_hot(torch.randint(0, 12, (b, 9), generator=g), 12).float()
        batch["chroma_valid_frames"] = torch.tensor([9, 6, 2])
    return batch


def audiocraft_inputs(codes: torch.Tensor, delays: list[int], valid: torch.Tensor | None = None,
                      special: int = 2048) -> torch.Tensor:
    """audiocraft's DelayedPatternProvider + build_pattern_sequence(keep_only_valid_steps=True), as coordinates.

    With `valid` [B], frames from `valid[i]` on are first replaced by the special token, as `MusicGenSolver.
    _prepare_tokens_and_attributes` does with `tokens.padding_with_special_token`.
    """
    b, k, t = codes.shape
    if valid is not None:
        codes = codes.clone()
        for i in range(b):
            codes[i, :, int(valid[i]):] = special
    layout = [[]] + [[(s - d, q) for q, d in enumerate(delays) if s - d >= 0] for s in range(t + max(delays))]
    valid = layout[: t + 1]
    out = torch.full((b, k, len(valid)), special, dtype=torch.long)
    for step, coords in enumerate(valid):
        for time_index, q in coords:
            if time_index < t:
                out[:, q, step] = codes[:, q, time_index]
    return out


def audiocraft_loss(raw_logits: torch.Tensor, codes: torch.Tensor, delays: list[int], valid: torch.Tensor):
    """revert_pattern_logits + padding mask + MusicGenSolver._compute_cross_entropy, written as loops."""
    b, k, s, card = raw_logits.shape
    t = codes.shape[-1]
    per_k = []
    for q in range(k):
        logits_q, targets_q = [], []
        for i in range(b):
            for ti in range(t):
                step = ti + delays[q]  # the logit at `step` predicts layout step + 1, which holds code[q, ti]
                if step <= t - 1 and ti < valid[i]:
                    logits_q.append(raw_logits[i, q, step])
                    targets_q.append(codes[i, q, ti])
        per_k.append(F.cross_entropy(torch.stack(logits_q), torch.stack(targets_q)))
    return torch.stack(per_k).mean()


@pytest.mark.parametrize("name", ["musicgen-small", "musicgen-stereo-melody"])
def test_inputs_and_loss_match_audiocraft(tiny_lm_dir: Path, name: str) -> None:
    from finetune.lm.loss import masked_codebook_ce

    module = MusicGenLM(str(tiny_lm_dir / name), cfg_dropout=0.0, word_dropout=0.0, chroma_dropout=0.0)
    captured = {}

    def grab(mod, args, kwargs, out):
        captured["input_ids"] = kwargs["input_ids"]
        captured["logits"] = out.logits

    handle = module.model.decoder.register_forward_hook(grab, with_kwargs=True)
    batch = _batch(module.num_codebooks, 20, module.is_melody)
    logits, targets, mask = module(batch, train=True)
    handle.remove()
    loss, _ = masked_codebook_ce(logits, targets, mask)

    b, k, t = batch["codes"].shape
    expected_inputs = audiocraft_inputs(batch["codes"], module.delays, batch["valid_frames"])
    torch.testing.assert_close(captured["input_ids"].reshape(b, k, -1), expected_inputs, rtol=0, atol=0)
    raw = captured["logits"].reshape(b, k, -1, module.card)[:, :, -(t + 1):]
    torch.testing.assert_close(loss, audiocraft_loss(raw, batch["codes"], module.delays, batch["valid_frames"]))
    if module.num_codebooks == 8:
        assert module.delays == [0, 0, 1, 1, 2, 2, 3, 3]


def test_null_text_condition_is_all_zero_and_cfg_draw_is_rank_independent(tiny_lm_dir: Path) -> None:
    module = MusicGenLM(str(tiny_lm_dir / "musicgen-small"), cfg_dropout=1.0, word_dropout=0.0)
    condition = module.conditions(_batch(4, 10, False), train=True)
    assert module.last_cfg_null and not condition.abs().sum()
    draws = [batch_draw(0, step, "cfg") < 0.3 for step in range(2000)]
    assert abs(sum(draws) / len(draws) - 0.3) < 0.04
    assert draws == [batch_draw(0, step, "cfg") < 0.3 for step in range(2000)]


def test_cfg_dropped_batch_gets_audiocrafts_one_token_null_text(tiny_lm_dir: Path) -> None:
    """audiocraft's ClassifierFreeGuidanceDropout sets every text to "": T5 tokenizes the batch as `[</s>]` alone,
    a 1-token condition whose embedding is zeroed, whatever the captions' padded length was. For a melody model that
    token follows the 5 null chroma frames in the prefix: 6 positions, all zero."""
    batch = _batch(4, 10, False)
    text = MusicGenLM(str(tiny_lm_dir / "musicgen-small"), cfg_dropout=0.0, word_dropout=0.0)
    kept = text.conditions(batch, train=True)
    assert kept.shape[1] > 1 and kept.abs().sum() > 0  # the captions' padded length
    text.cfg_dropout = 1.0
    nulled = text.conditions(batch, train=True)
    assert nulled.shape == (3, 1, kept.shape[2]) and not nulled.abs().sum()

    melody = MusicGenLM(str(tiny_lm_dir / "musicgen-stereo-melody"), cfg_dropout=1.0, word_dropout=0.0,
                        chroma_dropout=0.0)
    mbatch = _batch(8, 10, True)
    prefix = melody.conditions(mbatch, train=True)
    assert prefix.shape[:2] == (3, 5 + 1) and not prefix.abs().sum()
    # The decoder sees exactly audiocraft's prefix: the same logits as a hand-built [B, 6, D] zero prefix.
    logits, _, _ = melody(mbatch, train=True)
    melody.conditions = lambda batch, train: torch.zeros(3, 6, prefix.shape[2])
    reference, _, _ = melody(mbatch, train=True)
    torch.testing.assert_close(logits, reference, rtol=0, atol=0)


def test_word_dropout_draws_anew_for_each_micro_batch_and_reproducibly(tiny_lm_dir: Path, tmp_path: Path) -> None:
    """audiocraft draws word dropout per forward pass; with gradient accumulation, the micro-batches of one
    optimizer step must drop different words (here: the same batch fed 6 times, 2 micro-batches per step)."""
    import lightning as L

    caption = " ".join(f"word{i}" for i in range(24))
    batch = _batch(4, 10, False)
    batch["captions"] = [caption] * 3

    def run() -> list[tuple[int, int, list]]:
        module = MusicGenLM(str(tiny_lm_dir / "musicgen-small"), cfg_dropout=0.0, word_dropout=0.5)
        seen = []

        class Record(L.Callback):
            def on_train_batch_end(self, trainer, pl_module, outputs, b, idx) -> None:
                seen.append((trainer.global_step, idx, list(pl_module.last_captions)))

        trainer = L.Trainer(max_steps=3, accumulate_grad_batches=2, logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, callbacks=[Record()], default_root_dir=tmp_path)
        loader = torch.utils.data.DataLoader([dict(batch) for _ in range(6)], batch_size=None, collate_fn=lambda x: x)
        trainer.fit(module, train_dataloaders=loader)
        return seen

    seen = run()
    assert [idx for _, idx, _ in seen] == list(range(6))
    for first, second in zip(seen[0::2], seen[1::2]):
        assert first[2] != second[2], "two micro-batches of one optimizer step dropped the same words"
    assert all(c != caption for _, _, captions in seen for c in captions)  # words were dropped
    assert run() == seen  # a rerun (or a resume at a step boundary) draws the same


def test_melody_prefix_masks_padded_chroma_and_nulls_to_five_zero_frames(tiny_lm_dir: Path) -> None:
    module = MusicGenLM(str(tiny_lm_dir / "musicgen-stereo-melody"), cfg_dropout=0.0, word_dropout=0.0,
                        chroma_dropout=0.0)
    batch = _batch(8, 10, True)
    prefix = module.conditions(batch, train=True)
    chroma_part = prefix[:, :9]
    assert chroma_part[2, 2:].abs().sum() == 0 and chroma_part[2, :2].abs().sum() > 0
    module.chroma_dropout = 1.0
    nulled = module.conditions(batch, train=True)
    assert nulled.shape[1] == 5 + prefix.shape[1] - 9 and nulled[:, :5].abs().sum() == 0


def test_tiny_stereo_melody_overfits_a_few_samples(tiny_lm_dir: Path) -> None:
    torch.manual_seed(0)
    module = MusicGenLM(str(tiny_lm_dir / "musicgen-stereo-melody"), cfg_dropout=0.0, word_dropout=0.0,
                        chroma_dropout=0.0, ema_decay=None)
    from finetune.lm.loss import masked_codebook_ce

    batch = _batch(8, 16, True)
    opt = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-2, betas=(0.9, 0.95))
    losses = []
    for _ in range(60):
        logits, targets, mask = module(batch, train=True)
        loss, _ = masked_codebook_ce(logits, targets, mask)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert losses[0] > 7.0  # ~ln(2048) at init
    assert losses[-1] < 0.3 * losses[0], losses[::10]


def test_lora_trains_only_adapters(tiny_lm_dir: Path) -> None:
    module = MusicGenLM(str(tiny_lm_dir / "musicgen-small"), lora_rank=4)
    trainable = module._trainable()
    assert trainable and all("lora_" in n for n in trainable)
    before = {n: p.detach().clone() for n, p in module.model.named_parameters()}
    from finetune.lm.loss import masked_codebook_ce

    opt = torch.optim.AdamW(list(trainable.values()), lr=1e-2)
    for _ in range(3):
        loss, _ = masked_codebook_ce(*module(_batch(4, 12, False), train=True))
        opt.zero_grad()
        loss.backward()
        opt.step()
    changed = {n for n, p in module.model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all("lora_" in n for n in changed)
    assert any("lora_B" in n for n in changed)


def test_mono_to_stereo_initialization(tiny_lm_dir: Path) -> None:
    mono = MusicGenLM(str(tiny_lm_dir / "musicgen-small"))
    stereo = MusicGenLM(str(tiny_lm_dir / "musicgen-small"), mono_to_stereo=True)
    assert stereo.num_codebooks == 8 and stereo.delays == [0, 0, 1, 1, 2, 2, 3, 3]
    m, s = mono.model.decoder, stereo.model.decoder
    for k in range(8):
        torch.testing.assert_close(s.model.decoder.embed_tokens[k].weight, m.model.decoder.embed_tokens[k // 2].weight)
        torch.testing.assert_close(s.lm_heads[k].weight, m.lm_heads[k // 2].weight)
    torch.testing.assert_close(s.model.decoder.layers[0].fc1.weight, m.model.decoder.layers[0].fc1.weight)


def test_ema_is_audiocrafts_unbiased_average() -> None:
    from finetune.training.ema import EMA

    p = torch.nn.Parameter(torch.zeros(2))
    ema = EMA({"p": p}, decay=0.5)
    values = [1.0, 3.0, -2.0]
    for v in values:
        p.data.fill_(v)
        ema.update()
    # count_n = count_{n-1} * d + 1; w = 1 / count; ema = ema * (1 - w) + x * w  ==  weighted mean d^(n-i)
    weights = [0.5**2, 0.5, 1.0]
    expected = sum(w * v for w, v in zip(weights, values)) / sum(weights)
    torch.testing.assert_close(ema.shadow["p"], torch.full((2,), expected))


def test_trainable_parts_start_in_train_mode_and_frozen_parts_stay_in_eval(tiny_lm_dir: Path) -> None:
    module = MusicGenLM(str(tiny_lm_dir / "musicgen-small"), gradient_checkpointing=True)
    assert module.model.decoder.training and module.model.decoder.model.decoder.gradient_checkpointing
    assert not module.model.text_encoder.training and not module.model.audio_encoder.training
    module.eval()
    module.train()
    assert module.model.decoder.training and not module.model.text_encoder.training


def test_atomic_checkpoint_io_round_trip_and_refuses_pickles(tmp_path: Path) -> None:
    from finetune.checkpoints.atomic import AtomicCheckpointIO

    io = AtomicCheckpointIO()
    io.save_checkpoint({"state_dict": {"w": torch.ones(2)}, "global_step": 3}, tmp_path / "a.ckpt")
    assert [p.name for p in tmp_path.iterdir()] == ["a.ckpt"]
    assert io.load_checkpoint(tmp_path / "a.ckpt")["global_step"] == 3

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"x": Evil()}, tmp_path / "evil.ckpt")
    import pickle

    with pytest.raises(pickle.UnpicklingError):
        io.load_checkpoint(tmp_path / "evil.ckpt")


def _fit(module: MusicGenLM, root: Path, steps: int, **trainer_args) -> MusicGenLM:
    import lightning as L

    batches = [_batch(4, 12, False, seed=i) for i in range(steps)]
    loader = torch.utils.data.DataLoader(batches, batch_size=None, collate_fn=lambda x: x)
    trainer = L.Trainer(max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        default_root_dir=root, **trainer_args)
    trainer.fit(module, train_dataloaders=loader)
    return module


def _weights(module: MusicGenLM) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module._trainable().items()}


def test_clipping_by_the_steps_own_norm_equals_lightnings_clip_grad_norm(tiny_lm_dir: Path, tmp_path: Path) -> None:
    """The module clips with the norm it computed for the non-finite check; the weights must be those of Lightning's
    own clipping (`clip_grad_norm_`, which computes the norm again), to float32 rounding. The clip value is low
    enough to clip every step: without clipping the weights differ."""
    import lightning as L

    class LightningClips(MusicGenLM):
        configure_gradient_clipping = L.LightningModule.configure_gradient_clipping

    settings = {"cfg_dropout": 0.0, "word_dropout": 0.0, "ema_decay": None, "warmup_steps": 1, "lr": 1e-2}
    path = str(tiny_lm_dir / "musicgen-small")
    ours = _weights(_fit(MusicGenLM(path, **settings), tmp_path / "a", 3, gradient_clip_val=0.05))
    theirs = _weights(_fit(LightningClips(path, **settings), tmp_path / "b", 3, gradient_clip_val=0.05))
    unclipped = _weights(_fit(MusicGenLM(path, **settings), tmp_path / "c", 3))
    for name in ours:
        torch.testing.assert_close(ours[name], theirs[name], rtol=1e-5, atol=1e-7)
    assert any(not torch.allclose(ours[n], unclipped[n]) for n in ours)


def test_a_non_finite_step_leaves_weights_and_optimizer_state_untouched(tiny_lm_dir: Path, tmp_path: Path) -> None:
    """Gradients poisoned at step 2: the state after step 3 (which skipped) is exactly that after step 2, AdamW's
    moments and step count included; the steps around it do move."""
    from tests.finetune.helpers import NaNInjector, StateRecorder, assert_same_state

    module = MusicGenLM(str(tiny_lm_dir / "musicgen-small"), ema_decay=0.9, ema_every=1, warmup_steps=1)
    record = tmp_path / "state"
    _fit(module, tmp_path, 4, gradient_clip_val=1.0,
         callbacks=[NaNInjector([2]), StateRecorder(str(record), [1, 2, 3, 4])])
    states = {n: torch.load(record / f"rank0-step{n}.pt", weights_only=True) for n in (1, 2, 3, 4)}
    assert_same_state(states[2], states[3])
    for a, b in ((1, 2), (3, 4)):
        with pytest.raises(AssertionError):
            assert_same_state(states[a], states[b])
    assert module._nonfinite_total == 1


def test_compiled_decoder_layers_give_the_eager_loss_and_gradients(tiny_lm_dir: Path, tmp_path: Path) -> None:
    """`compile: true` compiles each decoder layer (inductor, here on CPU) in `configure_model`: the loss and the
    gradients of a batch must be the eager ones up to kernel differences (rtol 1e-5 and 1e-3), and `mgft fit`'s
    trainer must run with it."""
    from finetune.lm.loss import masked_codebook_ce
    from finetune.training.fsdp import decoder_layers

    settings = {"cfg_dropout": 0.0, "word_dropout": 0.0, "ema_decay": None}
    path = str(tiny_lm_dir / "musicgen-small")
    eager, compiled = MusicGenLM(path, **settings), MusicGenLM(path, compile=True, **settings)
    compiled.configure_model()
    assert all(layer._compiled_call_impl is not None for layer in decoder_layers(compiled.model))
    batch = _batch(4, 12, False)
    losses, grads = [], []
    for module in (eager, compiled):
        torch.manual_seed(0)
        loss, _ = masked_codebook_ce(*module(batch, train=True))
        loss.backward()
        losses.append(loss.detach())
        grads.append({n: p.grad for n, p in module._trainable().items()})
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=0)
    assert grads[0].keys() == grads[1].keys()
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, rtol=1e-3, atol=1e-6, msg=name)
    _fit(MusicGenLM(path, compile=True, **settings), tmp_path, 2)  # the trainer path compiles and steps
