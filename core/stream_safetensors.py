"""Write a safetensors file one tensor at a time, casting each as it goes.

A full-size checkpoint is written from the live model's weights: casting them all first (SDXL's fp32 weights
held on a CPU to fp16) would add a second model's worth of memory. The format is the documented one: an
8-byte little-endian header length, a JSON header (dtype, shape, byte offsets; space-padded to 8 bytes),
then the raw little-endian bytes with no holes."""
from __future__ import annotations

import json
import struct
import sys

import torch

DTYPE_NAMES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
               torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
               torch.bool: "BOOL"}


def write_safetensors(path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None,
                      float_dtype: torch.dtype | None = None) -> None:
    """Every floating tensor stored as float_dtype (None: as it is); others as they are."""
    if sys.byteorder != "little":
        raise RuntimeError("safetensors is little-endian; this writer runs on little-endian machines only")

    def out_dtype(t):
        return float_dtype if float_dtype is not None and t.is_floating_point() else t.dtype

    header, offset = {}, 0
    for k, t in tensors.items():
        n = t.numel() * torch.empty((), dtype=out_dtype(t)).element_size()
        header[k] = {"dtype": DTYPE_NAMES[out_dtype(t)], "shape": list(t.shape), "data_offsets": [offset, offset + n]}
        offset += n
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        for k, t in tensors.items():
            data = t.detach().to("cpu", out_dtype(t)).contiguous()
            f.write(data.reshape(-1).view(torch.uint8).numpy().tobytes() if data.numel() else b"")
