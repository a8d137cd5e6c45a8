"""The one denoising measurement every part of the method is built on: noise x0 at t, predict eps, and
score the prediction per sample. Training, neuron scoring, DC scores, DSC and the DC Fisher all call it,
so they agree on what "the model's error on an image under a prompt" is."""
from __future__ import annotations

import torch

from .backends.base import Backend


def draw_t_eps(backend: Backend, x0: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One uniform timestep and one Gaussian noise per sample, from a CPU generator (same draws on any device)."""
    t = torch.randint(0, backend.num_timesteps, (len(x0),), generator=gen).to(backend.device)
    eps = torch.randn(x0.shape, generator=gen).to(x0)
    return t, eps


def denoise_error(backend: Backend, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, context: torch.Tensor,
                  return_pred: bool = False):
    """Per-sample mean squared eps error [B] in fp32 (a mean over latent elements, so its size does not grow
    with the latent: the same number means the same thing on the toy model, SD1.5 and SDXL).
    Differentiable when grad is enabled; with return_pred also the fp32 prediction."""
    pred = backend.noise_and_predict_eps(x0, t, eps, context).float()
    err = (pred - eps.float()).pow(2).flatten(1).mean(1)
    return (err, pred) if return_pred else err
