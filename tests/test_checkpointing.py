"""Gradient checkpointing auto: what one forward keeps is measured, and decides on/off against the free memory."""
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


@pytest.mark.parametrize("free, on", [(10**12, False), (1, True), (None, False)])
def test_auto_turns_checkpointing_on_only_when_the_step_would_not_fit(free, on, monkeypatch):
    b = _backend(8)
    monkeypatch.setattr(b, "free_memory", lambda: free)
    calls = []
    monkeypatch.setattr(b, "enable_gradient_checkpointing", lambda: calls.append(1))
    x0 = b.encode_images(torch.rand(3, 8, 8, 3, generator=torch.Generator().manual_seed(0)))
    res = train_concept(b, x0, "a sks", "sks", _rows(b), None, TrainConfig(steps=1, batch_size=2, lam_dsc=0))
    assert res.checkpointing["on"] is on and bool(calls) is on
    assert res.checkpointing["saved_mib_per_sample"] > 0 and res.checkpointing["passes"] == 2


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


def test_on_off_skip_the_measurement_and_bad_values_are_one_clear_error():
    assert decide("on", lambda: 1 / 0, 1, 0) == {"mode": "on", "on": True}
    assert decide("off", lambda: 1 / 0, 1, 0) == {"mode": "off", "on": False}
    with pytest.raises(ValueError, match="gradient_checkpointing must be one of auto, on, off"):
        TrainConfig(gradient_checkpointing=True).validate()
