"""Weight-gradient taps: the gradient every K/V weight would get, read layer by layer without training anything,
equal to plain autograd on the weights; and the Taylor scores and DC Fisher built on them (with and without
gradient checkpointing, which the Fisher runs under right after training)."""
import torch

from continual_concepts.core.backends.diffusers_backend import DiffusersBackend
from continual_concepts.core.denoise import denoise_error
from continual_concepts.core.fisher import dc_fisher
from continual_concepts.core.neurons import SelectConfig, taylor_scores
from continual_concepts.core.tiny_model import TinyModelSpec, build_tiny_components
from continual_concepts.core.weight_grads import weight_grads


def backend():
    return DiffusersBackend(**build_tiny_components(TinyModelSpec(sample_size=8)))


def latents(b, n, seed):
    return b.encode_images(torch.rand(n, 8, 8, 3, generator=torch.Generator().manual_seed(seed)))


def loss_of(b, seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = latents(b, 3, seed)
    t = torch.randint(0, 1000, (3,), generator=g)
    eps = torch.randn(x0.shape, generator=g)
    return denoise_error(b, x0, t, eps, b.encode_text(["a sks", "a red circle", "a photo"])).sum()


def autograd_weight_grads(b, seed=0):
    """Reference: the K/V weights themselves made trainable, plain backward."""
    weights = {l.name: l.weight for l in b.kv_layers()}
    for w in weights.values():
        w.requires_grad_(True)
    grads = torch.autograd.grad(loss_of(b, seed), list(weights.values()))
    for w in weights.values():
        w.requires_grad_(False)
    return dict(zip(weights, grads))


def test_taps_give_every_kv_weight_gradient_and_nothing_trains():
    b = backend()
    ref = autograd_weight_grads(b)
    got = {}
    with weight_grads(b, [l.name for l in b.kv_layers()], lambda n, g: got.__setitem__(n, got.get(n, 0) + g)):
        loss_of(b).backward()
    assert set(got) == set(ref)
    for n in ref:
        assert torch.allclose(got[n], ref[n], rtol=1e-4, atol=1e-6 * float(ref[n].abs().max())), n
    assert all(p.grad is None for p in b.unet.parameters())
    assert not loss_of(b).requires_grad  # taps removed on leaving the block: nothing asks for gradients


def test_taylor_scores_equal_the_weights_dot_their_autograd_gradient():
    b = backend()
    x0 = latents(b, 4, 1)
    cfg = SelectConfig(n_draws=2, batch_size=3)  # two chunks per draw: dot products of chunks must add up
    got = taylor_scores(b, x0, "a sks", cfg, torch.Generator().manual_seed(5))
    weights = {l.name: l.weight for l in b.kv_layers()}
    ctx = b.encode_text(["a sks"]).detach()
    gen = torch.Generator().manual_seed(5)
    ref = {n: torch.zeros(w.shape[0]) for n, w in weights.items()}
    for w in weights.values():
        w.requires_grad_(True)
    for _ in range(2):
        total = {n: torch.zeros_like(w) for n, w in weights.items()}
        for chunk in x0.split(3):
            t = torch.randint(0, 1000, (len(chunk),), generator=gen)
            eps = torch.randn(chunk.shape, generator=gen)
            loss = denoise_error(b, chunk, t, eps, ctx.expand(len(chunk), -1, -1)).sum() / len(x0)
            for n, g in zip(weights, torch.autograd.grad(loss, list(weights.values()))):
                total[n] += g
        for n, w in weights.items():
            ref[n] += (w.detach() * total[n]).sum(1).abs() / 2
    for n in ref:
        assert torch.allclose(got[n], ref[n], rtol=1e-4, atol=1e-9 + 1e-5 * float(ref[n].max())), n


def test_fisher_the_same_under_gradient_checkpointing():
    b = backend()
    x0 = latents(b, 2, 2)
    ctx = b.encode_text(["a photo", "a sks", "a red circle"])
    plain = dc_fisher(b, x0, ctx, target=1, draws=1, temperature=0.05)
    b.enable_gradient_checkpointing()
    b.unet.train()  # diffusers checkpoints only in training mode
    ckpt = dc_fisher(b, x0, ctx, target=1, draws=1, temperature=0.05)
    assert any(float(f.max()) > 0 for f in plain.values())
    for n in plain:
        assert torch.allclose(ckpt[n], plain[n], rtol=1e-4, atol=1e-6 * float(plain[n].max()) + 1e-20), n
