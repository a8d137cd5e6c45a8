"""The method's scale-free quantities (issue 11): penalties on the scale of the diffusion loss, the pretrained
anchor on shared rows, relative learning rates across model widths, the DC Fisher against an independent
reference, and a DC temperature that keeps P away from one-hot at every latent size."""
import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from continual_concepts.core.backends.diffusers_backend import DiffusersBackend
from continual_concepts.core.continual import learn_concept
from continual_concepts.core.dc_scores import DEFAULT_TEMPERATURE, dc_scores, mean_entropy
from continual_concepts.core.fisher import dc_fisher
from continual_concepts.core.memory import ContinualMemory
from continual_concepts.core.row_delta import RowDeltas
from continual_concepts.core.tiny_model import TinyModelSpec, build_tiny_components
from continual_concepts.core.train import RowAnchors, TrainConfig, row_anchors, row_penalties, train_concept

CAL = ["a red circle", "a photo of a dog", "a blue square"]


def backend(**kw):
    return DiffusersBackend(**build_tiny_components(TinyModelSpec(sample_size=8, **kw)))


def images(n=3, seed=0):
    return torch.rand(n, 8, 8, 3, generator=torch.Generator().manual_seed(seed))


def test_known_delta_gives_known_penalty():
    """Means over the selected elements: the same relative change costs the same whatever the selection's size."""
    for rows, width in ((10, 64), (1000, 768)):
        u = torch.full((rows, width), 0.1)
        in_prev = torch.zeros(rows, width, dtype=torch.bool)
        in_prev[: rows // 2] = True
        offset = torch.zeros(rows, width)
        offset[: rows // 2] = -0.3  # shared rows sit 0.3 rms away from pretrained
        fisher = torch.full((rows, width), 2.0)
        cfg = TrainConfig(lam_prev=1.0, lam_base=2.0, lam_ewc=3.0)
        t = row_penalties(u, RowAnchors(in_prev, offset, fisher), cfg)
        assert math.isclose(float(t["prev"]), 1.0 * 0.5 * 0.01, rel_tol=1e-5)
        assert math.isclose(float(t["base"]), 2.0 * (0.5 * 0.2**2 + 0.5 * 0.1**2), rel_tol=1e-5)
        assert math.isclose(float(t["ewc"]), 3.0 * 2.0 * 0.01, rel_tol=1e-5)
    none_shared = row_penalties(u, RowAnchors(in_prev & False, offset * 0, None), cfg)
    assert set(none_shared) == {"base"}


def test_pretrained_anchor_holds_shared_rows_after_three_concepts():
    """Rows shared by three concepts: the anchor sees how far they already are from pretrained, and lam_base pulls
    them back towards it (before this fix, the offset was applied only to fresh rows, where it is always 0)."""
    b = backend()
    mem = ContinualMemory.for_model(b)
    layer = b.kv_layers()[0]
    shared = {layer.name: torch.tensor([0, 1, 2, 3])}
    w0 = layer.weight.detach()[shared[layer.name]].clone()
    for i, (name, trig) in enumerate((("a", "sks"), ("b", "zwx"))):
        learn_concept(b, mem, images(seed=i), name, trig, f"a {trig}", None,
                      TrainConfig(steps=15, lam_prev=0, lam_base=0, lam_ewc=0, lam_dsc=0, lr=0.1), CAL, rows=shared)
    drift = (layer.weight.detach()[shared[layer.name]] - w0)
    assert drift.abs().max() > 0
    deltas = RowDeltas.on(b, shared)
    anchors = row_anchors(b, deltas, mem)
    assert anchors.in_prev.all()
    assert torch.allclose(anchors.offset, (drift / deltas.scale[layer.name]).flatten(), atol=1e-5)
    x0 = b.encode_images(images(seed=2))
    free = train_concept(b, x0, "a qfv", "qfv", shared, mem, TrainConfig(steps=20, lam_prev=0, lam_base=0, lam_ewc=0,
                                                                          lam_dsc=0, lr=0.05))
    held = train_concept(b, x0, "a qfv", "qfv", shared, mem, TrainConfig(steps=20, lam_prev=0, lam_base=100.0,
                                                                          lam_ewc=0, lam_dsc=0, lr=0.05))
    dist = {k: (drift + r.deltas[layer.name][1]).norm() for k, r in (("free", free), ("held", held))}
    assert dist["held"] < 0.7 * drift.norm() and dist["held"] < dist["free"]


def test_relative_lr_moves_rows_alike_at_toy_sd15_and_sdxl_widths():
    """K/V layers at the toy's, SD1.5's and SDXL's context widths (real-width weight RMS): the default relative lr
    moves rows by the same fraction of their size; an absolute lr (the old behaviour) does not."""
    from continual_concepts.bench.relative_lr import relative_change

    rel = {w: relative_change(w, steps=10) for w in (64, 768, 2048)}
    assert max(rel.values()) / min(rel.values()) < 2.0, rel
    absolute = {w: relative_change(w, steps=10, relative=False) for w in (64, 2048)}
    assert absolute[2048] / absolute[64] > 3.0, absolute
    low_rank = {w: relative_change(w, steps=10, rank=4) for w in (64, 768, 2048)}
    assert max(low_rank.values()) / min(low_rank.values()) < 2.0, low_rank


def test_low_rank_rows_change_with_the_given_rank_and_the_penalties_read_that_change():
    """TrainConfig.rank: each layer's change of its selected rows is a product of rank r (full rows otherwise),
    and flat_delta() is that change in RMS units, so lam_base etc. hold it as they hold full rows."""
    b = backend()
    x0 = b.encode_images(images())
    rows = {l.name: torch.arange(12) for l in b.layers("qkvo")[:3]}
    cfg = TrainConfig(steps=8, lr=0.05, train_token=False, lam_prev=0, lam_base=0, lam_ewc=0, lam_dsc=0)
    low = train_concept(b, x0, "a sks", "sks", rows, None, replace(cfg, rank=2))
    full = train_concept(b, x0, "a sks", "sks", rows, None, cfg)
    for n in rows:
        assert low.deltas[n][1].abs().max() > 0
        assert int(torch.linalg.matrix_rank(low.deltas[n][1])) <= 2
        assert int(torch.linalg.matrix_rank(full.deltas[n][1])) > 2
    d = RowDeltas.on(b, rows, rank=2, seed=1)
    for up in d.up:
        up.data.normal_()
    units = {n: d.layer_delta(n).detach() / d.scale[n] for n in d.names}
    assert torch.allclose(d.flat_delta().detach(), d.flat(units), atol=1e-6)
    anchors = RowAnchors(torch.zeros_like(d.flat_delta(), dtype=torch.bool), torch.zeros_like(d.flat_delta()), None)
    base = row_penalties(d.flat_delta(), anchors, TrainConfig(lam_base=1.0))["base"]
    assert math.isclose(float(base.detach()), float(d.flat(units).pow(2).mean()), rel_tol=1e-5)
    base.backward()
    assert all(u.grad is not None and u.grad.abs().max() > 0 for u in d.up)
    with pytest.raises(ValueError, match=r"rank must be >= 0 \(got -1\)"):
        train_concept(b, x0, "a sks", "sks", rows, None, replace(cfg, rank=-1))


def test_dc_fisher_equals_independent_per_sample_gradients():
    """Reference: plain autograd on the full K/V weights, one CE(onehot(target), softmax(-err / T)) per image and
    draw, with the textbook forward (no row deltas, no shared helper)."""
    b = backend()
    x0 = b.encode_images(images(2))
    ctx = b.encode_text(["a photo", "a sks", "a red circle"])
    K, T, target = 3, 0.05, 1
    fisher = dc_fisher(b, x0, ctx, target=target, draws=2, seed=4, temperature=T)
    layers = b.kv_layers()
    ref = {l.name: torch.zeros_like(l.weight) for l in layers}
    gen = torch.Generator().manual_seed(4)
    for p in b.unet.parameters():
        p.requires_grad_(False)
    weights = {l.name: l.weight for l in layers}
    for w in weights.values():
        w.requires_grad_(True)
    abar = b.scheduler.alphas_cumprod
    for _ in range(2):
        for x in x0:
            t = torch.randint(0, 1000, (1,), generator=gen)
            eps = torch.randn((1, *x.shape), generator=gen)
            xt = abar[t].sqrt() * x + (1 - abar[t]).sqrt() * eps
            pred = b.unet(xt.expand(K, -1, -1, -1), t.expand(K), encoder_hidden_states=ctx).sample
            err = ((pred - eps) ** 2).mean(dim=(1, 2, 3))
            loss = F.cross_entropy((-err / T)[None], torch.tensor([target]))
            grads = torch.autograd.grad(loss, list(weights.values()))
            for n, g in zip(weights, grads):
                ref[n] += g.pow(2) / 4
    for w in weights.values():
        w.requires_grad_(False)
    for n in ref:
        assert fisher[n].dtype == torch.float32
        assert torch.allclose(fisher[n], ref[n], rtol=1e-3, atol=1e-12 + 1e-4 * float(ref[n].abs().max())), n
    assert any(float(f.abs().max()) > 0 for f in fisher.values())


def test_fisher_stored_fp32_and_normalised_per_concept():
    mem = ContinualMemory("x")
    tiny = {"l": torch.tensor([[1e-9, 3e-9], [0.0, 4e-9]])}  # fp16 would flush these to 0
    mem.update_fisher(tiny, 0.5)
    assert mem.fisher["l"].dtype == torch.float32
    assert torch.allclose(mem.fisher["l"], torch.tensor([[0.5, 1.5], [0.0, 2.0]]))
    mem.update_fisher({"l": torch.full((2, 2), 7.0)}, 0.5)
    assert torch.allclose(mem.fisher["l"], torch.tensor([[1.25, 1.75], [1.0, 2.0]]))


def test_fisher_recorded_only_while_ewc_is_on(tmp_path, caplog):
    """EWC-DC off (the default) records no Fisher, so the memory file holds only the concepts; turned on later, it
    records from then on and says which earlier concepts it cannot protect."""
    from continual_concepts.report.tables import memory_table

    b = backend()
    mem = ContinualMemory.for_model(b, "a picture")
    learn_concept(b, mem, images(), "a", "sks", "a sks", train_cfg=TrainConfig(steps=2, lam_dsc=0), calibration_prompts=CAL)
    assert mem.fisher == {} and mem.fisher_updates == 0
    assert not any(k.startswith("fisher/") for k in mem.tensors())
    small = mem.save(tmp_path / "off.safetensors").stat().st_size
    with caplog.at_level("WARNING"):
        learn_concept(b, mem, images(seed=1), "b", "zwx", "a zwx",
                      train_cfg=TrainConfig(steps=2, lam_dsc=0, lam_ewc=1.0, fisher_draws=1), calibration_prompts=CAL)
    assert "1 of this memory's 1 concepts have no Fisher" in caplog.text
    assert mem.fisher_updates == 1 and {l.name for l in b.projection_layers()} >= set(mem.fisher) and mem.fisher
    assert [c["ewc_fisher"] for c in mem.summary()["concepts"]] == [False, True]
    assert memory_table(mem.summary()).splitlines()[-1].split()[-2:] == ["yes", "–"]  # EWC Fisher, DC self-check
    fisher_bytes = sum(f.numel() * 4 for f in mem.fisher.values())
    assert mem.save(tmp_path / "on.safetensors").stat().st_size > small + fisher_bytes


def test_memory_copy_shares_the_fisher_and_nothing_else():
    from continual_concepts.core.memory import ConceptRecord

    mem = ContinualMemory("x")
    mem.update_fisher({"l": torch.ones(2, 2)}, 0.5)
    mem.add_concept(ConceptRecord("a", "sks", "a sks", rows={}, delta={}))
    dup = mem.copy()
    assert dup.fisher["l"] is mem.fisher["l"]  # shared: SDXL's is 1.3 GiB
    dup.concepts[0].metrics["x"] = 1
    dup.update_fisher({"l": torch.full((2, 2), 3.0)}, 0.5)
    assert "x" not in mem.concepts[0].metrics and torch.equal(mem.fisher["l"], torch.ones(2, 2))
    assert torch.equal(dup.fisher["l"], torch.full((2, 2), 1.5))


def test_dc_temperature_keeps_p_unsaturated_at_every_latent_size():
    """The shipped toy model, 8x8 and 16x16 latents (32 and 64 px renders): with per-element errors and the default
    T, P's mean entropy stays between one-hot and uniform at both sizes; the old per-image sum saturates as the
    latent grows (at SD1.5's 64x64 latent it measured 0.02 nats, see bench/RESULTS.md)."""
    import random

    import numpy as np

    from continual_concepts.bench.toyworld import load_components
    from continual_concepts.bench.toyworld.world import caption, heldout_combos, render

    b = DiffusersBackend(**load_components())
    combos = heldout_combos()[:4]
    rng = random.Random(0)
    px = torch.tensor(np.stack([render(*x, rng) for x in combos for _ in range(2)]), dtype=torch.float32) / 255
    ctx = b.encode_text([""] + [caption(*x) for x in combos])
    K = ctx.shape[0]
    ent = {}
    for size in (32, 64):
        im = F.interpolate(px.permute(0, 3, 1, 2), size=size, mode="nearest").permute(0, 2, 3, 1)
        r = dc_scores(b, b.encode_images(im), ctx, n_timesteps=4, seed=0)
        n_el = r.errors.new_tensor(b.encode_images(im[:1]).numel())
        ent[size] = (mean_entropy(r.probs), mean_entropy(torch.softmax(-r.errors * n_el, 1)))
        assert 0.1 < ent[size][0] < math.log(K) - 0.1, ent
    assert 0.5 < ent[64][0] / ent[32][0] < 2.0, ent
    assert ent[64][1] < ent[32][1], ent  # the old scaling saturates with the latent's size
    assert DEFAULT_TEMPERATURE > 0
