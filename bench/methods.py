"""The methods the continual benchmark compares, each learning one concept into the model in place.

naive        sequential fine-tuning of every K/V row, no regulariser (Custom-Diffusion style, continual)
clora        K/V LoRA per task + C-LoRA self-regulariser || |sum of past BA| ⊙ BA ||^2 (Smith et al.),
             each task's BA merged into the weights before the next
clora-xattn  the same on every cross-attention projection (Q, K, V, output): what the layers K/V-only methods
             cannot reach add under a continual regulariser (toy: they carry most of the gap to the whole UNet)
lora-xattn+dsc  LoRA rank 16 on every cross-attention projection, held by DSC instead of C-LoRA's penalty
cns          concept-neuron selection + CNS L_reg (rows of earlier concepts / pretrained rows)
cns+ewc      + EWC with the online DC-score Fisher
cns+ewc+dsc  + DSC distillation against the model before the concept
cns+dsc      CNS + DSC without EWC-DC, with the prior term (lam_prior, from the given config): our default
             (EWC-DC showed no measurable effect; the prior term let the rows learn more, bench/RESULTS.md)
The methods with EWC-DC take lam_ewc from the given config (the benchmarks set 1.0); the others zero what they omit,
the prior term included.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import replace

import torch
from torch import nn

from ..core.continual import learn_concept, merge_result
from ..core.images import training_views
from ..core.memory import ConceptRecord
from ..core.row_delta import Switchable, all_rows, weight_rms
from ..core.train import TrainConfig, train_concept

METHODS = ("naive", "clora", "clora-xattn", "lora-xattn+dsc", "cns", "cns+ewc", "cns+ewc+dsc", "cns+dsc")
DEFAULT_METHOD = "cns+dsc"
XATTN_DSC_RANK = 16  # lora-xattn+dsc: no low-rank penalty holds it, so more rank than C-LoRA's 4


class CLoRA(Switchable, nn.Module):
    """One LoRA per K/V layer (or per layer named); penalty = lam * sum || |anchor| ⊙ (B A) ||_F^2, anchor = sum of
    past B A (lam 0: plain LoRA)."""

    def __init__(self, backend, anchors: dict[str, torch.Tensor], rank: int, lam: float, seed: int,
                 names: list[str] | None = None):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.names = names or [l.name for l in backend.kv_layers()]
        weights = {n: backend.layer_module(n).weight for n in self.names}
        shapes = {n: w.shape for n, w in weights.items()}
        self.A = nn.ParameterList([nn.Parameter(torch.randn(rank, shapes[n][1], generator=g) / shapes[n][1] ** 0.5)
                                   for n in self.names])
        self.B = nn.ParameterList([nn.Parameter(torch.zeros(shapes[n][0], rank)) for n in self.names])
        self.anchors, self.lam = anchors, lam
        # the training loop's lr is relative: B A then moves by about lr x the layers' weight RMS per step
        self.lr_scale = sum(weight_rms(w) for w in weights.values()) / len(weights)

    def product(self, i):
        return self.B[i] @ self.A[i]

    @contextmanager
    def applied(self, backend):
        for i, n in enumerate(self.names):
            backend.set_weight_fn(n, lambda w, i=i: w + self.product(i).to(w.dtype) if self.enabled else w)
        try:
            yield self
        finally:
            for n in self.names:
                backend.set_weight_fn(n, None)

    def penalty(self):
        if not self.anchors or self.lam == 0:
            return {}
        return {"clora": self.lam * sum((self.anchors[n].abs() * self.product(i)).pow(2).sum()
                                        for i, n in enumerate(self.names) if n in self.anchors)}


def cross_attention_layers(backend) -> list[str]:
    """Every linear projection of the UNet's cross-attention blocks (diffusers names: attn2.to_q/k/v, to_out.0)."""
    return [n for n, m in backend.unet.named_modules() if isinstance(m, nn.Linear) and ".attn2." in n]


def _train_cfg(method: str, base: TrainConfig) -> TrainConfig:
    if method == "cns+dsc":
        return replace(base, lam_ewc=0)
    base = replace(base, lam_prior=0)  # the prior term is the default's own (bench/RESULTS.md, "Prior preservation")
    if method in ("naive", "clora", "clora-xattn"):
        return replace(base, lam_prev=0, lam_base=0, lam_ewc=0, lam_dsc=0)
    if method == "lora-xattn+dsc":
        return replace(base, lam_prev=0, lam_base=0, lam_ewc=0)
    if method == "cns":
        return replace(base, lam_ewc=0, lam_dsc=0)
    if method == "cns+ewc":
        return replace(base, lam_dsc=0)
    return base


def learn(method: str, backend, memory, images, name, trigger, prompt, select_cfg, train_cfg: TrainConfig,
          calibration_prompts, state: dict, clora_rank: int = 4, clora_lam: float = 1e3, naive_lr: float | None = None,
          captions: list[str] | None = None):
    """Learn one concept with `method` (merged into backend + memory); returns its TrainResult.

    `state` carries what a method keeps between tasks (C-LoRA's anchors)."""
    if method not in METHODS:
        raise ValueError(f"method '{method}' is not one of {', '.join(METHODS)}")
    cfg = _train_cfg(method, train_cfg)
    if method == "naive":
        return learn_concept(backend, memory, images, name, trigger, prompt, select_cfg,
                             replace(cfg, lr=naive_lr or cfg.lr), calibration_prompts, rows=all_rows(backend),
                             captions=captions).result
    if method in ("clora", "clora-xattn", "lora-xattn+dsc"):
        views, captions = training_views(images, captions, cfg.flip)
        x0 = backend.encode_images(views)
        anchors = state.setdefault("anchors", {})
        names = cross_attention_layers(backend) if "xattn" in method else None
        rank, lam = (XATTN_DSC_RANK, 0.0) if method == "lora-xattn+dsc" else (clora_rank, clora_lam)
        ad = CLoRA(backend, anchors, rank, lam, cfg.seed + len(memory.concepts), names).to(backend.device)
        res = train_concept(backend, x0, captions or prompt, trigger, None, memory, cfg, adapter=ad)
        deltas = {n: ad.product(i).detach().float().cpu() for i, n in enumerate(ad.names)}
        for n, d in deltas.items():
            anchors[n] = anchors.get(n, torch.zeros_like(d)) + d
        rows = all_rows(backend)
        for n in set(deltas) - set(rows):  # Q and output projections: baked here, the memory records K/V rows
            backend.bake_rows(n, torch.arange(deltas[n].shape[0]), deltas[n])
        merge_result(backend, memory, ConceptRecord(name, trigger, prompt, rows, {n: deltas[n] for n in rows},
                                                    res.token, metrics={"seconds": res.seconds}))
        return res
    return learn_concept(backend, memory, images, name, trigger, prompt, select_cfg, cfg, calibration_prompts,
                         captions=captions).result
