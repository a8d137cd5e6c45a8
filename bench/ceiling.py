"""The ceiling per concept: a single-concept whole-UNet + token fine-tune from the base model on the same images
and captions (the most this model can take of the concept), through the same training loop as every method.
Methods are reported as a fraction of it."""
from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import replace

import torch

from ..core.images import training_views
from ..core.train import TrainConfig, train_concept

CEILING_LR = 2e-4  # absolute, Adam on every UNet weight (the toy model was pretrained at 6e-4)
# Each ceiling at the step count that measured higher on the toy (bench/RESULTS.md, "The ceiling at 600 steps"): the
# plain fine-tune at 300 steps stopped short (6 paired seeds: 0.832 held-out at 600 against 0.761, higher in 5); with
# the prior term, 600 steps learned less than 300 (2 paired seeds: 0.711 against 0.776)
CEILING_STEPS, CEILING_PRIOR_STEPS = 600, 300


def ceiling_steps(lam_prior: float) -> int:
    """The step count of the ceiling with this prior weight (see CEILING_STEPS)."""
    return CEILING_STEPS if lam_prior == 0 else CEILING_PRIOR_STEPS


def torch_crashes_on_frozen_input_norms(unet, parts: str) -> bool:
    """torch 2.13 (measured on its CPU build) segfaults in GroupNorm's backward when the norm's weights train and its
    input does not (e.g. parts 'resnets\\.'); once conv_in trains, every norm's input carries a gradient."""
    if torch.__version__ >= "2.14":
        return False

    def trains(module: str) -> bool:
        return any(re.search(parts, f"{module}.{w}") for w in ("weight", "bias"))

    norms = [n for n, m in unet.named_modules() if isinstance(m, torch.nn.GroupNorm)]
    return any(trains(n) for n in norms) and not trains("conv_in")


class WholeUNet:
    """Every UNet weight (or those whose names match `parts`, a regex) trainable in place, as the adapter of
    core.train.train_concept (the ceiling trains its own copy of the model, so writing in place is what is wanted)."""

    lr_scale = 1.0

    def __init__(self, unet, parts: str | None = None):
        self.params = [p for n, p in unet.named_parameters() if parts is None or re.search(parts, n)]
        if not self.params:
            raise ValueError(f"parts '{parts}' matches no UNet parameter")
        if parts is not None and torch_crashes_on_frozen_input_norms(unet, parts):
            raise ValueError(f"parts '{parts}' trains GroupNorm weights whose input is frozen: torch "
                             f"{torch.__version__}'s backward pass crashes there (a segfault; 2.14.1 runs it). "
                             f"Add 'conv_in' to the regex or use torch >= 2.14")

    def parameters(self):
        return iter(self.params)

    @contextmanager
    def disabled(self):
        """The weights as they were before training (the teacher of the prior term): a frozen copy, made once, swapped
        in and back."""
        if not hasattr(self, "_before"):
            self._before = [p.detach().clone() for p in self.params]
        now = [p.data for p in self.params]
        for p, b in zip(self.params, self._before):
            p.data = b
        try:
            yield
        finally:
            for p, n in zip(self.params, now):
                p.data = n

    @contextmanager
    def applied(self, backend):
        for p in self.params:
            p.requires_grad_(True)
        try:
            yield self
        finally:
            for p in self.params:
                p.requires_grad_(False)


def fine_tune(make_backend, world, spec, cfg: TrainConfig, lr: float = CEILING_LR, parts: str | None = None,
              lam_prior: float = 0.0):
    """Fine-tune a fresh model on one concept (the ceiling's recipe): the backend with the concept learned, and the
    share of UNet weights trained. `parts` restricts the fine-tune to the UNet weights whose names match (where the
    concept can be carried); lam_prior > 0 holds the world's calibration prompts to the fresh model's predictions
    (prior preservation, core.train.prior_loss)."""
    backend = make_backend()
    views, captions = training_views(spec.images, spec.captions, cfg.flip)
    x0 = backend.encode_images(views)
    # no gradient clipping: on every UNet weight it normalises each step's gradient; a clipped ceiling run measured
    # checker-square 0.46 held-out where an unclipped one (other image draws) measured 0.92, 24 samples each
    cfg = replace(cfg, lr=lr, lam_prev=0, lam_base=0, lam_ewc=0, lam_dsc=0, lam_prior=lam_prior, max_grad_norm=None)
    adapter = WholeUNet(backend.unet, parts)
    res = train_concept(backend, x0, captions or spec.prompt, spec.trigger, None, None, cfg, adapter=adapter,
                        prior_prompts=world.calibration_prompts if lam_prior else None)
    if res.token is not None:
        backend.set_token_row(spec.trigger, res.token)
    n = sum(p.numel() for p in adapter.params)
    return backend, res, 100 * n / backend.unet_param_count()


def ceiling(make_backend, world, spec, cfg: TrainConfig, lr: float = CEILING_LR, parts: str | None = None,
            lam_prior: float = 0.0) -> dict:
    """fine_tune's held-out- and training-context accuracy."""
    backend, res, pct = fine_tune(make_backend, world, spec, cfg, lr, parts, lam_prior)
    # base_after: what the fine-tune costs the model's other prompts, which the ceiling is free to give up and the
    # continual methods are not (bench/RESULTS.md)
    return {"heldout": world.concept_accuracy(backend, spec), "train_context": world.train_context_accuracy(backend, spec),
            "base_after": world.base_accuracy(backend), "seconds": res.seconds, "params_pct": pct}
