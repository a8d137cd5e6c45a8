"""Toy world: deterministic data, disjoint held-out captions, the oracle, the shipped model folder."""
import random

import numpy as np
import pytest
import torch

from continual_concepts.bench.toyworld import MODEL_DIR, load_components
from continual_concepts.bench.toyworld.oracle import accuracy, classify, load_oracle
from continual_concepts.bench.toyworld.world import (
    CLASSES, COLOUR_NAMES, CONCEPTS, TRIGGERS, VOCAB, all_combos, caption, concept_images, heldout_combos,
    pretrain_batch, render, render_scene, train_combos,
)


def test_renders_are_deterministic_and_sized():
    a = render("circle", "red", "gray", random.Random(3))
    b = render("circle", "red", "gray", random.Random(3))
    c = render("circle", "red", "gray", random.Random(4))
    assert a.shape == (32, 32, 3) and np.array_equal(a, b) and not np.array_equal(a, c)
    assert np.array_equal(concept_images(CONCEPTS[0], 4), concept_images(CONCEPTS[0], 4))


def test_heldout_captions_never_in_pretraining_and_triggers_unused():
    held, train = set(heldout_combos()), set(train_combos())
    assert held and not held & train and held | train == set(all_combos())
    _, caps = pretrain_batch(500, random.Random(0))
    assert not {caption(*h) for h in held} & set(caps)
    assert not any(t in c.split() for c in caps for t in TRIGGERS)
    assert len(CONCEPTS) >= 8 and all(t in VOCAB for t in TRIGGERS)


def test_pattern_scenes_captioned_in_vocabulary_and_deterministic():
    from continual_concepts.bench.toyworld.model import MAX_LEN

    _, caps = pretrain_batch(400, random.Random(1), scenes=0.4)
    assert "" not in caps
    patterned = [c for c in caps if any(w in c.split() for w in ("striped", "checkered", "split"))]
    several = [c for c in caps if c.count(" and a ") in (1, 2)]  # "a red circle and a blue cross on a ..."
    assert 0.1 < len(patterned) / len(caps) < 0.3 and 0.1 < len(several) / len(caps) < 0.3
    assert not set(patterned) & set(several)
    assert all(w in VOCAB for c in caps for w in c.split()) and all(len(c.split()) + 2 <= MAX_LEN for c in caps)
    assert not any("striped diamond" in c or "checkered square" in c or "split circle" in c for c in caps)
    for c in several:  # never two of one colour (no twin dots)
        colours = [w for w in c.split() if w in COLOUR_NAMES]
        assert len(colours) == len(set(colours)), c
    (a, ca), (b, cb) = render_scene("teal", random.Random(5)), render_scene("teal", random.Random(5))
    assert a.shape == (32, 32, 3) and np.array_equal(a, b) and ca == cb


def test_oracle_reads_fresh_renders():
    acc = accuracy(load_oracle(), n=200, seed="test-renders")
    assert acc["shape"] >= 0.98 and acc["colour"] >= 0.98 and acc["background"] >= 0.98
    imgs = torch.tensor(np.stack([render(k, "blue" if k in CLASSES[:6] else None, "white", random.Random(i))
                                  for i, k in enumerate(CLASSES)]), dtype=torch.float32) / 255
    assert sum(p == k for p, k in zip(classify(load_oracle(), imgs)["shape"], CLASSES)) >= len(CLASSES) - 1


@pytest.mark.skipif(not (MODEL_DIR / "unet").is_dir(), reason="toy model not exported yet")
def test_shipped_model_loads_and_is_small():
    from continual_concepts.core.backends.diffusers_backend import DiffusersBackend
    from continual_concepts.core.sampling import sample

    b = DiffusersBackend(**load_components())
    img = sample(b, ["a red circle on a gray background"], steps=3)
    assert img.shape == (1, 32, 32, 3)
    size = sum(p.stat().st_size for p in MODEL_DIR.rglob("*") if p.is_file())
    size += (MODEL_DIR.parent / "oracle.safetensors").stat().st_size
    assert size <= 20 * 2**20


@pytest.mark.skipif(not (MODEL_DIR / "unet").is_dir(), reason="toy model not exported yet")
def test_shipped_vae_keeps_every_concept():
    """Each concept's images survive the VAE round trip (oracle): otherwise no method could learn the concept."""
    from continual_concepts.core.backends.diffusers_backend import DiffusersBackend

    b, oracle = DiffusersBackend(**load_components()), load_oracle()
    for c in CONCEPTS:
        imgs = torch.tensor(concept_images(c, 6), dtype=torch.float32) / 255
        pred = classify(oracle, b.decode(b.encode_images(imgs)))["shape"]
        assert pred.count(c.name) >= 5, (c.name, pred)


def test_benchmark_settings_parse_onto_select_and_train():
    """`--set` / `--variants` of the toy bench tools: fields of SelectConfig and TrainConfig, typed like them."""
    from continual_concepts.bench.toyworld.benchmark import SELECT, TRAIN, parse_variant

    label, sel, tr = parse_variant("more rows=budget_pct:1, token_lr:0.01, flip:true, steps:50")
    assert label == "more rows" and sel.budget_pct == 1.0 and sel.rho_base == SELECT.rho_base
    assert tr.token_lr == 0.01 and tr.flip is True and tr.steps == 50 and tr.lr == TRAIN.lr
    assert parse_variant("default") == ("default", SELECT, TRAIN)
    with pytest.raises(SystemExit, match="'lrr' is not a SelectConfig or TrainConfig field"):
        parse_variant("x=lrr:1")
    with pytest.raises(SystemExit, match="'lr': 'fast' is not a float"):
        parse_variant("x=lr:fast")
    _, sel, _ = parse_variant("x=parts:qkvo,rho_general:0.3,n_calibration:0")  # str, optional float, int
    assert (sel.parts, sel.rho_general, sel.n_calibration) == ("qkvo", 0.3, 0)
    _, sel, tr = parse_variant("x=seed:3")  # the run's seed: selection and training alike
    assert (sel.seed, tr.seed) == (3, 3)


def test_concepts_picked_by_name_in_the_order_given():
    """`--order` / `--concepts` of the toy tools: the named concepts in that order, 'all', or one error naming the
    unknown ones."""
    from continual_concepts.bench.toyworld.benchmark import pick_concepts
    from continual_concepts.bench.toyworld.evaluate import ToyWorld

    world = ToyWorld()
    assert [s.name for s in pick_concepts(world, "framed-square, twin-dots")] == ["framed-square", "twin-dots"]
    assert pick_concepts(world, "all") == world.concepts and len(world.concepts) == 8
    with pytest.raises(SystemExit, match="'nope'"):
        pick_concepts(world, "twin-dots,nope")


def test_benchmark_seeds_run_each_method_once_per_seed_and_report_the_spread(monkeypatch, tmp_path, capsys):
    """`--seeds N`: every method runs with selection and training seeds 0..N-1, each run is kept under its own name,
    and the last line gives each method's mean and range over the seeds."""
    import json

    from continual_concepts.bench.toyworld import benchmark

    runs = []

    def fake_run(method, make_backend, world, sel, tr, **kw):
        runs.append((method, sel.seed, tr.seed))
        return {"method": method, "avg_acc": 0.5 + 0.1 * tr.seed}

    monkeypatch.setattr(benchmark, "run_method", fake_run)
    monkeypatch.setattr(benchmark, "write_outputs", lambda results, world, out: {"table": "", "results": results})
    assert benchmark.main(["--methods", "cns,naive", "--seeds", "3", "--no-ceiling", "--concepts", "1",
                           "--out", str(tmp_path)]) == 0
    assert runs == [(m, s, s) for m in ("cns", "naive") for s in range(3)]
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["cns"]["avg_acc_by_seed"] == pytest.approx([0.5, 0.6, 0.7])
    assert summary["cns"]["avg_acc_mean"] == pytest.approx(0.6)
    assert summary["naive"]["avg_acc_range"] == pytest.approx(0.2)
    assert "cns-seed2" in summary


def test_ceilings_average_each_concept_over_training_seeds(monkeypatch, tmp_path, capsys):
    """`--ceiling-seeds N`: each concept's ceiling is trained at seeds train.seed .. train.seed + N - 1 and the
    denominator is their mean (one seed moves a concept by up to ±0.5); the per-seed values are kept. The ceiling
    trains its own number of steps (600 plain, 300 with the prior term; `--ceiling-steps`)."""
    import json

    from continual_concepts.bench.toyworld import benchmark

    seen = []

    def fake_ceiling(make_backend, world, spec, cfg, lam_prior=0.0):
        seen.append((spec.name, cfg.seed, lam_prior, cfg.steps))
        return {"heldout": 0.25 * cfg.seed, "train_context": 1.0, "base_after": 1.0, "seconds": 1.0,
                "params_pct": 100.0}

    monkeypatch.setattr(benchmark, "ceiling", fake_ceiling)
    assert benchmark.main(["--methods", "", "--concepts", "2", "--ceiling-seeds", "3", "--set", "seed:1",
                           "--out", str(tmp_path)]) == 0
    world = benchmark.ToyWorld(n_concepts=2)
    # the plain ceiling at its own 600 steps, not the methods' 300
    assert seen == [(s.name, k, 0.0, 600) for s in world.concepts for k in (1, 2, 3)]
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["ceiling_avg_acc"] == pytest.approx(0.5)  # (0.25 + 0.5 + 0.75) / 3 for each concept
    kept = json.loads((tmp_path / "ceilings.json").read_text())
    assert [c["heldout_per_seed"] for c in kept] == [[0.25, 0.5, 0.75]] * 2
    with pytest.raises(SystemExit):
        benchmark.main(["--methods", "", "--ceiling-seeds", "0"])
    with pytest.raises(SystemExit):
        benchmark.main(["--methods", "", "--ceiling-steps", "0"])
    seen.clear()  # `--ceiling-prior λ`: the same fine-tunes with prior preservation at λ, at 300 steps
    assert benchmark.main(["--methods", "", "--concepts", "2", "--ceiling-seeds", "1", "--ceiling-prior", "1",
                           "--out", str(tmp_path / "prior")]) == 0
    assert seen == [(s.name, 0, 1.0, 300) for s in world.concepts]
    seen.clear()  # `--ceiling-steps N` sets either, whatever the methods' --steps
    assert benchmark.main(["--methods", "", "--concepts", "2", "--ceiling-seeds", "1", "--ceiling-steps", "7",
                           "--steps", "5", "--out", str(tmp_path / "steps")]) == 0
    assert seen == [(s.name, 0, 0.0, 7) for s in world.concepts]
    assert [c["steps"] for c in json.loads((tmp_path / "steps" / "ceilings.json").read_text())] == [7, 7]


def test_demo_reports_what_its_ceilings_cost_the_base_prompts(monkeypatch, tmp_path):
    """`make demo`'s last line: the method beside its ceilings, and the ceilings' own base-prompt accuracy after
    (the ceiling may forget the model's other prompts; the method may not)."""
    from continual_concepts.bench.toyworld import demo

    ceil = [{"heldout": 1.0, "base_after": 0.2}, {"heldout": 0.5, "base_after": 0.4},
            {"heldout": 0.0, "base_after": 0.9}]
    monkeypatch.setattr(demo, "ceilings", lambda world, train, log: ceil)
    keys = ("avg_acc", "avg_train_context_acc", "avg_forgetting", "base_acc_before", "base_acc_after", "params_pct",
            "dc_probe_avg_acc", "samples_per_concept")
    run = {"method": "cns+dsc", "ceiling_avg_acc": 0.5, **{k: 0.1 for k in keys}}
    monkeypatch.setattr(demo, "run_method", lambda *a, **kw: run)
    monkeypatch.setattr(demo, "write_outputs", lambda results, world, out: None)
    r = demo.run_demo(tmp_path)
    assert r["ceiling_base_acc_after"] == pytest.approx(0.5) and r["ceiling_avg_acc"] == 0.5
    assert len(r["concepts"]) == 3 and r["base_acc_after"] == 0.1


def test_parts_sequence_reads_the_base_prompts_once_per_concept(monkeypatch, tmp_path):
    """`parts --sequence`: the base prompts after each concept come from its ceiling step (each is one generation
    pass), the last one is base_acc_after; nothing measures them a second time."""
    from types import SimpleNamespace

    from continual_concepts.bench.toyworld import parts

    calls = []

    class World:
        def base_accuracy(self, backend):
            calls.append("base")
            return 1.0

        def concept_accuracy(self, backend, spec):
            return 0.5

        def samples_per_concept(self):
            return 24

    monkeypatch.setattr(parts, "make_backend", lambda model: None)
    afters = iter([0.9, 0.6])
    monkeypatch.setattr(parts, "ceiling", lambda *a, **kw: {"heldout": 1.0, "base_after": next(afters)})
    specs = [SimpleNamespace(name="a"), SimpleNamespace(name="b")]
    r = parts.sequence(World(), specs, ("K/V", "attn2"), None, tmp_path)
    assert r["base_after_each"] == [0.9, 0.6] and r["base_acc_after"] == 0.6 and r["base_acc_before"] == 1.0
    assert calls == ["base"] and r["avg_forgetting"] == 0.5


# one recorded 2-concept run, as the benchmark writes it (the trade-off tests' input)
RUN = {"method": "cns+dsc", "accuracy_matrix": [[1.0], [0.5, 0.25]], "avg_acc": 0.375, "avg_forgetting": 0.5,
       "base_acc_after": 0.9}


def test_tradeoff_picture_reads_every_recorded_run(tmp_path, capsys):
    """`tradeoff`: one point per run with an accuracy matrix (other JSON ignored), right-after-learning = the
    matrix diagonal; a folder without runs is one clear error."""
    import json

    from continual_concepts.bench.toyworld import tradeoff

    (tmp_path / "results_a.json").write_text(json.dumps([RUN, {**RUN, "settings": "lr:0.01"}]))
    (tmp_path / "ceilings.json").write_text(json.dumps([{"concept": "x", "heldout": 1.0}]))
    rows = tradeoff.runs(tmp_path)
    assert [r["label"] for r in rows] == ["a: cns+dsc", "a: cns+dsc [lr:0.01]"]
    assert rows[0]["right_after"] == pytest.approx(0.625) and rows[0]["final"] == 0.375
    assert tradeoff.main([str(tmp_path), "--out", str(tmp_path / "o")]) == 0
    assert (tmp_path / "o" / "tradeoff.png").stat().st_size > 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["runs"] == 2
    with pytest.raises(SystemExit, match="no benchmark results"):
        tradeoff.main([str(tmp_path / "o")])


def test_tradeoff_key_holds_every_run(tmp_path):
    """The key lists every run however many there are (at 64 runs a fixed-size figure cut it off after 44), and
    leaves out the benchmark command every run shares."""
    import json

    from continual_concepts.bench.toyworld import tradeoff

    runs = [{**RUN, "settings": f"benchmark --methods cns+dsc --no-ceiling --threads 1 --set seed:{i}"}
            for i in range(80)]
    (tmp_path / "results_many.json").write_text(json.dumps(runs))
    rows = tradeoff.runs(tmp_path)
    assert rows[3]["label"] == "many: cns+dsc [--set seed:3]"
    few, many = tradeoff.picture(rows[:10], "t"), tradeoff.picture(rows, "t")
    line_px = tradeoff.KEY_LINE_INCHES * tradeoff.DPI
    assert many.shape[0] >= 80 * line_px > few.shape[0]
