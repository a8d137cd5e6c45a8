"""Online-EWC Fisher from Diffusion-Classifier scores (Jha et al., ICLR 2025, as reconstructed in DESIGN §2).

F_new = E_x[(dL_DC/dW)^2] over every row of the projections named (K/V, or all four), L_DC = CE(onehot(current concept), P(.|x_t)); one (t, eps)
draw per image and pass, all candidates of that x_t in one UNet call; dL/dW read layer by layer (weight_grads).
Returned in fp32 (fp16 zeroed 5.5 % of the entries of an un-normalised Fisher).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .backends.base import Backend
from .dc_scores import DEFAULT_TEMPERATURE, dc_logits
from .denoise import denoise_error, draw_t_eps
from .row_delta import applied_deltas
from .weight_grads import weight_grads


def dc_fisher(backend: Backend, x0: torch.Tensor, contexts: torch.Tensor, target: int, draws: int = 2,
              seed: int = 0, temperature: float = DEFAULT_TEMPERATURE,
              at: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
              parts: str = "kv") -> dict[str, torch.Tensor]:
    """`at` (layer -> (rows, delta)) evaluates the Fisher at W + delta without writing W (hosts that must
    not bake into shared weights, e.g. ComfyUI)."""
    fisher = {l.name: torch.zeros(l.weight.shape, device=backend.device) for l in backend.layers(parts)}

    def add_square(n, g):
        fisher[n] += g.pow(2)

    gen = torch.Generator().manual_seed(seed)
    K = contexts.shape[0]
    n = 0
    with applied_deltas(backend, at or {}), weight_grads(backend, list(fisher), add_square):
        for _ in range(draws):
            for x in x0:
                t, eps = draw_t_eps(backend, x[None], gen)
                err = denoise_error(backend, x.expand(K, *x.shape), t.expand(K), eps.expand(K, *x.shape), contexts)
                loss = F.cross_entropy(dc_logits(err, temperature)[None], torch.tensor([target], device=err.device))
                loss.backward()
                n += 1
    return {name: (f / max(1, n)).cpu() for name, f in fisher.items()}
