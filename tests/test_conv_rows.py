"""parts="qkvoc": concept neurons also in the output channels of every ResNet block's two convolutions (a row: one
output channel's kernels) — the hook that adds a row delta, the weight-gradient tap, selection, training, baking,
the memory and the Fisher, on the tiny diffusers UNet."""
import torch

from continual_concepts.core.backends.diffusers_backend import DiffusersBackend
from continual_concepts.core.continual import learn_concept
from continual_concepts.core.denoise import denoise_error
from continual_concepts.core.memory import ContinualMemory
from continual_concepts.core.neurons import SelectConfig
from continual_concepts.core.tiny_model import TinyModelSpec, build_tiny_components
from continual_concepts.core.train import TrainConfig
from continual_concepts.core.weight_grads import weight_grads

CAL = ["a red circle", "a photo of a dog", "a blue square"]
SEL = SelectConfig(budget_pct=8, rho_base=1.0, n_draws=1, parts="qkvoc")


def backend():
    return DiffusersBackend(**build_tiny_components(TinyModelSpec(sample_size=8)))


def convs(b):
    return [l for l in b.projection_layers() if l.kind == "c"]


def loss_of(b, seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = b.encode_images(torch.rand(3, 8, 8, 3, generator=g))
    t = torch.randint(0, 1000, (3,), generator=g)
    eps = torch.randn(x0.shape, generator=g)
    return denoise_error(b, x0, t, eps, b.encode_text(["a sks", "a red circle", "a photo"])).sum()


def test_resnet_convolutions_are_rows_after_the_projections():
    b = backend()
    kinds = [l.kind for l in b.projection_layers()]
    n_blocks = sum(type(m).__name__ == "ResnetBlock2D" for m in b.unet.modules())
    assert kinds == [k for k in kinds if k != "c"] + ["c"] * (2 * n_blocks) and n_blocks >= 2
    assert b.layers("qkvo") == [l for l in b.projection_layers() if l.kind != "c"]
    for l in convs(b):
        w = b.layer_module(l.name).weight
        assert w.dim() == 4 and l.weight.shape == (w.shape[0], w[0].numel())
        assert l.weight.data_ptr() == w.data_ptr(), "the rows must be a view of the live weight"


def test_conv_row_delta_in_output_space_equals_the_changed_weight():
    b = backend()
    name = convs(b)[1].name
    rows = torch.tensor([0, 3])
    delta = torch.randn(2, convs(b)[1].weight.shape[1]) * 0.5
    with torch.no_grad():
        plain = loss_of(b)
        b.set_row_delta(name, rows, lambda: delta)
        hooked = loss_of(b)
        b.clear_row_delta(name)
        assert torch.equal(loss_of(b), plain)
        b.bake_rows(name, rows, delta)
        baked = loss_of(b)
    assert not torch.allclose(hooked, plain)
    assert torch.allclose(hooked, baked, rtol=1e-5)


def test_conv_weight_gradient_tap_equals_autograd():
    b = backend()
    layers = convs(b)[:3]
    weights = [b.layer_module(l.name).weight for l in layers]
    for w in weights:
        w.requires_grad_(True)
    ref = torch.autograd.grad(loss_of(b), weights)
    for w in weights:
        w.requires_grad_(False)
    got = {}
    with weight_grads(b, [l.name for l in layers], lambda n, g: got.__setitem__(n, got.get(n, 0) + g)):
        loss_of(b).backward()
    for l, r in zip(layers, ref):
        assert got[l.name].shape == l.weight.shape
        assert torch.allclose(got[l.name], r.reshape(len(r), -1), rtol=1e-4, atol=1e-6 * float(r.abs().max())), l.name


def test_learned_conv_rows_change_only_their_channels_and_round_trip(tmp_path):
    b = backend()
    before = {l.name: l.weight.detach().clone() for l in b.projection_layers()}
    mem = ContinualMemory.for_model(b)
    imgs = torch.rand(3, 8, 8, 3, generator=torch.Generator().manual_seed(0))
    out = learn_concept(b, mem, imgs, "a", "sks", "a sks", SEL, TrainConfig(steps=4, fisher_draws=1, lam_ewc=1.0), CAL)
    kind = {l.name: l.kind for l in b.projection_layers()}
    assert any(kind[n] == "c" and len(r) for n, r in out.record.rows.items()), "no convolution row was selected"
    moved = set()
    for l in b.projection_layers():
        changed = (l.weight.detach() != before[l.name]).any(1).nonzero().flatten().tolist()
        assert set(changed) <= set(out.record.rows.get(l.name, torch.empty(0)).tolist()), l.name
        moved |= {l.kind} if changed else set()
    assert "c" in moved, "the convolution rows it selected must have learned"
    assert {l.name for l in b.projection_layers()} == set(mem.fisher), "the Fisher covers the convolutions in use"
    fresh = backend()
    back = ContinualMemory.load(mem.save(tmp_path / "m.safetensors"), fresh)
    assert back.apply_to(fresh) == "applied"
    assert all(torch.equal(x.weight, y.weight) for x, y in zip(fresh.projection_layers(), b.projection_layers()))


def test_conv_rows_in_micro_batches_take_the_whole_batch_step():
    """The default step (DSC, the prior term, both row anchors) with rows in every layer, convolutions included, at
    batch 4 whole and in micro-batches of 1: the same deltas and denoising loss (float sums in another order). The
    regularisers are only compared to 1 %: DSC's KL (~2e-4) is second order in the deltas' float differences, which
    Adam's normalising amplifies (measured 2e-4 to 8e-4 relative, by thread count)."""
    from test_checkpointing import _learn

    whole, part = _learn(4, parts="qkvoc"), _learn(1, parts="qkvoc")
    assert part.checkpointing["micro_batch"] == 1 and any(".conv" in k for k in whole.deltas)
    for k, (rows, d) in whole.deltas.items():
        assert float(d.abs().max()) > 0
        torch.testing.assert_close(part.deltas[k][1], d, rtol=0, atol=1e-2 * float(d.abs().max()))
    for h, hw in zip(part.history, whole.history):
        assert h.keys() == hw.keys()
        assert all(abs(h[k] - hw[k]) <= (1e-5 if k in ("diff", "total") else 1e-2) * abs(hw[k]) + 1e-9 for k in h)
