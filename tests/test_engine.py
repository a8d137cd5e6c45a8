"""Core engine behaviours on tiny random diffusers models (issue 2): selection, training, DC, memory."""
import pytest
import torch

from continual_concepts.core.backends.base import UnsupportedModelError
from continual_concepts.core.backends.diffusers_backend import DiffusersBackend
from continual_concepts.core.continual import learn_concept, merge_result
from continual_concepts.core.dc_scores import dc_scores, even_timesteps, shared_noise
from continual_concepts.core.memory import ConceptRecord, ContinualMemory, MemoryMismatchError, model_fingerprint
from continual_concepts.core.neurons import SelectConfig, default_calibration_prompts, select_concept_neurons
from continual_concepts.core.tiny_model import TinyModelSpec, build_tiny_components
from continual_concepts.core.train import NonFiniteLossError, TrainConfig, train_concept

CAL = ["a red circle", "a photo of a dog", "a blue square", "a cat", "a green house"]
SEL = SelectConfig(n_calibration=3, budget_pct=3, rho_base=0.3, n_draws=1, parts="kv")  # CNS as published


def backend(seed=0, vae=False):
    return DiffusersBackend(**build_tiny_components(TinyModelSpec(sample_size=8, seed=seed, with_vae=vae)))


def images(n=3, seed=0):
    return torch.rand(n, 8 if True else 16, 8, 3, generator=torch.Generator().manual_seed(seed))


def snapshot(b):
    return {k: v.detach().clone() for k, v in b.unet.state_dict().items()}


def test_vae_backend_round_trip_shapes():
    b = DiffusersBackend(**build_tiny_components(TinyModelSpec(sample_size=8, with_vae=True)))
    x0 = b.encode_images(torch.rand(2, 16, 16, 3))
    assert x0.shape == (2, 4, 8, 8)
    assert b.decode(x0).shape == (2, 16, 16, 3)


def test_no_cross_attention_is_one_clear_error():
    from diffusers import UNet2DConditionModel

    c = build_tiny_components(TinyModelSpec(sample_size=8))
    c["unet"] = UNet2DConditionModel(sample_size=8, block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=8,
                                     down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2,
                                     mid_block_type=None, cross_attention_dim=32)
    with pytest.raises(UnsupportedModelError, match="UNet2DConditionModel"):
        DiffusersBackend(**c)


def test_selection_masks_budget_and_seed():
    b = backend()
    x0 = b.encode_images(images())
    s1 = select_concept_neurons(b, x0, "a sks", SEL, CAL)
    s2 = select_concept_neurons(b, x0, "a sks", SEL, CAL)
    s3 = select_concept_neurons(b, x0, "a sks", SelectConfig(**{**SEL.__dict__, "seed": 1}), CAL)
    assert all(torch.equal(s1.rows[n], s2.rows[n]) for n in s1.rows)
    assert any(not torch.equal(s1.rows[n], s3.rows[n]) for n in s1.rows)
    r = s1.report
    assert 0 < r["selected_params"] <= r["budget_params"]
    assert r["selected_rows"] <= r["concept_rows_before_cap"] <= r["base_rows"]
    assert 0 <= r["base_general_overlap"] <= 1 and r["params_pct"] <= SEL.budget_pct + 1e-9
    assert sum(v["selected"] for v in r["per_layer"].values()) == r["selected_rows"]
    # a tighter budget caps the selection to exactly the budget, keeping the highest-scoring rows
    tight = select_concept_neurons(b, x0, "a sks", SelectConfig(**{**SEL.__dict__, "budget_pct": 0.2}), CAL)
    width = b.kv_layers()[0].weight.shape[1]
    assert tight.report["selected_params"] == tight.report["budget_params"] // width * width
    assert tight.n_rows < s1.n_rows
    act = select_concept_neurons(b, x0, "a sks", SelectConfig(**{**SEL.__dict__, "general_scoring": "activation"}), CAL)
    assert act.n_rows > 0
    assert 90 <= len(default_calibration_prompts()) <= 110


def test_training_touches_only_deltas_and_optimizer_is_row_sized():
    b = backend()
    x0 = b.encode_images(images())
    sel = select_concept_neurons(b, x0, "a sks", SEL, CAL)
    before = snapshot(b)
    res = train_concept(b, x0, "a sks", "sks", sel.rows, None, TrainConfig(steps=3, lam_dsc=0, rank=0))
    after = snapshot(b)
    assert all(torch.equal(before[k], after[k]) for k in before), "train_concept wrote a weight"
    n = sel.n_rows
    in_dim = next(iter(b.kv_layers())).weight.shape[1]
    assert res.optimizer_state_bytes == 2 * 4 * (n * in_dim + in_dim) + 2 * 4  # exp_avg+exp_avg_sq of rows+token, 2 step scalars
    # merging changes exactly the selected rows
    mem = ContinualMemory.for_model(b)
    rec = ConceptRecord("a", "sks", "a sks", {k: r for k, (r, _) in res.deltas.items()},
                        {k: d for k, (_, d) in res.deltas.items()}, res.token)
    merge_result(b, mem, rec)
    for layer in b.kv_layers():
        key = layer.name + ".weight"
        changed = (snapshot(b)[key] != before[key]).any(1).nonzero().flatten()
        assert set(changed.tolist()) <= set(sel.rows[layer.name].tolist())
    other = [k for k in before if not any(k == l.name + ".weight" for l in b.kv_layers())]
    assert all(torch.equal(before[k], snapshot(b)[k]) for k in other)


def _learn_two(cfg: TrainConfig, seed=0):
    """The second concept trains its own selection plus two rows per layer of the first (so lam_prev has rows to hold)."""
    b = backend()
    mem = ContinualMemory.for_model(b)
    imgs = images(seed=seed)
    learn_concept(b, mem, imgs, "a", "sks", "a sks", SEL, TrainConfig(steps=3, lam_ewc=1.0), CAL)  # records a Fisher
    x0 = b.encode_images(images(seed=1))
    sel = select_concept_neurons(b, x0, "a zwx", SEL, CAL, mem.prev_rows())
    prev = mem.prev_rows()
    rows = {n: torch.unique(torch.cat([sel.rows[n], prev.get(n, torch.empty(0, dtype=torch.long))[:2]])) for n in sel.rows}
    assert sum(len(r) for r in prev.values()) > 0
    return train_concept(b, x0, "a zwx", "zwx", rows, mem, cfg, prior_prompts=CAL)


@pytest.mark.parametrize("lam", ["lam_prev", "lam_base", "lam_ewc", "lam_dsc", "lam_prior"])
def test_each_regulariser_exactly_off_at_zero_and_active_above(lam):
    zero = {k: 0.0 for k in ("lam_prev", "lam_base", "lam_ewc", "lam_dsc", "lam_prior")}
    off = _learn_two(TrainConfig(steps=4, dc_every=1, token_first=0, **zero))
    on = _learn_two(TrainConfig(steps=4, dc_every=1, token_first=0, **{**zero, lam: 50.0}))
    key = {"lam_prev": "prev", "lam_base": "base", "lam_ewc": "ewc", "lam_dsc": "dsc", "lam_prior": "prior"}[lam]
    assert all(key not in h for h in off.history)
    assert any(h.get(key, 0) > 0 for h in on.history)
    assert any(not torch.equal(off.deltas[n][1], on.deltas[n][1]) for n in off.deltas)


def test_prior_term_holds_what_the_model_predicts_for_generic_prompts():
    """Prior preservation: trained hard with the term on, the rows change the eps of prompts they were not taught
    less than with it off; with nothing learned yet the term is exactly 0 (the teacher is the model itself)."""
    b0 = backend()
    rows = {l.name: torch.arange(8) for l in b0.kv_layers()}
    x0, probe = b0.encode_images(images()), b0.encode_images(images(seed=5))
    gen = torch.Generator().manual_seed(3)
    t = torch.full((len(probe),), 500, dtype=torch.long)
    eps = torch.randn(probe.shape, generator=gen)
    ctx = b0.encode_text(CAL[:3])
    with torch.no_grad():
        before = b0.noise_and_predict_eps(probe, t, eps, ctx)

    def drift(lam):
        b = backend()
        cfg = TrainConfig(steps=40, lr=0.05, token_first=0, lam_base=0, lam_prior=lam, prior_batch=3, rank=0)
        res = train_concept(b, x0, "a sks", "sks", rows, None, cfg, prior_prompts=CAL)
        if lam:
            assert res.history[0]["prior"] == 0.0
        for n, (r, d) in res.deltas.items():
            b.bake_rows(n, r, d)
        with torch.no_grad():
            return float((b.noise_and_predict_eps(probe, t, eps, ctx) - before).pow(2).mean())

    free, held = drift(0.0), drift(100.0)
    assert held < 0.5 * free, (held, free)


def test_seeded_training_is_reproducible():
    a, b_, c = (_learn_two(TrainConfig(steps=3, seed=s)) for s in (0, 0, 1))
    assert all(torch.equal(a.deltas[n][1], b_.deltas[n][1]) for n in a.deltas)
    assert torch.equal(a.token, b_.token)
    assert any(not torch.equal(a.deltas[n][1], c.deltas[n][1]) for n in a.deltas if n in c.deltas)


def test_token_first_holds_the_rows_then_lets_them_move():
    """token_first: the rows' change stays exactly zero while the token trains alone, and only that long."""
    rows = {n: torch.tensor([0, 1]) for n in (l.name for l in backend().kv_layers())}

    def learn(**kw):
        b = backend()
        return train_concept(b, b.encode_images(images()), "a sks", "sks", rows, None, TrainConfig(**kw))

    held = learn(steps=4, token_first=0.99)  # round(3.96) = 4: every step the token's alone
    assert all(float(d.abs().max()) == 0 for _, d in held.deltas.values())
    assert not torch.equal(held.token, backend().token_row("sks").float())
    moved = learn(steps=4, token_first=0.5)  # 2 steps alone, 2 with the rows
    assert any(float(d.abs().max()) > 0 for _, d in moved.deltas.values())
    with pytest.raises(ValueError, match="token_first"):
        TrainConfig(token_first=1.0).validate()


def test_nan_guard_and_cancel_leave_model_unchanged():
    b = backend()
    x0 = b.encode_images(images())
    rows = {l.name: torch.tensor([0, 1]) for l in b.kv_layers()}
    before = snapshot(b)
    with pytest.raises(NonFiniteLossError, match=r"step 2: diff=(inf|nan)"):
        train_concept(b, x0, "a sks", "sks", rows, None, TrainConfig(steps=5, lr=1e30, lam_dsc=0, token_first=0))
    assert all(torch.equal(before[k], v) for k, v in snapshot(b).items())
    b2 = backend()
    before2 = snapshot(b2)

    class Cancel(Exception):
        pass

    def cancel(step, total, terms):
        if step == 2:
            raise Cancel

    with pytest.raises(Cancel):
        train_concept(b2, b2.encode_images(images()), "a sks", "sks", rows, None, TrainConfig(steps=5), callback=cancel)
    assert all(torch.equal(before2[k], v) for k, v in snapshot(b2).items())
    assert not b2._row_hooks and not any(m._forward_hooks for m in b2.unet.modules())
    with pytest.raises(ValueError, match="steps"):
        train_concept(b2, x0, "a sks", "sks", rows, None, TrainConfig(steps=0))
    with pytest.raises(ValueError, match="empty"):
        train_concept(b2, x0, "a sks", "sks", {n: torch.empty(0, dtype=torch.long) for n in rows}, None)


def test_dc_batched_equals_naive_loop():
    b = backend()
    x0 = b.encode_images(images(2))
    prompts = ["a photo", "a red circle", "a blue square", "a cat"]
    r = dc_scores(b, x0, b.encode_text(prompts), n_timesteps=4, seed=3, max_batch=64)
    ts = even_timesteps(b.num_timesteps, 4)
    noise = shared_noise(x0, 4, 3)
    naive = torch.zeros(2, len(prompts), 4)
    with torch.no_grad():
        for i in range(2):
            for k, p in enumerate(prompts):
                for j, t in enumerate(ts):
                    ctx = b.encode_text([p])  # re-encoded each time, one prompt per UNet call
                    e = b.noise_and_predict_eps(x0[i : i + 1], t.view(1), noise[i, j : j + 1], ctx)
                    naive[i, k, j] = (e - noise[i, j : j + 1]).pow(2).mean()
    assert ((r.raw - naive).abs() / naive.abs()).max() < 1e-5
    assert torch.allclose(r.probs.sum(1), torch.ones(2))
    assert ts.tolist() == [125, 375, 625, 875]
    hot = dc_scores(b, x0, b.encode_text(prompts), n_timesteps=4, seed=3, temperature=10.0)
    assert torch.equal(hot.errors, r.errors) and not torch.allclose(hot.probs, r.probs)
    halv = dc_scores(b, x0, b.encode_text(prompts), n_timesteps=4, seed=3, halving=[(2, 2), (1, 2)])
    assert torch.isnan(halv.raw).any() and (halv.predicted < len(prompts)).all()


def test_memory_round_trip_fingerprint_and_corruption(tmp_path):
    b = backend()
    mem = ContinualMemory.for_model(b, "a picture")
    learn_concept(b, mem, images(), "a", "sks", "a sks", SEL, TrainConfig(steps=2, fisher_draws=1, lam_ewc=1.0), CAL)
    p = mem.save(tmp_path / "m.safetensors")
    back = ContinualMemory.load(p, b)
    assert back.header() == mem.header()
    assert all(torch.equal(v, back.tensors()[k]) for k, v in mem.tensors().items())
    assert set(mem.fisher) == {l.name for l in b.kv_layers()} and all((f >= 0).all() for f in mem.fisher.values())
    other = backend(seed=5)
    with pytest.raises(MemoryMismatchError):
        ContinualMemory.load(p, other)
    ContinualMemory.load(p, other, force=True)
    trunc = tmp_path / "t.safetensors"
    trunc.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        ContinualMemory.load(trunc)
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, tmp_path / "plain.safetensors")
    with pytest.raises(ValueError, match="not a Continual Concepts memory"):
        ContinualMemory.load(tmp_path / "plain.safetensors")
    fresh = backend()
    assert back.apply_to(fresh) == "applied" and back.apply_to(fresh) == "already"
    assert all(torch.equal(x.weight, y.weight) for x, y in zip(fresh.kv_layers(), b.kv_layers()))


def test_output_space_row_delta_equals_weight_path():
    """The diffusers output-space hook and the generic weight-function path (used by ComfyUI) agree."""
    from continual_concepts.core.backends.base import Backend

    b = backend()
    x0 = b.encode_images(images(2))
    ctx = b.encode_text(["a sks", "a cat"])
    t, eps = torch.tensor([100, 700]), torch.randn_like(x0)
    layer = b.kv_layers()[0]
    rows, d = torch.tensor([1, 5, 9]), torch.randn(3, layer.weight.shape[1])
    outs = []
    for setter in (b.set_row_delta, lambda *a: Backend.set_row_delta(b, *a)):
        setter(layer.name, rows, lambda: d)
        with torch.no_grad():
            outs.append(b.noise_and_predict_eps(x0, t, eps, ctx))
        b.clear_row_delta(layer.name)
        b.set_weight_fn(layer.name, None)
    with torch.no_grad():
        plain = b.noise_and_predict_eps(x0, t, eps, ctx)
    assert torch.allclose(outs[0], outs[1], atol=1e-5) and not torch.allclose(outs[0], plain, atol=1e-4)


def test_fisher_at_delta_equals_fisher_after_baking():
    """The ComfyUI path (Fisher at W + delta, nothing written) equals baking then measuring."""
    from continual_concepts.core.fisher import dc_fisher

    b1, b2 = backend(), backend()
    x0 = b1.encode_images(images(2))
    rows = {l.name: torch.tensor([0, 3]) for l in b1.kv_layers()}
    delta = {n: torch.randn(2, 32) * 0.1 for n in rows}
    for n in rows:
        b1.bake_rows(n, rows[n], delta[n])
    ctx = b1.encode_text(["a photo", "a sks"])
    f1 = dc_fisher(b1, x0, ctx, target=1, draws=1)
    before = snapshot(b2)
    f2 = dc_fisher(b2, x0, ctx, target=1, draws=1, at={n: (rows[n], delta[n]) for n in rows})
    assert all(torch.equal(before[k], v) for k, v in snapshot(b2).items())
    assert all(torch.allclose(f1[n], f2[n], rtol=1e-3, atol=1e-10) for n in f1)


def test_fingerprint_does_not_see_the_sign_of_zero_and_old_memories_still_match():
    """A host that patches a whole weight adds +0.0 to untouched entries (-0.0 + 0.0 = +0.0): the model with a
    concept patched on must still hash like its base; a memory hashed the old way (signed zeros) still loads."""
    b = backend()
    w = b.kv_layers()[0].weight
    with torch.no_grad():
        w[0, 0] = -0.0
    mem = ContinualMemory.for_model(b)
    old = model_fingerprint(b, legacy=True)
    with torch.no_grad():
        w.add_(torch.zeros_like(w))  # what a zero 'diff' patch does to the rows it does not change
    assert not torch.signbit(w[0, 0]) and model_fingerprint(b) == mem.fingerprint != old
    legacy = ContinualMemory(old)
    with torch.no_grad():
        w[0, 0] = -0.0
    legacy.check_model(b)  # the base model as the old memory saw it
    with pytest.raises(MemoryMismatchError):
        ContinualMemory("0" * 64).check_model(b)
