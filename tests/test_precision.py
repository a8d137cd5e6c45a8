"""Training arithmetic (core.precision): the trainable deltas stay fp32 masters; a UNet held in fp16 trains as in
fp32 with precision auto (fp32 arithmetic on a CPU); fp16 arithmetic loses gradients unless the loss is scaled."""
import math

import pytest
import torch

from continual_concepts.core.backends.diffusers_backend import DiffusersBackend
from continual_concepts.core.denoise import denoise_error, draw_t_eps
from continual_concepts.core.precision import compute_dtype
from continual_concepts.core.row_delta import RowDeltas, all_rows
from continual_concepts.core.tiny_model import TinyModelSpec, build_tiny_components
from continual_concepts.core.train import TrainConfig, train_concept

S = 32  # latent side: fp16's underflow grows with the latent (8x8 hides it)


def _backend(held):
    return DiffusersBackend(**build_tiny_components(TinyModelSpec(sample_size=S, in_channels=4)), dtype=held)


def _row_grads(held, precision, loss_scale=1.0):
    b = _backend(held)
    b.set_compute_dtype(compute_dtype(precision, b.device))
    d = RowDeltas.on(b, all_rows(b), b.device)
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(4, 4, S, S, generator=gen)
    with d.applied(b):
        t, eps = draw_t_eps(b, x0, gen)
        loss = denoise_error(b, x0, t, eps, b.encode_text(["a photo of sks"] * 4)).mean()
        (loss * loss_scale).backward()
    assert d.delta.dtype == torch.float32, "the trainable delta is the fp32 master"
    return d.delta.grad / loss_scale


def _compare(g, ref):
    return float((g - ref).norm() / ref.norm()), int(((g == 0) & (ref != 0)).sum())


def test_unet_held_in_fp16_trains_like_fp32_with_auto_and_fp16_needs_loss_scaling():
    ref = _row_grads(torch.float32, "fp32")
    rel, lost = _compare(_row_grads(torch.float16, "auto"), ref)
    assert rel < 0.01 and lost == 0, (rel, lost)
    rel16, lost16 = _compare(_row_grads(torch.float16, "fp16"), ref)
    assert lost16 > 0, "unscaled fp16 arithmetic should lose gradient entries at this size (else this test is blind)"
    rel_s, lost_s = _compare(_row_grads(torch.float16, "fp16", loss_scale=2.0**16), ref)  # GradScaler's first scale
    assert lost_s == 0 and rel_s < 0.05, (rel_s, lost_s)


def test_fp16_training_runs_with_its_grad_scaler_and_bad_precision_is_an_error():
    b = DiffusersBackend(**build_tiny_components(TinyModelSpec(sample_size=8)), dtype=torch.float16)
    x0 = b.encode_images(torch.rand(2, 8, 8, 3))
    rows = {l.name: torch.arange(3) for l in b.kv_layers()}
    res = train_concept(b, x0, "a photo of sks", "sks", rows, None, TrainConfig(steps=3, precision="fp16"))
    assert b.dtype == torch.float16 and all(math.isfinite(h["total"]) for h in res.history)
    assert all(d.dtype == torch.float32 and d.abs().sum() > 0 for _, d in res.deltas.values())
    assert res.token.dtype == torch.float32
    with pytest.raises(ValueError, match="precision must be one of auto, bf16, fp32, fp16"):
        TrainConfig(precision="fp8").validate()
