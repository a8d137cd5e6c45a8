"""The CLI end to end on a tiny random model: outputs written, bad input = one line, exit 2, nothing written."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from continual_concepts.core.cli import main


def _draw(folder: Path, colour, n=4, size=16, mode="RGB"):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        a = np.full((size, size, 3), 128, np.uint8)
        a[2 + i % 3 : 10 + i % 3, 3:11] = colour
        Image.fromarray(a).convert(mode).save(folder / f"{i}.png")
    return folder


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _draw(tmp_path / "a", (220, 20, 20))
    _draw(tmp_path / "b", (20, 20, 220))
    (tmp_path / "seq.yaml").write_text(
        "model: tiny\ngeneric_prompt: a photo\n"
        "calibration_prompts: [a red circle, a photo of a dog, a blue square, a cat]\n"
        "select: {n_calibration: 3, budget_pct: 3, rho_base: 0.3, n_draws: 1}\n"
        "train: {steps: 4, dc_every: 2, fisher_draws: 1}\n"
        "concepts:\n  - {name: a, trigger: sks, prompt: a sks, images: a}\n"
        "  - {name: b, trigger: zwx, prompt: a zwx, images: b}\n"
    )
    return tmp_path


def test_sequence_then_probe_and_merge(workdir, capsys):
    assert main(["sequence", "seq.yaml", "--out", "run"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["concepts"] == 2
    run = workdir / "run"
    for f in ["memory.safetensors", "report.json", "samples.png", "neurons_a.png", "loss_b.png",
              "dc_after_b.png", "dc_accuracy_matrix.png", "deltas/a.safetensors", "embeddings/zwx.safetensors"]:
        assert (run / f).is_file(), f
    assert not [p for p in workdir.iterdir() if p.name.startswith(".run")], "temp folder left behind"

    assert main(["probe", "--images", "a", "--memory", "run/memory.safetensors", "--prompt", "a dog"]) == 0
    probe = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert probe["candidates"] == ["a photo", "a sks", "a zwx", "a dog"]
    assert np.allclose(np.sum(probe["probs"], 1), 1, atol=1e-5)

    assert main(["merge", "--memory", "run/memory.safetensors", "--out", "merged"]) == 0
    from continual_concepts.core.backends.diffusers_backend import DiffusersBackend
    from continual_concepts.core.cli import load_backend
    from continual_concepts.core.memory import ContinualMemory

    merged = DiffusersBackend.from_folder(workdir / "merged" / "model")
    base = load_backend("tiny")
    mem = ContinualMemory.load(run / "memory.safetensors", base)
    assert mem.apply_to(base) == "applied"
    for lm, lb in zip(merged.kv_layers(), base.kv_layers()):
        assert lm.name == lb.name
        assert (lm.weight - lb.weight).abs().max() < 1e-6
    assert mem.apply_to(merged) == "already"  # the merged model is recognised as carrying every concept
    # the merged text encoder carries the learned trigger embedding
    assert (merged.token_row("sks") - mem.concepts[0].token).abs().max() < 1e-6


def test_train_chains_memory(workdir, capsys):
    common = ["--images", "a", "--steps", "3", "--select-n-calibration", "2", "--select-budget-pct", "3",
              "--select-rho-base", "0.3", "--select-n-draws", "1", "--fisher-draws", "1"]
    assert main(["train", *common, "--prompt", "a sks", "--trigger", "sks", "--out-memory", "m1.safetensors"]) == 0
    assert main(["train", *common, "--prompt", "a zwx", "--trigger", "zwx", "--memory", "m1.safetensors",
                 "--out-memory", "m2.safetensors", "--lam-prior", "2", "--prior-prompt", "a red circle",
                 "--prior-prompt", "a photo of a dog"]) == 0
    from continual_concepts.core.memory import ContinualMemory

    assert [c.trigger for c in ContinualMemory.load("m2.safetensors").concepts] == ["sks", "zwx"]
    capsys.readouterr()
    assert main(["memory", "show", "m2.safetensors", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)["concepts"]
    assert [c["name"] for c in shown] == ["sks", "zwx"] and all(c["steps"] == 3 for c in shown)
    assert all(0 < c["params_pct"] < 100 and c["date"].startswith("20") for c in shown)
    assert ContinualMemory.load("m2.safetensors").concepts[1].config["train"]["lam_prior"] == 2.0


@pytest.mark.parametrize("argv, needle", [
    (["select", "--images", "missing", "--prompt", "a sks", "--trigger", "sks", "--out", "n.safetensors"], "does not exist"),
    (["select", "--images", "empty", "--prompt", "a sks", "--trigger", "sks", "--out", "n.safetensors"], "no images"),
    (["select", "--images", "bad", "--prompt", "a sks", "--trigger", "sks", "--out", "n.safetensors"], "cannot read"),
    (["select", "--images", "mixed", "--prompt", "a sks", "--trigger", "sks", "--out", "n.safetensors"], "mixed sizes"),
    (["select", "--images", "a", "--prompt", "a sks", "--trigger", "not-a-token", "--out", "n.safetensors"], "trigger"),
    (["select", "--model", "nomodel", "--images", "a", "--prompt", "a", "--trigger", "sks", "--out", "n.safetensors"], "--model"),
    (["train", "--images", "a", "--prompt", "a sks", "--trigger", "sks", "--steps", "0", "--out-memory", "m.safetensors"], "steps"),
    (["train", "--images", "a", "--prompt", "a sks", "--trigger", "sks", "--prior-prompt", "sks on a table",
      "--out-memory", "m.safetensors"], "prior_prompts: line 1 contains the trigger"),
    (["probe", "--images", "a"], "candidate"),
    (["probe", "--images", "a", "--memory", "corrupt.safetensors"], "corrupt"),
    (["sequence", "nothere.yaml", "--out", "run"], "does not exist"),
    (["sequence", "badcaptions.yaml", "--out", "run"], "one caption per image"),
    (["sequence", "badprior.yaml", "--out", "run"], "prior_prompts: line 2 contains the trigger 'zwx'"),
    (["gallery", "--memory", "nothere.safetensors", "--out", "g.png"], "does not exist"),
    (["gallery", "--memory", str(Path(__file__).parent / "data" / "memory_v1_tiny.safetensors"), "--size", "30",
      "--out", "g.png"], "multiple of 8"),
])
def test_bad_input_one_line_exit_2_nothing_written(workdir, capsys, argv, needle):
    (workdir / "empty").mkdir()
    (workdir / "bad").mkdir()
    (workdir / "bad" / "x.png").write_bytes(b"not an image")
    _draw(workdir / "mixed", (1, 2, 3), n=1, size=16)
    Image.new("RGB", (20, 20)).save(workdir / "mixed" / "z.png")
    (workdir / "corrupt.safetensors").write_bytes(os.urandom(200))
    (workdir / "badcaptions.yaml").write_text("model: tiny\nconcepts:\n"
                                              "  - {trigger: sks, prompt: a sks, images: a, captions: [a sks]}\n")
    (workdir / "badprior.yaml").write_text("model: tiny\ncalibration_prompts: [a cat, a zwx mug]\nconcepts:\n"
                                           "  - {trigger: sks, prompt: a sks, images: a}\n"
                                           "  - {trigger: zwx, prompt: a zwx, images: a}\n")
    before = sorted(p.relative_to(workdir) for p in workdir.rglob("*"))
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and needle in err[0], err
    assert sorted(p.relative_to(workdir) for p in workdir.rglob("*")) == before


def test_unsupported_model_folder(workdir, capsys):
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from continual_concepts.core.word_tokenizer import build_word_tokenizer

    m = workdir / "nocross"
    UNet2DConditionModel(sample_size=8, block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=8,
                         down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                         mid_block_type=None, cross_attention_dim=8).save_pretrained(m / "unet")
    CLIPTextModel(CLIPTextConfig(vocab_size=10, hidden_size=8, intermediate_size=8, num_hidden_layers=1,
                                 num_attention_heads=1, max_position_embeddings=8)).save_pretrained(m / "text_encoder")
    build_word_tokenizer(["a", "sks"], 8).save_pretrained(m / "tokenizer")
    DDPMScheduler().save_pretrained(m / "scheduler")
    assert main(["probe", "--model", str(m), "--images", "a", "--prompt", "a"]) == 2
    err = capsys.readouterr().err
    assert "UNet2DConditionModel" in err and "cross-attention" in err


def test_module_entry_point_help():
    r = subprocess.run([sys.executable, "-m", "continual_concepts", "--help"], capture_output=True, text=True)
    assert r.returncode == 0
    for cmd in ("select", "train", "probe", "merge", "sequence", "queue"):
        assert cmd in r.stdout


def test_merged_text_encoder_keeps_stock_keys(tmp_path):
    """Our token override must not leak into saved weights: stock loaders must find every key."""
    from safetensors import safe_open

    from continual_concepts.core.cli import load_backend
    from continual_concepts.core.export import save_diffusers_model

    b = load_backend("tiny")
    save_diffusers_model(b, tmp_path / "m")
    with safe_open(str(tmp_path / "m" / "text_encoder" / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert any(k.endswith("embeddings.token_embedding.weight") for k in keys), keys
    assert not any(".table." in k for k in keys)


DATA = Path(__file__).parent / "data"


def test_memory_saved_by_format_v1_code_still_loads_and_shows(capsys):
    """tests/data/memory_v1_tiny.safetensors was written by the format-1 code (two concepts on the tiny model,
    3 steps each, before train recorded date and % params): it must keep loading, and `memory show` reads it."""
    f = DATA / "memory_v1_tiny.safetensors"
    assert main(["memory", "show", str(f), "--json"]) == 0
    info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert info["format_version"] == 1 and info["bytes"] == f.stat().st_size
    assert [(c["name"], c["trigger"], c["rows"], c["steps"]) for c in info["concepts"]] == [("red", "sks", 65, 3),
                                                                                        ("blue", "zwx", 49, 3)]
    assert all(c["params"] == 32 * c["rows"] and c["date"] is None for c in info["concepts"])
    assert main(["memory", "show", str(f)]) == 0
    table = capsys.readouterr().out
    assert "format version 1" in table and "red   sks" in table and "blue  zwx" in table


def test_gallery_of_a_format_v1_memory_writes_grid_and_json_once(tmp_path, capsys):
    """The fixture predates thumbnails: the grid has no thumbnail row; the JSON names every concept; a second run
    refuses to overwrite and leaves no temp file."""
    out = tmp_path / "g.png"
    argv = ["gallery", "--memory", str(DATA / "memory_v1_tiny.safetensors"), "--out", str(out), "--samples", "2",
            "--steps", "2", "--seed", "5"]
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert json.loads(out.with_suffix(".json").read_text()) == printed
    assert printed["seed"] == 5 and printed["candidates"] == ["generic", "red", "blue"]
    assert [(c["name"], c["trigger"], len(c["picked"])) for c in printed["concepts"]] == [("red", "sks", 2),
                                                                                           ("blue", "zwx", 2)]
    assert printed["mean_correct"] == sum(c["correct"] for c in printed["concepts"]) / 2
    # --out-memory: the self-check recorded per concept, where `memory show` lists it
    checked = tmp_path / "checked.safetensors"
    assert main([*argv[:4], str(tmp_path / "g2.png"), *argv[5:], "--out-memory", str(checked)]) == 0
    capsys.readouterr()
    assert main(["memory", "show", str(checked), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert [c["dc_self_check"] for c in shown["concepts"]] == [c["correct"] for c in printed["concepts"]]
    assert main(["memory", "show", str(checked)]) == 0
    table = capsys.readouterr().out
    assert "DC self-check" in table and f"{printed['concepts'][0]['correct']:.0%}" in table.splitlines()[-2]
    for p in (checked, tmp_path / "g2.png", tmp_path / "g2.json"):
        p.unlink()
    with Image.open(out) as im:
        assert im.mode == "RGB" and im.width > 300
    before = sorted(tmp_path.iterdir())
    assert main(argv) == 2
    assert "already exists" in capsys.readouterr().err and sorted(tmp_path.iterdir()) == before
    # a memory of another base model (the toy world's, not the tiny model's): the fingerprint error, nothing written
    assert main([*argv[:3], "--out", str(tmp_path / "toy.png"), "--model", "toy"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # diffusers may warn while loading the model
    assert err.startswith("error:") and "another base model" in err and sorted(tmp_path.iterdir()) == before


def test_memory_from_a_newer_format_is_one_clear_error(tmp_path, capsys):
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(DATA / "memory_v1_tiny.safetensors"), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    save_file(tensors, str(tmp_path / "new.safetensors"), metadata={**meta, "version": "99"})
    assert main(["memory", "show", str(tmp_path / "new.safetensors")]) == 2
    assert "format version '99'" in capsys.readouterr().err


def test_memory_remove_round_trip_and_refusals(tmp_path, capsys):
    """`memory remove` writes a copy without the concept (the other one exactly as it was) and prints the report;
    an unknown name lists the known ones, an existing --out is refused, and neither writes anything."""
    import torch

    from continual_concepts.core.memory import ContinualMemory

    src, out = DATA / "memory_v1_tiny.safetensors", tmp_path / "red_only.safetensors"
    assert main(["memory", "remove", str(src), "--name", "blue", "--out", str(out)]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["removed"] == "blue" and report["kept"] == ["red"] and report["exact"] and report["memory"] == str(out)
    old, new = ContinualMemory.load(src), ContinualMemory.load(out)
    assert [c.name for c in new.concepts] == ["red"] and new.fingerprint == old.fingerprint
    red, red0 = new.concepts[0], old.concepts[0]
    assert torch.equal(red.token, red0.token) and red.config == red0.config
    assert all(torch.equal(red.rows[n], red0.rows[n]) and torch.equal(red.delta[n], red0.delta[n]) for n in red0.rows)
    written = out.read_bytes()
    for argv, needle in ((["--name", "red", "--out", str(out)], "already exists"),
                         (["--name", "green", "--out", str(tmp_path / "x.safetensors")],
                          "--name: the memory has no concept 'green' (it has 'red', 'blue')")):
        assert main(["memory", "remove", str(src), *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["red_only.safetensors"] and out.read_bytes() == written
