"""Every benchmark method learns a concept in place on a tiny model; C-LoRA's penalty acts from task 2."""
import pytest
import torch

from continual_concepts.bench.methods import METHODS, learn
from continual_concepts.core.backends.diffusers_backend import DiffusersBackend
from continual_concepts.core.memory import ContinualMemory
from continual_concepts.core.neurons import SelectConfig
from continual_concepts.core.tiny_model import TinyModelSpec, build_tiny_components
from continual_concepts.core.train import TrainConfig

CAL = ["a red circle", "a blue square", "a cat"]


@pytest.mark.parametrize("method", METHODS)
def test_method_learns_two_concepts(method):
    b = DiffusersBackend(**build_tiny_components(TinyModelSpec(sample_size=8)))
    before = {l.name: l.weight.clone() for l in b.kv_layers()}
    q_out = {n: p.detach().clone() for n, p in b.unet.named_parameters() if ".attn2.to_q." in n or ".attn2.to_out." in n}
    mem, state = ContinualMemory.for_model(b), {}
    sel = SelectConfig(n_calibration=2, budget_pct=3, rho_base=0.3, n_draws=1, parts="kv")  # K/V rows: the
    # dense baselines' layers, so 'changed' compares like with like
    cfg = TrainConfig(steps=3, dc_every=1, fisher_draws=1, lam_ewc=1.0)  # as the benchmarks run the EWC methods
    for name, trig in (("a", "sks"), ("b", "zwx")):
        res = learn(method, b, mem, torch.rand(2, 8, 8, 3), name, trig, f"a {trig}", sel, cfg, CAL, state)
    changed = sum(int((l.weight != before[l.name]).any(1).sum()) for l in b.kv_layers())
    total = sum(len(w) for w in before.values())
    assert [c.name for c in mem.concepts] == ["a", "b"]
    if method in ("naive", "clora", "clora-xattn", "lora-xattn+dsc"):
        assert changed == total  # dense methods move every K/V row
    else:
        assert 0 < changed < total
    if method.startswith("clora"):
        assert "clora" in res.history[-1]
    q_out_moved = any(not torch.equal(p, q_out[n]) for n, p in b.unet.named_parameters() if n in q_out)
    assert q_out_moved == ("xattn" in method)  # only these reach the cross-attention's Q and output
    if method == "lora-xattn+dsc":
        assert any("dsc" in h for h in res.history) and "clora" not in res.history[-1]
    if method == "cns+ewc+dsc":
        assert any("dsc" in h for h in res.history) and "ewc" in res.history[-1]
    if method == "cns+dsc":
        assert any("dsc" in h for h in res.history) and not any("ewc" in h for h in res.history)
    assert all(("prior" in h) == (method == "cns+dsc") for h in res.history)  # the default's own term


def test_unknown_method_is_a_clear_error():
    with pytest.raises(ValueError, match="method 'x'"):
        learn("x", None, None, None, "a", "sks", "a", None, TrainConfig(), CAL, {})


def test_ceiling_restricted_to_parts_moves_only_those_weights():
    """bench.ceiling with `parts`: where in the UNet a concept can be carried (bench/toyworld/parts.py)."""
    from continual_concepts.bench.ceiling import WholeUNet, ceiling

    b = DiffusersBackend(**build_tiny_components(TinyModelSpec(sample_size=8)))
    before = {n: p.detach().clone() for n, p in b.unet.named_parameters()}

    class World:
        def concept_accuracy(self, backend, spec):
            return 0.5

        train_context_accuracy = concept_accuracy

        def base_accuracy(self, backend):
            return 0.75

    class Spec:
        images, captions, prompt, trigger = torch.rand(2, 8, 8, 3), None, "a sks", "sks"

    r = ceiling(lambda: b, World(), Spec(), TrainConfig(steps=2), parts=r"attn2\.to_q\.")
    moved = {n for n, p in b.unet.named_parameters() if not torch.equal(p, before[n])}
    assert moved and all(".attn2.to_q." in n for n in moved)
    assert not any(p.requires_grad for p in b.unet.parameters())
    assert 0 < r["params_pct"] < 100 and r["heldout"] == 0.5 and r["base_after"] == 0.75
    with pytest.raises(ValueError, match="parts 'nothing' matches no UNet parameter"):
        WholeUNet(b.unet, "nothing")


def test_whole_unet_teacher_is_the_weights_before_training():
    """WholeUNet.disabled(): the prior term's teacher for the ceiling (trained in place) is a frozen copy of the
    weights as they were first asked for, swapped in and back."""
    from continual_concepts.bench.ceiling import WholeUNet

    unet = DiffusersBackend(**build_tiny_components(TinyModelSpec(sample_size=8))).unet
    ad = WholeUNet(unet, r"attn2\.to_k\.")
    before = [p.detach().clone() for p in ad.parameters()]
    with ad.disabled():
        pass
    with torch.no_grad():
        for p in ad.parameters():
            p.add_(1.0)
    with ad.disabled():
        assert all(torch.equal(p, b) for p, b in zip(ad.parameters(), before))
    assert all(torch.equal(p, b + 1.0) for p, b in zip(ad.parameters(), before))


def test_ceiling_parts_that_crash_torch_213_are_a_clear_error():
    """torch 2.13's CPU build segfaults in GroupNorm's backward when only the norm's weights train (a frozen input):
    the parts tool says so instead of crashing; with conv_in trained, or on torch >= 2.14, it runs."""
    from continual_concepts.bench.ceiling import WholeUNet, torch_crashes_on_frozen_input_norms

    unet = DiffusersBackend(**build_tiny_components(TinyModelSpec(sample_size=8))).unet
    old = torch.__version__ < "2.14"
    assert torch_crashes_on_frozen_input_norms(unet, r"resnets\.") == old
    assert not torch_crashes_on_frozen_input_norms(unet, r"conv_in|resnets\.")
    assert not torch_crashes_on_frozen_input_norms(unet, r"attn2\.")
    if old:
        with pytest.raises(ValueError, match=r"parts 'resnets\\.' trains GroupNorm weights whose input is frozen"):
            WholeUNet(unet, r"resnets\.")
