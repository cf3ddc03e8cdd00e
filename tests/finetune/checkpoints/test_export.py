"""`mgft export` of a fine-tuned tiny stereo-melody LoRA: plain transformers loads it, audiocraft files, model card."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml

from finetune.__main__ import main
from tests.finetune.evaluation.test_catalog import ROWS, write_set
from tests.finetune.test_fit import LORA, fit_args


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory, tiny_lm_dir: Path, stereo_melody_shards: Path) -> Path:
    """`last.ckpt` of a 4-step LoRA fine-tune of the tiny stereo-melody model on the prepped catalog (validated at
    steps 3 and 4)."""
    root = tmp_path_factory.mktemp("finetuned")
    main(fit_args(LORA, tiny_lm_dir / "musicgen-stereo-melody", stereo_melody_shards, root, "--trainer.max_steps",
                  "4", "--trainer.logger", "false", "--model.lr", "0.05", "--data.val_shards",
                  str(stereo_melody_shards), "--trainer.val_check_interval", "3", "--data.val_samples", "4"))
    return root / "checkpoints" / "last.ckpt"


def _inputs(tokenizer) -> dict:
    text = tokenizer(["warm piano and soft drums"], return_tensors="pt")
    chroma = torch.nn.functional.one_hot(torch.arange(20) % 12, 12).float()[None]
    return {**text, "input_features": chroma}


def test_hf_export_loads_with_plain_transformers_and_generates(finetuned: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer, MusicgenMelodyForConditionalGeneration

    from finetune.lm.module import MusicGenLM

    main(["export", str(finetuned), "--out", str(tmp_path / "hf"), "--format", "hf"])
    model = MusicgenMelodyForConditionalGeneration.from_pretrained(tmp_path / "hf").eval()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert model.config.decoder.num_codebooks == 8 and model.config.decoder.audio_channels == 2
    assert not any("lora" in k for k in model.state_dict())
    assert model.generation_config.top_k == 250 and model.generation_config.guidance_scale == 3.0
    assert model.generation_config.max_length == 1504  # 1500 frames + BOS + 3 delayed steps: 30 s, as audiocraft

    # The merged export computes what the trained module (adapters unmerged) computes.
    module, _ = MusicGenLM.from_checkpoint(str(finetuned))
    inputs = _inputs(tokenizer)
    decoder_ids = torch.randint(0, 2048, (8, 6))
    with torch.no_grad():
        ours = module.model(**inputs, decoder_input_ids=decoder_ids).logits
        theirs = model(**inputs, decoder_input_ids=decoder_ids).logits
    torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-4)
    # The fine-tune changed the weights: an export equal to the base model would prove nothing.
    base = MusicgenMelodyForConditionalGeneration.from_pretrained(module.hparams.pretrained).eval()
    with torch.no_grad():
        assert not torch.allclose(base(**inputs, decoder_input_ids=decoder_ids).logits, theirs, atol=1e-4)

    audio = model.generate(**inputs, max_new_tokens=10, do_sample=True)
    assert audio.shape[0] == 1 and audio.shape[1] == 2 and torch.isfinite(audio).all()


def test_model_card_lists_the_datas_licenses_and_config(finetuned: Path, tmp_path: Path,
                                                        stereo_melody_shards: Path) -> None:
    from PIL import Image

    main(["export", str(finetuned), "--out", str(tmp_path / "both")])
    manifest = [json.loads(x) for x in (stereo_melody_shards / "manifest.jsonl").read_text().splitlines()]
    genre, tracks = Counter(row["metadata"]["genre"] for row in manifest).most_common(1)[0]
    for fmt in ("hf", "audiocraft"):
        card = (tmp_path / "both" / fmt / "README.md").read_text()
        assert "CC0-1.0" in card and "tracks" in card and "hours" in card
        # The tag table of the training shards' manifest, and its picture beside the card.
        assert "## Training data" in card and "| tag | tracks labeled | estimated | most frequent (tracks) |" in card
        assert f"| genre | {len(manifest)} of {len(manifest)} | 0 | {genre} {tracks}" in card
        assert "| tempo |" in card and " BPM, median " in card
        assert "![Genres, moods, keys and tempi of the training data](catalog.png)" in card
        with Image.open(tmp_path / "both" / fmt / "catalog.png") as image:
            assert image.format == "PNG" and image.size == (1080, 765)
        assert "lora_rank: 8" in card  # the resolved training config
        # The last validation with its step (3, the run ended at 4), not the last logged values, which mixed the
        # train loss of step 4 with the val/ce of step 3.
        assert "Validation at step 3:" in card and "- val/ce: " in card and "train/loss" not in card
        assert ("audiocraft's sinusoidal position table" in card) == (fmt == "hf")
    exported = tmp_path / "both" / "audiocraft"
    package = torch.load(exported / "state_dict.bin", weights_only=True)
    assert {"best_state", "xp.cfg", "version", "exported"} <= set(package)
    assert "condition_provider.conditioners.self_wav.output_proj.weight" in package["best_state"]
    assert torch.load(exported / "compression_state_dict.bin", weights_only=True)["pretrained"] == \
        "facebook/encodec_32khz"


def test_model_card_of_a_mix_and_of_shards_without_manifest(tmp_path: Path) -> None:
    """The card's data section for a weighted mix (stats and tags of both sets), and for shards without a manifest."""
    from finetune.checkpoints.export import model_card, run_summary, write_card

    a, b = write_set(tmp_path / "a", ROWS[:2]), write_set(tmp_path / "b", ROWS[2:])
    for folder, tracks in ((a, 2), (b, 3)):
        (folder / "stats.json").write_text(json.dumps({"tracks_kept": tracks, "hours_kept": 1.0, "segments": 9,
                                                       "tracks_rejected": 0, "by_license": {}}))
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({"data": {"shards": {str(a): 3, str(b): 1}}}))
    summary = run_summary(run / "checkpoints" / "last.ckpt")
    card = model_card("facebook/musicgen-small", summary, None, "hf", lora=True)
    write_card(tmp_path, card, summary)
    assert f"- `{a}`: 2 tracks" in card and f"- `{b}`: 3 tracks" in card
    assert f"manifest of `{a} (weight 3) + {b} (weight 1)`" in card
    assert "| genre | 4 of 5 | 1 | ambient 3, synthwave 1 |" in card
    assert "| key | 5 of 5 | 1 | A minor 1, C major 1, Eb major 1, F# minor 1, modal 1 |" in card
    assert "| tempo | 4 of 5 | 1 | 72-140 BPM, median 102 |" in card
    assert (tmp_path / "catalog.png").stat().st_size > 20_000

    (a / "manifest.jsonl").unlink()
    (run / "config.yaml").write_text(yaml.safe_dump({"data": {"shards": str(a)}}))
    summary = run_summary(run / "checkpoints" / "last.ckpt")
    card = model_card("facebook/musicgen-small", summary, None, "hf", lora=True)
    write_card(tmp_path / "run", card, summary)
    assert f"- No manifest.jsonl was found beside the training shards (`{a}`)" in card and "catalog.png" not in card
    assert "- 2 tracks, 1.00 hours" in card and not (run / "catalog.png").exists()


def test_adapter_only_export_loads_with_peft_and_gives_the_merged_logits(finetuned: Path, tmp_path: Path) -> None:
    """The adapter folder as a peft user loads it: `PeftModel.from_pretrained` over the base model, no key missing,
    the same logits as the merged export (and not the base model's: the fine-tune is applied)."""
    from peft import PeftConfig, PeftModel
    from transformers import AutoTokenizer, MusicgenMelodyForConditionalGeneration

    main(["export", str(finetuned), "--out", str(tmp_path / "adapter"), "--adapter-only"])
    main(["export", str(finetuned), "--out", str(tmp_path / "hf"), "--format", "hf"])
    base_path = PeftConfig.from_pretrained(tmp_path / "adapter").base_model_name_or_path
    base = MusicgenMelodyForConditionalGeneration.from_pretrained(base_path).eval()
    inputs = _inputs(AutoTokenizer.from_pretrained(tmp_path / "hf"))
    ids = torch.randint(0, 2048, (8, 5))
    with torch.no_grad():
        base_logits = base(**inputs, decoder_input_ids=ids).logits
    adapted = PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import load_file

    saved = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    loaded = get_peft_model_state_dict(adapted)
    assert saved and set(saved) == set(loaded)  # every saved tensor found its module
    for key, value in saved.items():
        torch.testing.assert_close(loaded[key], value, rtol=0, atol=0, msg=key)
    merged = MusicgenMelodyForConditionalGeneration.from_pretrained(tmp_path / "hf").eval()
    with torch.no_grad():
        theirs = merged(**inputs, decoder_input_ids=ids).logits
        ours = adapted(**inputs, decoder_input_ids=ids).logits
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(ours, base_logits, atol=1e-3)  # the adapter changes the model


def test_an_export_never_lands_on_another_unless_overwrite_replaces_it(finetuned: Path, tmp_path: Path) -> None:
    out = tmp_path / "export"
    main(["export", str(finetuned), "--out", str(out), "--format", "hf"])
    merged = sorted(p.name for p in out.iterdir())
    with pytest.raises(ValueError, match=rf"--out {out} already holds files .*pass --overwrite"):
        main(["export", str(finetuned), "--out", str(out), "--adapter-only"])
    assert sorted(p.name for p in out.iterdir()) == merged  # untouched
    main(["export", str(finetuned), "--out", str(out), "--adapter-only", "--overwrite"])
    adapter = sorted(p.name for p in out.iterdir())
    assert "adapter_model.safetensors" in adapter and "model.safetensors" not in adapter  # never mixed
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="holds files that no mgft export wrote \\(notes.txt\\)"):
        main(["export", str(finetuned), "--out", str(out), "--format", "hf", "--overwrite"])
    assert (out / "notes.txt").read_text() == "mine"


def test_plain_transformers_generate_follows_the_melody_of_the_export(finetuned: Path, tmp_path: Path) -> None:
    """transformers' own `generate` on the HF export conditions on the melody it is given. (MusicGen-Melody's
    `generate` dropped `input_features` in transformers 5.x before 5.18, transformers #45647; pyproject's floor is
    above.) The tiny model's logits are nearly uniform, so two melodies rarely change a greedy token: the check is on
    the scores of generate's first step, which must be the forward pass's with that melody and not with the other."""
    from transformers import AutoTokenizer, MusicgenMelodyForConditionalGeneration

    main(["export", str(finetuned), "--out", str(tmp_path / "hf"), "--format", "hf"])
    model = MusicgenMelodyForConditionalGeneration.from_pretrained(tmp_path / "hf").eval()
    text = AutoTokenizer.from_pretrained(tmp_path / "hf")(["warm piano and soft drums"], return_tensors="pt")
    melodies = [torch.nn.functional.one_hot(torch.full((40,), note), 12).float()[None] for note in (0, 7)]  # C, G
    bos = torch.full((8, 1), model.generation_config.decoder_start_token_id)
    first, forward = [], []
    with torch.no_grad():
        for chroma in melodies:
            out = model.generate(**text, input_features=chroma, do_sample=False, guidance_scale=1.0,
                                 max_new_tokens=4, return_dict_in_generate=True, output_scores=True)
            first.append(out.scores[0])  # [K, card]: the logits of the first generated step
            forward.append(model(**text, input_features=chroma, decoder_input_ids=bos).logits[:, -1])
    for mine, other in ((0, 1), (1, 0)):
        torch.testing.assert_close(first[mine], forward[mine], rtol=0, atol=1e-6)
        assert (first[mine] - forward[other]).abs().max() > 1e-4, "generate's scores do not depend on the melody"


def test_audiocraft_export_imports_back_as_pretrained(finetuned: Path, tmp_path: Path, tiny_lm_dir: Path) -> None:
    from transformers import MusicgenMelodyForConditionalGeneration

    from finetune.lm.load import load_musicgen

    main(["export", str(finetuned), "--out", str(tmp_path / "ac"), "--format", "audiocraft"])
    main(["export", str(finetuned), "--out", str(tmp_path / "hf"), "--format", "hf"])
    imported, tokenizer, is_melody = load_musicgen(str(tmp_path / "ac" / "state_dict.bin"),
                                                  audiocraft_base=str(tiny_lm_dir / "musicgen-stereo-melody"))
    assert is_melody
    reference = MusicgenMelodyForConditionalGeneration.from_pretrained(tmp_path / "hf").eval()
    inputs = _inputs(tokenizer)
    ids = torch.randint(0, 2048, (8, 5))
    with torch.no_grad():
        # state_dict.bin holds fp16 weights, as the hub's audiocraft files do.
        torch.testing.assert_close(imported.eval()(**inputs, decoder_input_ids=ids).logits,
                                   reference(**inputs, decoder_input_ids=ids).logits, rtol=2e-2, atol=2e-2)


def test_fit_continues_from_an_audiocraft_export(finetuned: Path, tmp_path: Path, tiny_lm_dir: Path,
                                                 stereo_melody_shards: Path) -> None:
    """`--model.pretrained DIR/state_dict.bin` trains: audiocraft LM weights, T5/EnCodec/tokenizer from the base."""
    from finetune.lm.module import MusicGenLM

    main(["export", str(finetuned), "--out", str(tmp_path / "ac"), "--format", "audiocraft"])
    main(fit_args(LORA, tmp_path / "ac", stereo_melody_shards, tmp_path / "run", "--trainer.max_steps", "2",
                  "--trainer.logger", "false", "--data.val_shards", "null",
                  "--model.audiocraft_base", str(tiny_lm_dir / "musicgen-stereo-melody")))
    module, checkpoint = MusicGenLM.from_checkpoint(str(tmp_path / "run" / "checkpoints" / "last.ckpt"))
    assert checkpoint["global_step"] == 2 and module.is_melody and module.num_codebooks == 8
    exported = torch.load(tmp_path / "ac" / "state_dict.bin", weights_only=True)["best_state"]
    # The fine-tune started from the export's (merged, fp16) weights, not from the base model's.
    head = module.model.decoder.lm_heads[5].weight
    torch.testing.assert_close(head, exported["linears.5.weight"].float())
