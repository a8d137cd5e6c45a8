"""The trainable state of one concept: the selected K/V rows of every layer as ONE compact tensor.

Optimizer state is therefore sized to the selected rows, never to whole K/V matrices; the frozen
weights are only read (the backend adds the delta in output space, or builds W.index_add(0, rows, delta)).
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from .backends.base import Backend


class Switchable:
    """An adapter that can be switched off for a block: the model as it was before this concept (the frozen
    teacher for DSC and the DC Fisher) without keeping a second copy."""

    enabled = True

    @contextmanager
    def disabled(self):
        prev, self.enabled = self.enabled, False
        try:
            yield
        finally:
            self.enabled = prev


class RowDeltas(Switchable, nn.Module):
    """`delta` is the fp32 master copy of the change. With `scale` (layer -> the layer's weight RMS) it is kept in
    units of that RMS: the change of a row is delta * scale, so Adam's step (~lr per element, whatever the
    weight's size) and the penalties mean the same relative change on the toy model, SD1.5 and SDXL."""

    def __init__(self, rows: dict[str, torch.Tensor], in_dim: int, device=None, dtype=torch.float32,
                 scale: dict[str, float] | None = None):
        super().__init__()
        self.names = [n for n in rows if len(rows[n])]
        self.rows = {n: rows[n].to(device=device, dtype=torch.long) for n in self.names}
        sizes = [len(self.rows[n]) for n in self.names]
        self.offsets = dict(zip(self.names, torch.tensor([0] + sizes).cumsum(0).tolist()))
        self.delta = nn.Parameter(torch.zeros(sum(sizes), in_dim, device=device, dtype=dtype))
        self.scale = {n: float(scale[n]) if scale else 1.0 for n in self.names}

    def __len__(self):
        return self.delta.shape[0]

    def layer_delta(self, name: str) -> torch.Tensor:
        """The change of the layer's selected rows, in the weights' own units."""
        o = self.offsets[name]
        d = self.delta[o : o + len(self.rows[name])]
        return d if self.scale[name] == 1.0 else d * self.scale[name]

    def row_scale(self) -> torch.Tensor:
        """[n_rows, 1] the scale of every compact row (to express weight-unit offsets in delta units)."""
        return torch.cat([torch.full((len(self.rows[n]), 1), self.scale[n]) for n in self.names]).to(self.delta)

    def _getter(self, name):
        return lambda: self.layer_delta(name) if self.enabled else None

    @contextmanager
    def applied(self, backend: Backend):
        """Install on the backend for the duration of the block (removed even on error or cancel)."""
        for n in self.names:
            backend.set_row_delta(n, self.rows[n], self._getter(n))
        try:
            yield self
        finally:
            for n in self.names:
                backend.clear_row_delta(n)

    def as_dict(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        return {n: (self.rows[n].cpu(), self.layer_delta(n).detach().float().cpu()) for n in self.names}


@contextmanager
def applied_deltas(backend: Backend, deltas: dict[str, tuple[torch.Tensor, torch.Tensor]]):
    """Fixed row changes (layer -> (rows, delta in weight units)) on the backend for the block; nothing trains."""
    for n, (rows, d) in deltas.items():
        backend.set_row_delta(n, rows, lambda d=d.to(backend.device): d)
    try:
        yield
    finally:
        for n in deltas:
            backend.clear_row_delta(n)


def weight_rms(w: torch.Tensor) -> float:
    """A weight's RMS as it is now: the unit of relative learning rates and penalties."""
    return float(w.detach().float().pow(2).mean().sqrt().clamp_min(1e-12))


def layer_rms(backend: Backend) -> dict[str, float]:
    """weight_rms of every K/V layer."""
    return {l.name: weight_rms(l.weight) for l in backend.kv_layers()}


def all_rows(backend: Backend) -> dict[str, torch.Tensor]:
    """Every K/V row of every layer (dense: for scoring, Fisher, and the Custom-Diffusion baseline)."""
    return {l.name: torch.arange(l.weight.shape[0]) for l in backend.kv_layers()}


def kv_in_dim(backend: Backend) -> int:
    dims = {l.weight.shape[1] for l in backend.kv_layers()}
    if len(dims) != 1:
        raise ValueError(f"cross-attention K/V layers read contexts of different widths {sorted(dims)}")
    return dims.pop()
