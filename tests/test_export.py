"""Exports: row delta == LoRA with a row-selecting up matrix; delta/embedding files round-trip; atomic."""
import pytest
import torch

from continual_concepts.core.atomic_io import OutputExistsError
from continual_concepts.core.export import (
    load_concept_delta, row_delta_as_lora, save_concept_delta, save_embedding,
)
from continual_concepts.core.memory import ConceptRecord


def test_row_delta_is_a_lora():
    w = torch.randn(12, 5)
    rows = torch.tensor([1, 7, 11])
    delta = torch.randn(3, 5)
    up, down = row_delta_as_lora(rows, delta, (12, 5))
    expect = w.clone()
    expect[rows] += delta
    assert torch.allclose(w + up @ down, expect)
    assert up.shape == (12, 3) and down.shape == (3, 5)


def test_conv_row_delta_is_a_conv_lora():
    """A convolution's rows (output channels) as the [out, r, 1, 1] @ [r, in, kh, kw] pair LoRA loaders read: the
    flattened product is the row change, and applied as two convolutions it changes just those channels' outputs."""
    conv = torch.nn.Conv2d(4, 6, 3, padding=1)
    rows = torch.tensor([0, 5])
    delta = torch.randn(2, 4 * 9)
    up, down = row_delta_as_lora(rows, delta, tuple(conv.weight.shape))
    assert up.shape == (6, 2, 1, 1) and down.shape == (2, 4, 3, 3)
    assert torch.allclose((up.flatten(1) @ down.flatten(1))[rows], delta) and (up.flatten(1) @ down.flatten(1))[1:5].eq(0).all()
    x = torch.randn(1, 4, 5, 5)
    lora = torch.nn.functional.conv2d(torch.nn.functional.conv2d(x, down, padding=1), up)
    changed = conv.weight.detach().clone()
    changed.view(6, -1)[rows] += delta
    assert torch.allclose(conv(x) + lora, torch.nn.functional.conv2d(x, changed, conv.bias, padding=1), atol=1e-5)


def test_delta_file_round_trip_and_never_overwrites(tmp_path):
    rec = ConceptRecord("dog", "sks", "a sks dog", rows={"l.to_k": torch.tensor([0, 3])},
                        delta={"l.to_k": torch.randn(2, 4)}, token=torch.randn(4))
    p = save_concept_delta(tmp_path / "d.safetensors", rec)
    back = load_concept_delta(p)
    assert (back.name, back.trigger, back.prompt) == ("dog", "sks", "a sks dog")
    assert torch.equal(back.rows["l.to_k"], rec.rows["l.to_k"])
    assert torch.allclose(back.delta["l.to_k"], rec.delta["l.to_k"], atol=1e-3)  # stored fp16
    assert torch.equal(back.token, rec.token)
    with pytest.raises(OutputExistsError):
        save_concept_delta(p, rec)
    assert sorted(x.name for x in tmp_path.iterdir()) == ["d.safetensors"]


def test_embedding_file_has_comfy_key(tmp_path):
    from safetensors.torch import load_file

    p = save_embedding(tmp_path / "sks.safetensors", "sks", torch.randn(8))
    t = load_file(p)
    assert list(t) == ["emb_params"] and t["emb_params"].shape == (1, 8)
