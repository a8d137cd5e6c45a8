"""Whole-weight gradients of cross-attention projections, handed over one layer at a time in the backward pass.

Selection's Taylor scores and the DC Fisher need dL/dW for every row they rank but train nothing: reading it off
a trainable all-rows zero delta kept the delta and its gradient, each the size of all K/V weights (SDXL: 341 M
values, 1.3 GiB apiece in fp32), for the whole pass. Here each layer's gradient exists only while its
consumer reduces it.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable

import torch

from .backends.base import Backend


@contextmanager
def weight_grads(backend: Backend, names: list[str], fn: Callable[[str, torch.Tensor], None]):
    """Within the block, every backward pass calls fn(layer name, dL/dW [out, in] fp32) for every layer named."""
    try:
        for n in names:
            backend.set_weight_grad_tap(n, lambda g, n=n: fn(n, g))
        yield
    finally:
        for n in names:
            backend.set_weight_grad_tap(n, None)
