"""The streaming safetensors writer: files the safetensors library reads back exactly, floats cast on the way."""
import torch
from safetensors import safe_open

from continual_concepts.core.stream_safetensors import write_safetensors


def test_written_file_reads_back_with_floats_cast(tmp_path):
    g = torch.Generator().manual_seed(0)
    t = {"a.weight": torch.randn(5, 3, generator=g), "b": torch.randn(7, generator=g).to(torch.bfloat16),
         "ids": torch.arange(6).reshape(2, 3), "flag": torch.tensor([True, False]), "empty": torch.zeros(0, 4),
         "strided": torch.randn(4, 6, generator=g).T}
    for dtype in (None, torch.float16, torch.bfloat16):
        p = tmp_path / f"{dtype}.safetensors"
        write_safetensors(p, t, {"who": "test"}, float_dtype=dtype)
        with safe_open(str(p), "pt") as f:
            assert f.metadata() == {"who": "test"}
            assert set(f.keys()) == set(t)
            for k, v in t.items():
                want = v.to(dtype) if dtype is not None and v.is_floating_point() else v
                got = f.get_tensor(k)
                assert got.dtype == want.dtype and got.shape == want.shape, k
                assert torch.equal(got, want), k
