"""Online-EWC Fisher from Diffusion-Classifier scores (Jha et al., ICLR 2025, as reconstructed in DESIGN §2).

F_new = E_x[(dL_DC/dW)^2] over all K/V rows, L_DC = CE(onehot(current concept), P(.|x_t)); one (t, eps)
draw per image and pass, all candidates of that x_t in one UNet call. Returned in fp32 (fp16 zeroed 5.5 %
of the entries of an un-normalised Fisher).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .backends.base import Backend
from .dc_scores import DEFAULT_TEMPERATURE, dc_logits
from .denoise import denoise_error, draw_t_eps
from .row_delta import RowDeltas, all_rows, kv_in_dim


def dc_fisher(backend: Backend, x0: torch.Tensor, contexts: torch.Tensor, target: int, draws: int = 2,
              seed: int = 0, temperature: float = DEFAULT_TEMPERATURE,
              at: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None) -> dict[str, torch.Tensor]:
    """`at` (layer -> (rows, delta)) evaluates the Fisher at W + delta without writing W (hosts that must
    not bake into shared weights, e.g. ComfyUI)."""
    dense = RowDeltas(all_rows(backend), kv_in_dim(backend), backend.device)
    if at:
        with torch.no_grad():
            for n, (rows, d) in at.items():
                dense.delta[dense.offsets[n] + rows.to(dense.delta.device)] = d.to(dense.delta)
    gen = torch.Generator().manual_seed(seed)
    K = contexts.shape[0]
    fisher = torch.zeros_like(dense.delta)
    n = 0
    with dense.applied(backend):
        for _ in range(draws):
            for x in x0:
                t, eps = draw_t_eps(backend, x[None], gen)
                err = denoise_error(backend, x.expand(K, *x.shape), t.expand(K), eps.expand(K, *x.shape), contexts)
                loss = F.cross_entropy(dc_logits(err, temperature)[None], torch.tensor([target], device=err.device))
                dense.delta.grad = None
                loss.backward()
                fisher += dense.delta.grad.pow(2)
                n += 1
    fisher /= max(1, n)
    return {name: fisher[dense.offsets[name] : dense.offsets[name] + len(dense.rows[name])].float().cpu()
            for name in dense.names}
