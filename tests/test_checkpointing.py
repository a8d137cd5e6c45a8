"""How a step fits the memory: what one forward keeps is measured and decides the micro-batch and checkpointing
against the free memory; a step keeps its largest term's activations, not their sum, and micro-batches give the
whole batch's step."""
import pytest
import torch

from continual_concepts.core.backends.diffusers_backend import DiffusersBackend
from continual_concepts.core.checkpointing import decide, saved_bytes
from continual_concepts.core.tiny_model import TinyModelSpec, build_tiny_components
from continual_concepts.core.train import TrainConfig, train_concept


def test_saved_bytes_counts_what_backward_needs_each_storage_once():
    w = torch.randn(64, 64, requires_grad=True)
    x = torch.randn(32, 64)
    one = saved_bytes(lambda: (x @ w).relu().sum())  # for w's gradient matmul keeps x; relu keeps its output
    assert one == x.nbytes + 32 * 64 * 4
    assert saved_bytes(lambda: (x @ w.detach()).sum()) == 0  # nothing requires grad: nothing kept
    view = saved_bytes(lambda: (x[:16] @ w).sum())  # a view keeps its whole storage alive
    assert view == x.nbytes


def _backend(size):
    return DiffusersBackend(**build_tiny_components(TinyModelSpec(sample_size=size, seed=0)))


def _rows(b):
    return {b.kv_layers()[0].name: torch.tensor([0, 1])}


@pytest.mark.parametrize("free, on, micro", [(10**12, False, 2), (1, True, 1), (None, False, 2)])
def test_auto_turns_checkpointing_on_only_when_the_step_would_not_fit(free, on, micro, monkeypatch):
    b = _backend(8)
    monkeypatch.setattr(b, "free_memory", lambda: free)
    calls = []
    monkeypatch.setattr(b, "enable_gradient_checkpointing", lambda: calls.append(1))
    x0 = b.encode_images(torch.rand(3, 8, 8, 3, generator=torch.Generator().manual_seed(0)))
    res = train_concept(b, x0, "a sks", "sks", _rows(b), None, TrainConfig(steps=1, batch_size=2, lam_dsc=0))
    assert res.checkpointing["on"] is on and bool(calls) is on
    assert res.checkpointing["saved_mib_per_sample"] > 0
    assert res.checkpointing["micro_batch"] == micro and res.checkpointing["passes"] == micro


def test_measured_activations_grow_with_the_latent_area():
    """What auto compares is the real thing: 4x the pixels keeps ~4x the bytes (attention-free growth + fixed parts)."""
    kept = {}
    for size in (8, 16):
        b = _backend(size)
        x0 = b.encode_images(torch.rand(1, size, size, 3))
        res = train_concept(b, x0, "a sks", "sks", _rows(b), None,
                            TrainConfig(steps=1, batch_size=1, lam_dsc=0, train_token=False))
        kept[size] = res.checkpointing["saved_mib_per_sample"]
    assert 2.5 < kept[16] / kept[8] < 6


def _kept(per_sample, ckpt_per_sample):
    """A forward that keeps per_sample bytes, ckpt_per_sample once enable() has run; and that enable()."""
    state = {"on": False}
    w = torch.zeros(1, requires_grad=True)

    def forward():
        n = ckpt_per_sample if state["on"] else per_sample
        return (torch.ones(n // 4) * w).sum()  # mul keeps its other operand: n bytes

    return forward, lambda: state.update(on=True)


P = 4 * 1024 * 1024


@pytest.mark.parametrize("samples_free, split_passes, on, micro, split", [
    (10, 5, False, 8, False),  # the whole batch fits
    (6, 5, False, 6, False),  # micro-batches first: they cost no extra compute
    (5, 5, False, 5, False),  # DSC's 5 candidate passes just fit
    (4, 5, True, 8, False),  # DSC cannot split: checkpointing, then the batch fits again (a quarter per sample)
    (1, 5, True, 4, False),  # checkpointed, a micro-batch of 4 (DSC cannot split)
    (4, 2, False, 4, True),  # DSC one candidate at a time before checkpointing
    (2, 2, False, 2, True),  # the prior's 2 prompts are the floor
    (1, 2, True, 4, True),
])
def test_auto_takes_the_cheapest_way_that_fits(samples_free, split_passes, on, micro, split):
    forward, enable = _kept(P, P // 4)
    plan = decide("auto", forward, 8, 5, samples_free * P / 0.8, (), 0, enable, split_passes)
    assert (plan["on"], plan["micro_batch"], plan["dsc_split"]) == (on, micro, split)
    assert plan["passes"] == max(micro, split_passes if split else 5)


def test_a_given_micro_batch_or_mode_is_kept():
    forward, enable = _kept(P, P // 4)
    assert decide("auto", forward, 8, 5, 6 * P / 0.8, (), 2, enable)["on"] is False  # max(2, 5) samples fit
    assert decide("auto", forward, 8, 5, 4 * P / 0.8, (), 2, enable)["on"] is True
    assert decide("off", _kept(P, P)[0], 8, 0, 3 * P / 0.8, (), 0)["micro_batch"] == 3  # off: micro-batches alone
    assert decide("on", lambda: 1 / 0, 8, 5, None, (), 2) == {"mode": "on", "on": True, "micro_batch": 2,
                                                              "dsc_split": False, "passes": 5}
    assert decide("off", lambda: 1 / 0, 8, 5, None, (), 0) == {"mode": "off", "on": False, "micro_batch": 8,
                                                                 "dsc_split": False, "passes": 8}
    with pytest.raises(ValueError, match="micro_batch must be >= 0"):
        TrainConfig(micro_batch=-1).validate()


def test_dsc_one_candidate_at_a_time_gives_the_whole_term():
    from continual_concepts.core.row_delta import RowDeltas
    from continual_concepts.core.train import dsc_loss

    b = _backend(8)
    deltas = RowDeltas.on(b, {l.name: torch.tensor([0, 1, 2]) for l in b.projection_layers()}, "cpu")
    with torch.no_grad():  # a student that differs from its teacher, so the KL and the MSE have gradients
        for p in deltas.parameters():
            p.normal_(0, 0.3, generator=torch.Generator().manual_seed(1))
    x0 = b.encode_images(torch.rand(2, 8, 8, 3, generator=torch.Generator().manual_seed(0)))
    ctx = b.encode_text(["a photo", "a zwx cat", "a red circle"]).detach()
    grads = []
    with deltas.applied(b):
        whole = dsc_loss(b, deltas, x0, ctx, torch.Generator().manual_seed(0), TrainConfig(), 1)
        whole.backward()
        grads.append([p.grad.clone() for p in deltas.parameters()])
        for p in deltas.parameters():
            p.grad = None
        calls = []
        split = dsc_loss(b, deltas, x0, ctx, torch.Generator().manual_seed(0), TrainConfig(), 1,
                         backward=lambda l: (calls.append(1), l.backward()))
        grads.append([p.grad.clone() for p in deltas.parameters()])
    assert len(calls) == 3 and not split.requires_grad
    torch.testing.assert_close(split, whole.detach(), rtol=1e-5, atol=1e-8)
    for g_split, g_whole in zip(*reversed(grads)):
        assert float(g_whole.abs().max()) > 0
        torch.testing.assert_close(g_split, g_whole, rtol=1e-4, atol=1e-4 * float(g_whole.abs().max()))


def _learn(micro, steps=3, free=None, parts="qkvo"):
    """Three default steps on a tiny model that has learned two concepts (two rows shared with the first: both row
    anchors): DSC over 3 candidates, the prior term's 2 prompts, rows (of the `parts` layers) and token."""
    from continual_concepts.core.memory import ConceptRecord, ContinualMemory

    b = _backend(8)
    if free is not None:
        b.free_memory = lambda: free
    mem = ContinualMemory.for_model(b)
    rows = {l.name: torch.tensor([0, 1, 2]) for l in b.layers(parts)}
    first = b.projection_layers()[0]
    mem.add_concept(ConceptRecord("earlier", "zwx", "a zwx cat", rows={first.name: torch.tensor([1, 2])},
                                  delta={first.name: torch.zeros(2, first.weight.shape[1])}))
    mem.add_concept(ConceptRecord("other", "plk", "a plk dog", rows={}, delta={}))  # DSC: 3 candidates
    x0 = b.encode_images(torch.rand(5, 8, 8, 3, generator=torch.Generator().manual_seed(0)))
    cfg = TrainConfig(steps=steps, batch_size=4, micro_batch=micro, token_first=0, rank=0, lr=0.01)
    return train_concept(b, x0, "a sks dog", "sks", rows, mem, cfg, prior_prompts=["a red circle", "a cat"])


def test_micro_batches_and_dsc_split_give_the_whole_batch_step():
    whole = _learn(4)
    assert whole.checkpointing["micro_batch"] == 4 and not whole.checkpointing["dsc_split"]
    per = whole.checkpointing["saved_mib_per_sample"] * 2**20
    tight = _learn(0, free=2.5 * per / 0.8)  # room for 2 samples: DSC's 3 candidates one at a time, no checkpointing
    assert (tight.checkpointing["micro_batch"], tight.checkpointing["dsc_split"], tight.checkpointing["on"]) == (
        2, True, False)
    for part, micro in ((_learn(1), 1), (_learn(3), 3), (tight, 2)):  # 3: micro-batches of 3 and 1, weighted
        assert part.checkpointing["micro_batch"] == micro
        for k, (rows, d) in whole.deltas.items():
            assert float(d.abs().max()) > 0
            # float sums in another order, which Adam's normalising amplifies where an element's gradient terms
            # cancel (one thread instead of two: one element of 192 off by 1.1 %); the loss values (below) pin each
            # micro-batch's weight exactly (weighting it by its own mean fails them at any thread count)
            torch.testing.assert_close(part.deltas[k][1], d, rtol=0, atol=2e-2 * float(d.abs().max()))
        torch.testing.assert_close(part.token, whole.token, rtol=1e-5, atol=1e-6)
        assert {"diff", "prev", "base", "dsc", "prior"} <= whole.history[0].keys()
        for h, hw in zip(part.history, whole.history):
            assert h.keys() == hw.keys() and all(abs(h[k] - hw[k]) <= 1e-5 * abs(hw[k]) + 1e-7 for k in h)


def test_a_step_keeps_its_largest_term_not_the_sum():
    """Measured: the peak of what autograd holds during a whole default step (batch 8, DSC over 5 candidates, the
    prior term) is the batch's forward, shrinks to DSC's 5 candidate passes with micro-batches, and to 2 passes with
    DSC one candidate at a time."""
    from continual_concepts.bench.step_memory import main

    import json
    import io
    import contextlib

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["--small", "--micro", "8,1", "--threads", "1"]) == 0
    steps = {(s["micro_batch"], s["checkpointing"]): s for s in json.loads(buf.getvalue())["steps"]}
    whole, micro1, ckpt = (steps[k]["peak_saved_MiB"] for k in ((8, "off"), (1, "off"), (1, "on")))
    assert 0.5 < micro1 / whole < 0.75  # 5 candidate passes against 8 samples, not 8 + 5 + 2
    assert ckpt < 0.5 * micro1
    tight = steps[(2, "auto")]  # room for 2.5 samples: micro-batches of 2, DSC one candidate at a time, no checkpoints
    assert (tight["on"], tight["dsc_split"]) == (False, True)
    assert 0.3 < tight["peak_saved_MiB"] / micro1 < 0.5  # 2 passes against DSC's 5
