"""Learn a list of concepts one after another and measure, after each, how well the DC probe still tells apart
every concept learned so far: the numbers only (report/sequence.py writes them, with pictures, to a folder)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from .backends.base import Backend
from .continual import ConceptOutcome, learn_concept
from .dc_scores import dc_scores
from .memory import ContinualMemory
from .neurons import SelectConfig
from .row_delta import row_params
from .train import TrainConfig


@dataclass
class ConceptSpec:
    name: str
    trigger: str
    prompt: str
    images: torch.Tensor  # [B,H,W,3] 0..1
    eval_prompts: list[str] = field(default_factory=list)  # held-out contexts (accuracy that counts)
    captions: list[str] | None = None  # one per image (its context); None: `prompt` for every image
    train_prompts: list[str] = field(default_factory=list)  # the training contexts (reported apart)


@dataclass
class SequenceStep:
    """One concept learned: what training returned, and the DC probe on every concept learned so far."""
    index: int
    spec: ConceptSpec
    outcome: ConceptOutcome
    dc_accuracy: list[float]  # per concept 0..index
    dc_probs: torch.Tensor  # [images of concepts 0..index, candidates]


def dc_probe_accuracy(backend: Backend, memory: ContinualMemory, images: list[torch.Tensor],
                      n_timesteps: int = 8, seed: int = 0,
                      captions: list[list[str] | None] | None = None) -> tuple[list[float], torch.Tensor]:
    """For each learned concept: fraction of its images whose DC prediction is that concept. captions[i] (one per
    image of concept i, or None): each image is judged among the candidates phrased in its own caption's context."""
    tokens = memory.tokens()
    contexts: dict[tuple[str, ...], torch.Tensor] = {}

    def encoded(cands: list[str]) -> torch.Tensor:
        if tuple(cands) not in contexts:
            with torch.no_grad():
                contexts[tuple(cands)] = backend.encode_text(cands, tokens)
        return contexts[tuple(cands)]

    accs, probs = [], []
    for i, imgs in enumerate(images):
        caps = captions[i] if captions and captions[i] else [None] * len(imgs)
        latents, p = backend.encode_images(imgs), torch.zeros(len(imgs), len(memory.concepts) + 1)
        for cap in dict.fromkeys(caps):  # one DC call per context, images back in their order
            idx = torch.tensor([j for j, c in enumerate(caps) if c == cap])
            cands = memory.candidates(cap, memory.concepts[i].trigger)
            p[idx] = dc_scores(backend, latents[idx], encoded(cands), n_timesteps=n_timesteps, seed=seed).probs
        accs.append(float((p.argmax(1) == i + 1).float().mean()))
        probs.append(p)
    return accs, torch.cat(probs)


def learn_sequence(backend: Backend, concepts: list[ConceptSpec], memory: ContinualMemory,
                   select_cfg: SelectConfig | None = None, train_cfg: TrainConfig | None = None,
                   calibration_prompts: list[str] | None = None, on_step: Callable[[SequenceStep], None] | None = None,
                   progress=None, log=print) -> list[list[float]]:
    """Every concept checked before any work; returns the DC accuracy matrix (row k: after concept k)."""
    for c in concepts:
        backend.trigger_token_id(c.trigger)
        if c.images.ndim != 4 or len(c.images) == 0:
            raise ValueError(f"concept '{c.name}': no images")
    matrix = []
    for k, c in enumerate(concepts):
        log(f"[{k + 1}/{len(concepts)}] learning '{c.name}' (trigger '{c.trigger}')")
        o = learn_concept(backend, memory, c.images, c.name, c.trigger, c.prompt, select_cfg, train_cfg,
                          calibration_prompts, callback=progress, captions=c.captions)
        accs, probs = dc_probe_accuracy(backend, memory, [x.images for x in concepts[: k + 1]],
                                         captions=[x.captions for x in concepts[: k + 1]])
        matrix.append(accs)
        if on_step:
            on_step(SequenceStep(k, c, o, accs, probs))
    return matrix


def sequence_summary(backend: Backend, memory: ContinualMemory, matrix: list[list[float]], seconds: float) -> dict:
    """Final DC accuracy, average forgetting (best accuracy a concept ever had minus its final one; the last
    concept cannot have forgotten) and the share of UNet parameters each concept trained."""
    final, n = matrix[-1], len(matrix)
    return {
        "concepts": n,
        "dc_avg_acc": sum(final) / len(final),
        "dc_avg_forgetting": sum(max(r[i] for r in matrix[i:]) - final[i] for i in range(n - 1)) / max(1, n - 1),
        "params_pct": 100 * sum(row_params(backend, c.rows) for c in memory.concepts) / backend.unet_param_count() / n,
        "seconds": seconds,
    }
