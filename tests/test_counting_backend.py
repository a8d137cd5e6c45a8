"""DC scores through a CountingBackend: progress counts every denoiser evaluation; a raise stops within one batch."""
import pytest
import torch

from continual_concepts.core.backends.counting import CountingBackend
from continual_concepts.core.backends.diffusers_backend import DiffusersBackend
from continual_concepts.core.dc_scores import dc_scores
from continual_concepts.core.tiny_model import TinyModelSpec, build_tiny_components


@pytest.fixture(scope="module")
def setup():
    b = DiffusersBackend(**build_tiny_components(TinyModelSpec(sample_size=8)))
    x0 = b.encode_images(torch.rand(3, 8, 8, 3, generator=torch.Generator().manual_seed(0)))
    return b, x0, b.encode_text(["a photo", "a sks", "a dog"])


def test_counts_every_evaluation_and_changes_no_result(setup):
    b, x0, ctx = setup
    seen = []
    r = dc_scores(CountingBackend(b, seen.append), x0, ctx, n_timesteps=5, seed=0, max_batch=8)
    assert seen[-1] == 3 * 5 * 3 and seen == sorted(seen) and len(seen) == -(-45 // 8)
    assert torch.equal(r.errors, dc_scores(b, x0, ctx, n_timesteps=5, seed=0, max_batch=8).errors)


def test_a_raise_from_the_report_stops_after_one_batch(setup):
    b, x0, ctx = setup
    seen = []

    def cancel(done):
        seen.append(done)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        dc_scores(CountingBackend(b, cancel), x0, ctx, n_timesteps=300, seed=0, max_batch=8)
    assert seen == [8]
