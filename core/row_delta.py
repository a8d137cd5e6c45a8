"""The trainable state of one concept: the selected rows of every layer (cross-attention projections, ResNet
convolutions) as ONE compact tensor.

Optimizer state is therefore sized to the selected rows, never to whole weight matrices; the frozen
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
    """`delta` is the fp32 master copy of the change, every layer's selected rows flattened into one vector (K/V
    rows read the text width, Q and output rows the block's width). With `scale` (layer -> the layer's weight RMS)
    it is kept in units of that RMS: the change of a row is delta * scale, so Adam's step (~lr per element,
    whatever the weight's size) and the penalties mean the same relative change on the toy model, SD1.5 and SDXL.

    rank > 0: each layer's change of its rows is low-rank, up [rows, rank] @ down [rank, in] (down random, up zero,
    as a LoRA starts), in the same RMS units; `flat_delta()` is then that product, laid out as `delta` would be.
    down's entries are N(0, 1/rank), not LoRA's 1/in: a step of ~lr on `up` then moves each element of the change
    by ~lr and `down` by the same fraction of itself at any width, so the relative lr keeps its meaning on the toy,
    SD1.5 and SDXL. Fewer trained numbers per row: on the toy, a LoRA on the whole cross-attention held by DSC kept
    the base model where full rows of its Q/output projections did not (bench/RESULTS.md)."""

    def __init__(self, rows: dict[str, torch.Tensor], in_dims: dict[str, int], device=None, dtype=torch.float32,
                 scale: dict[str, float] | None = None, rank: int = 0, seed: int = 0):
        super().__init__()
        self.names = [n for n in rows if len(rows[n])]
        self.index = {n: i for i, n in enumerate(self.names)}  # a layer's up/down, looked up on every forward
        self.rows = {n: rows[n].to(device=device, dtype=torch.long) for n in self.names}
        self.in_dims = {n: int(in_dims[n]) for n in self.names}
        sizes = [len(self.rows[n]) * self.in_dims[n] for n in self.names]
        self.offsets = dict(zip(self.names, torch.tensor([0] + sizes).cumsum(0).tolist()))
        self.scale = {n: float(scale[n]) if scale else 1.0 for n in self.names}
        self.rank = int(rank)
        if self.rank:
            g = torch.Generator().manual_seed(seed)
            self.down = nn.ParameterList([
                nn.Parameter((torch.randn(self.rank, self.in_dims[n], generator=g) / self.rank ** 0.5)
                             .to(device=device, dtype=dtype)) for n in self.names])
            self.up = nn.ParameterList([nn.Parameter(torch.zeros(len(self.rows[n]), self.rank, device=device,
                                                                 dtype=dtype)) for n in self.names])
        else:
            self.delta = nn.Parameter(torch.zeros(sum(sizes), device=device, dtype=dtype))

    def __len__(self):
        return sum(len(r) for r in self.rows.values())

    def flat(self, per_layer: dict[str, torch.Tensor]) -> torch.Tensor:
        """Layer -> [rows, in] tensors (in this delta's layer order) as one vector laid out like `delta`."""
        return torch.cat([per_layer[n].reshape(-1) for n in self.names]) if self.names else torch.zeros(0)

    def _units(self, name: str) -> torch.Tensor:
        """The change of the layer's selected rows [rows, in], in RMS units."""
        if self.rank:
            i = self.index[name]
            return self.up[i] @ self.down[i]
        o, n = self.offsets[name], len(self.rows[name])
        return self.delta[o : o + n * self.in_dims[name]].view(n, self.in_dims[name])

    def flat_delta(self) -> torch.Tensor:
        """The whole change in RMS units as one vector (what the row penalties read)."""
        return self.delta if not self.rank else self.flat({n: self._units(n) for n in self.names})

    def layer_delta(self, name: str) -> torch.Tensor:
        """The change of the layer's selected rows [rows, in], in the weights' own units."""
        d = self._units(name)
        return d if self.scale[name] == 1.0 else d * self.scale[name]

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

    @classmethod
    def on(cls, backend: Backend, rows: dict[str, torch.Tensor], device=None, rank: int = 0,
           seed: int = 0) -> "RowDeltas":
        """Zero deltas for `rows` of the backend's projections, in units of each layer's weight RMS."""
        layers = {l.name: l.weight for l in backend.projection_layers() if l.name in rows}
        unknown = set(n for n in rows if len(rows[n])) - set(layers)
        if unknown:
            raise ValueError(f"neurons: layers {sorted(unknown)[:3]} are not layers of this model that rows are chosen "
                             "from (cross-attention projections, ResNet convolutions)")
        return cls(rows, {n: w.shape[1] for n, w in layers.items()}, device,
                   scale={n: weight_rms(w) for n, w in layers.items()}, rank=rank, seed=seed)


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


def all_rows(backend: Backend) -> dict[str, torch.Tensor]:
    """Every K/V row of every layer (dense: for the Custom-Diffusion baseline and tests)."""
    return {l.name: torch.arange(l.weight.shape[0]) for l in backend.kv_layers()}


def row_counts(backend: Backend, parts: str = "qkvo") -> dict[str, int]:
    """Rows of every projection in `parts` (a neuron map's strips, a LoRA's output size)."""
    return {l.name: l.weight.shape[0] for l in backend.layers(parts)}


def weight_shapes(backend: Backend) -> dict[str, tuple[int, ...]]:
    """Every layer's weight shape as the model holds it (a convolution's with its kernel: what a LoRA is laid out as)."""
    return {l.name: tuple(backend.layer_module(l.name).weight.shape) for l in backend.projection_layers()}


def input_widths(backend: Backend, parts: str = "qkvo") -> dict[str, int]:
    """The input width of every projection in `parts`: what one of its rows costs in parameters."""
    return {l.name: l.weight.shape[1] for l in backend.layers(parts)}


def row_params(backend: Backend, rows: dict[str, torch.Tensor]) -> int:
    """How many weights the rows hold (rows x the layer's input width, summed)."""
    width = input_widths(backend)
    return sum(len(r) * width[n] for n, r in rows.items())
