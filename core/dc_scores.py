"""Diffusion-Classifier scores: the model's own denoising errors under candidate prompts, as probabilities.

err[i,k] = mean over n evenly spaced timesteps (and over latent elements) of ||eps - eps_theta(x_t, c_k)||^2,
with one eps per (image, timestep) shared by every candidate, and all candidates of one x_t in one UNet call.
P(c_k|x_i) = softmax_k(-err[i,k] / T), err a per-element mean [assumption: neither paper states a temperature].
Li et al. (2023) classify with the per-image *sum* of squares (T = 1 / number of latent elements): right for an
argmax, but as a probability it saturates as the latent grows (68 % of single draws gave p > 0.99 on the
8x8x4 toy latent; one-hot at SD1.5's 16,384 or SDXL's 65,536 elements), which leaves the DC Fisher and the DSC
KL without gradient. A per-element error with a fixed T keeps P's entropy independent of the latent size;
DEFAULT_TEMPERATURE was chosen from the error gaps measured on the toy model (see bench/RESULTS.md).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .backends.base import Backend
from .denoise import denoise_error

DEFAULT_TEMPERATURE = 0.01


def even_timesteps(T: int, n: int) -> torch.Tensor:
    """Li et al.: t = T//n//2 + j*T//n, j = 0..n-1 (evenly spaced beats random or a middle window)."""
    return torch.arange(n) * (T // n) + T // n // 2


def shared_noise(x0: torch.Tensor, n_t: int, seed: int) -> torch.Tensor:
    """[N, n_t, *latent] noise, one draw per (image, timestep), identical for every candidate."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn((x0.shape[0], n_t, *x0.shape[1:]), generator=gen).to(x0)


def dc_errors(
    backend: Backend,
    x0: torch.Tensor,
    contexts: torch.Tensor,
    timesteps: torch.Tensor,
    noise: torch.Tensor,
    max_batch: int = 64,
    candidates: torch.Tensor | None = None,
) -> torch.Tensor:
    """Raw errors [N, K, n_t] (K = len(candidates) or all contexts). Differentiable if grad is enabled."""
    N, n_t = x0.shape[0], len(timesteps)
    cand = torch.arange(contexts.shape[0]) if candidates is None else candidates
    K = len(cand)
    ii, jj, kk = torch.meshgrid(torch.arange(N), torch.arange(n_t), torch.arange(K), indexing="ij")
    ii, jj, kk = ii.flatten(), jj.flatten(), kk.flatten()
    out = []
    for s in range(0, len(ii), max_batch):
        i, j, k = ii[s : s + max_batch], jj[s : s + max_batch], kk[s : s + max_batch]
        out.append(denoise_error(backend, x0[i], timesteps[j].to(backend.device), noise[i, j], contexts[cand[k]]))
    return torch.cat(out).view(N, n_t, K).transpose(1, 2)


def dc_logits(err: torch.Tensor, temperature: float = DEFAULT_TEMPERATURE) -> torch.Tensor:
    """err [N, K] per-element mean errors -> logits; softmax of these is P(c|x)."""
    return -err / temperature


def mean_entropy(probs: torch.Tensor) -> float:
    """Mean entropy of P(c|x) [N, K] in nats (0: one-hot, log K: uniform): how far from saturation P is."""
    return float(-(probs * probs.clamp_min(1e-30).log()).sum(1).mean())


@dataclass
class DCResult:
    errors: torch.Tensor  # [N, K] mean error per candidate (inf where eliminated by successive halving)
    raw: torch.Tensor  # [N, K, n_t] per-timestep errors (nan where not evaluated)
    probs: torch.Tensor  # [N, K]
    predicted: torch.Tensor  # [N] index of the best candidate
    timesteps: torch.Tensor


@torch.no_grad()
def dc_scores(
    backend: Backend,
    x0: torch.Tensor,
    contexts: torch.Tensor,
    n_timesteps: int = 16,
    seed: int = 0,
    temperature: float = DEFAULT_TEMPERATURE,
    max_batch: int = 64,
    halving: list[tuple[int, int]] | None = None,
) -> DCResult:
    """Score every image against every candidate context [K, L, D].

    halving: optional successive elimination stages [(keep, n_trials), ...]: after each stage only the
    `keep` candidates with the lowest mean error stay (Li et al., Alg. 2); the last stage's trials end at
    n_timesteps in total.
    """
    N, K = x0.shape[0], contexts.shape[0]
    ts = even_timesteps(backend.num_timesteps, n_timesteps)
    noise = shared_noise(x0, n_timesteps, seed)
    if not halving:
        raw = dc_errors(backend, x0, contexts, ts, noise, max_batch)
    else:
        raw = torch.full((N, K, n_timesteps), float("nan"))
        order = torch.randperm(n_timesteps, generator=torch.Generator().manual_seed(seed))
        for i in range(N):
            alive, done = torch.arange(K), 0
            for keep, trials in halving:
                idx = order[done : done + trials]
                if len(idx) == 0:
                    break
                e = dc_errors(backend, x0[i : i + 1], contexts, ts[idx], noise[i : i + 1, idx], max_batch, alive)
                raw[i, alive.unsqueeze(1), idx.unsqueeze(0)] = e[0].cpu()
                done += len(idx)
                mean = raw[i, alive].nanmean(1)
                alive = alive[mean.argsort()[: max(1, keep)]]
    raw = raw.cpu()
    err = raw.nanmean(2)
    if halving:  # candidates eliminated early cannot win: give them no probability
        evaluated = ~raw.isnan()
        full = evaluated.sum(2) == evaluated.sum(2).max(1, keepdim=True).values
        err = torch.where(full, err, torch.full_like(err, float("inf")))
    probs = torch.softmax(dc_logits(err, temperature), dim=1)
    return DCResult(err, raw, probs, err.argmin(1), ts)
