"""DDIM sampling with classifier-free guidance over any Backend (CLI previews, benchmarks, the toy world)."""
from __future__ import annotations

import torch

from .backends.base import Backend


@torch.no_grad()
def sample(
    backend: Backend,
    prompts: list[str],
    steps: int = 25,
    guidance: float = 3.0,
    seed: int = 0,
    negative: str = "",
    shape: tuple[int, ...] | None = None,
    tokens: dict[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Generate one image per prompt -> [B,H,W,3] in 0..1. Deterministic for a seed on CPU."""
    n = len(prompts)
    cond = backend.encode_text(prompts, tokens)
    uncond = backend.encode_text([negative] * n)
    shape = shape or _x0_shape(backend)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((n, *shape), generator=gen).to(backend.device, backend.dtype)
    abar = backend.alphas_cumprod
    T = backend.num_timesteps
    ts = torch.linspace(T - 1, 0, steps).round().long().tolist()
    for i, t in enumerate(ts):
        tt = torch.full((n,), t, device=backend.device, dtype=torch.long)
        if guidance == 1.0:
            eps = backend.predict_eps(x, tt, cond)
        else:
            e = backend.predict_eps(torch.cat([x, x]), torch.cat([tt, tt]), torch.cat([uncond, cond]))
            eu, ec = e.chunk(2)
            eps = eu + guidance * (ec - eu)
        a_t = abar[t]
        a_prev = abar[ts[i + 1]] if i + 1 < len(ts) else torch.tensor(1.0, device=abar.device)
        x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
        x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
    return backend.decode(x)


def _x0_shape(backend) -> tuple[int, ...]:
    unet = getattr(backend, "unet", None)
    if unet is None:
        raise ValueError("sample(): pass shape= for this backend")
    s = unet.config.sample_size
    return (unet.config.in_channels, s, s)
