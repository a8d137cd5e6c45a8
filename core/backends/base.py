"""The one interface core talks to; ComfyUI and diffusers each implement it (core never imports comfy).

Conventions: images are float [B,H,W,3] in 0..1 (ComfyUI IMAGE layout); timesteps are integers in
0..T-1; x_t is variance-preserving, x_t = sqrt(abar_t) x0 + sqrt(1-abar_t) eps; predictions are eps.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable

import torch


def rows_view(w: torch.Tensor) -> torch.Tensor:
    """A weight as rows: [out, in] for a linear layer, a convolution's [out, in, kh, kw] as [out, in*kh*kw] (a view:
    it reads and writes the live weight)."""
    return w if w.dim() == 2 else w.view(w.shape[0], -1)


def _conv_args(module) -> tuple:
    """stride, padding, dilation of a convolution whose output channels can be rows (each reads every input)."""
    if getattr(module, "padding_mode", "zeros") != "zeros" or module.groups != 1:
        raise ValueError(f"{type(module).__name__}: row deltas need zero padding and groups 1 (got "
                         f"{module.padding_mode!r}, {module.groups})")
    return module.stride, module.padding, module.dilation


def row_delta_hook(rows: torch.Tensor, get_delta: Callable[[], torch.Tensor | None]):
    """Forward hook adding a row delta in output space: out[..., rows] += x @ delta^T for a linear layer, and for a
    convolution its output channels `rows` += conv(x, delta as [rows, in, kh, kw]).

    Only the selected rows get gradients and no full-size effective weight is built."""

    def hook(module, inputs, out):
        d = get_delta()
        if d is None:
            return out
        x, d = inputs[0], d.to(out.dtype)
        if isinstance(module, torch.nn.Conv2d):
            y = torch.nn.functional.conv2d(x, d.view(len(rows), *module.weight.shape[1:]), None, *_conv_args(module))
            return out.index_add(1, rows.to(out.device), y)
        return out.index_add(out.dim() - 1, rows.to(out.device), torch.nn.functional.linear(x, d))

    return hook


def weight_grad_hook(fn: Callable[[torch.Tensor], None]):
    """Forward hook after which the backward pass calls fn(dL/dW) for the layer's whole weight as rows ([out, in],
    a convolution's [out, in*kh*kw]) in fp32, computed from the output's gradient and the input (g^T x for a linear
    layer). Nothing is trained: the output becomes a leaf that asks for a gradient, so only one layer's gradient
    exists at a time (an all-rows zero delta would keep the size of every K/V weight twice, 2.5 GiB on SDXL)."""

    def hook(module, inputs, out):
        x = inputs[0].detach()
        if not out.requires_grad:
            out = out.detach().requires_grad_(True)
        if isinstance(module, torch.nn.Conv2d):
            shape = module.weight.shape
            out.register_hook(lambda g: fn(torch.nn.grad.conv2d_weight(x.float(), shape, g.float(), *_conv_args(module))
                                           .reshape(shape[0], -1)))
        else:
            out.register_hook(lambda g: fn(g.reshape(-1, g.shape[-1]).float().T @ x.reshape(-1, x.shape[-1]).float()))
        return out

    return hook


class UnsupportedModelError(ValueError):
    """The model has no cross-attention K/V projections (or is of a family we cannot train)."""


PARTS = ("kv", "qkvo", "qkvoc")  # which layers neurons are chosen from (SelectConfig.parts): cross-attention K/V,
# + its Q and output projections, + the output channels of every ResNet block's two convolutions ("c")


@dataclass(frozen=True)
class ProjectionLayer:
    """One layer whose rows are 'neurons': a cross-attention projection (K/V read the text context; Q and the output
    projection read the image features) or a ResNet block's convolution (a row: one output channel's kernels)."""

    name: str  # backend-native dotted module name, stable across runs
    kind: str  # "q", "k", "v", "o" (output projection) or "c" (ResNet convolution)
    weight: torch.Tensor  # live weight of the model as it is now, as rows [out, in] (rows_view; never written by core)


WeightFn = Callable[[torch.Tensor], torch.Tensor]


class Backend(ABC):
    """A text-to-image diffusion model with cross-attention, seen through the few operations core needs."""

    device: torch.device
    dtype: torch.dtype

    @abstractmethod
    def projection_layers(self) -> list[ProjectionLayer]:
        """Every cross-attention projection (Q, K, V, output) and ResNet convolution, in a fixed order."""

    def kv_layers(self) -> list[ProjectionLayer]:
        """The cross-attention K/V projections (what the model fingerprint hashes)."""
        return self.layers("kv")

    def layers(self, parts: str) -> list[ProjectionLayer]:
        """The layers whose kind is in `parts` (e.g. "kv", "qkvo", "qkvoc")."""
        if parts not in PARTS:
            raise ValueError(f"parts must be one of {', '.join(PARTS)} (got {parts!r})")
        return [l for l in self.projection_layers() if l.kind in parts]

    @abstractmethod
    def set_weight_fn(self, layer: str, fn: WeightFn | None) -> None:
        """Make `layer` compute with fn(W) instead of W (None removes it). fn must not modify W."""

    def set_row_delta(self, layer: str, rows: torch.Tensor, get_delta: Callable[[], torch.Tensor | None]) -> None:
        """Make `layer` compute with W[rows] += get_delta() (None from get_delta: unchanged W).

        Default: through set_weight_fn. Hosts that can should override it to add the delta in output
        space, so only the selected rows ever get gradients (no full-size effective weight per step)."""

        def fn(w):
            d = get_delta()
            return w if d is None else w.index_add(0, rows.to(w.device), d.to(w.dtype))

        self.set_weight_fn(layer, fn)

    def clear_row_delta(self, layer: str) -> None:
        self.set_weight_fn(layer, None)

    def set_weight_grad_tap(self, layer: str, fn: Callable[[torch.Tensor], None] | None) -> None:
        """Call fn(dL/dW) for `layer` in every backward pass (None removes it); see weight_grad_hook."""
        taps = self.__dict__.setdefault("_taps", {})
        if layer in taps:
            taps.pop(layer).remove()
        if fn is not None:
            taps[layer] = self.layer_module(layer).register_forward_hook(weight_grad_hook(fn))

    def layer_module(self, layer: str) -> torch.nn.Module:
        """The torch module of a K/V layer (hosts that run plain modules; needed for gradient taps)."""
        raise NotImplementedError(f"{type(self).__name__} cannot tap weight gradients")

    @abstractmethod
    def bake_rows(self, layer: str, rows: torch.Tensor, delta: torch.Tensor) -> None:
        """W[rows] += delta, permanently (used when merging a learned concept into this model)."""

    @abstractmethod
    def unet_param_count(self) -> int:
        """Number of parameters of the denoiser (the budget's denominator)."""

    @abstractmethod
    def trigger_token_id(self, trigger: str) -> int:
        """Token id of a one-token trigger word; raises ValueError naming the trigger otherwise."""

    @abstractmethod
    def token_row(self, trigger: str) -> torch.Tensor:
        """Current input-embedding row of the trigger word (a copy)."""

    @abstractmethod
    def set_token_row(self, trigger: str, value: torch.Tensor) -> None:
        """Write the trigger word's input-embedding row (merge a learned concept token)."""

    @abstractmethod
    def encode_text(self, prompts: list[str], tokens: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Text context [B, L, D] fed to cross-attention; `tokens` overrides trigger-word embeddings
        (differentiably, so a concept token can be trained)."""

    def text_context(self, context: torch.Tensor) -> torch.Tensor:
        """The positions of an encode_text context that cross-attention reads. A backend may carry more in a
        context (SDXL's pooled vector); core treats contexts as opaque apart from this."""
        return context

    @abstractmethod
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Images [B,H,W,3] in 0..1 -> x0 in the denoiser's space (scaled latents or pixels)."""

    @abstractmethod
    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        """x0 -> images [B,H,W,3] in 0..1."""

    @property
    @abstractmethod
    def alphas_cumprod(self) -> torch.Tensor:
        """abar_t for t = 0..T-1 (float32, on self.device)."""

    @abstractmethod
    def predict_eps(self, x_t: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """eps prediction for a batch; t is a [B] long tensor."""

    def set_compute_dtype(self, dtype: torch.dtype) -> None:
        """Make the frozen model compute in `dtype` whatever dtype it stores its weights in (core.precision)."""
        if dtype != self.dtype:
            raise NotImplementedError(f"{type(self).__name__} computes in {self.dtype} only")

    def enable_gradient_checkpointing(self) -> None:  # optional speed/memory switch
        """Trade compute for memory during training, where the host supports it."""

    def networks(self) -> list[torch.nn.Module]:
        """The modules a training step runs through: their weights are resident, not kept activations."""
        return []

    def free_memory(self) -> int | None:
        """Bytes free on the training device (None: unknown): a CUDA device's free memory, else the system's
        available RAM."""
        dev = torch.device(self.device)
        if dev.type == "cuda":
            return torch.cuda.mem_get_info(dev)[0]
        try:
            with open("/proc/meminfo") as f:
                return next(int(l.split()[1]) * 1024 for l in f if l.startswith("MemAvailable:"))
        except (OSError, StopIteration):
            return None

    @property
    def num_timesteps(self) -> int:
        return int(self.alphas_cumprod.shape[0])

    def add_noise(self, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        abar = self.alphas_cumprod.to(x0.device)[t].view(-1, *([1] * (x0.dim() - 1))).to(x0.dtype)
        return abar.sqrt() * x0 + (1 - abar).sqrt() * eps

    def noise_and_predict_eps(self, x0, t, eps, context):
        return self.predict_eps(self.add_noise(x0, t, eps), t, context)
