"""Concept gallery: every learned concept's prompt and the generic prompt, sampled with fixed seeds, plus a DC
self-check (which candidate the DC probe picks on each concept's own generations), so forgetting shows at a glance.

Maths only: the picture is report.gallery's, file writing the caller's."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .backends.base import Backend
from .backends.counting import CountingBackend
from .memory import ContinualMemory
from .sampling import sample
from .sequence import dc_probe_accuracy

DEFAULT_CFG = 7.0
DC_TIMESTEPS = 8  # dc_probe_accuracy's measure, as the sequence reports use it
GENERIC = "generic"


@dataclass
class Gallery:
    names: list[str]  # one per column: each concept's name, then GENERIC
    triggers: list[str]  # "" for the generic column
    prompts: list[str]
    images: torch.Tensor  # [columns, samples, H, W, 3] in 0..1; sample j of every column starts from the same noise
    thumbnails: list[torch.Tensor | None]  # uint8 [h, w, 3] per column (the training thumbnail), None where absent
    picked: list[list[str]]  # per concept: the name the DC probe picked for each of its generations
    correct: list[float]  # per concept: the fraction of them it attributed to that concept
    settings: dict

    def self_check(self) -> dict:
        """JSON-ready: per concept the fraction of its own generations the DC probe attributes to it."""
        concepts = [{"name": n, "trigger": t, "prompt": p, "correct": ok, "picked": picks}
                    for n, t, p, picks, ok in zip(self.names, self.triggers, self.prompts, self.picked, self.correct)]
        mean = sum(c["correct"] for c in concepts) / len(concepts) if concepts else None
        return {**self.settings, "candidates": [GENERIC] + self.names[:-1], "concepts": concepts, "mean_correct": mean}


def with_self_check(memory: ContinualMemory, check: dict) -> ContinualMemory:
    """A copy of the memory with each concept's DC self-check (Gallery.self_check) recorded in its metrics, where
    `memory show` and Concept Memory Info list it."""
    out = memory.copy()
    correct = {c["name"]: c["correct"] for c in check["concepts"]}
    for c in out.concepts:
        if c.name in correct:
            c.metrics = {**c.metrics, "dc_self_check": correct[c.name]}
    return out


def _shape(backend: Backend, size: int | None):
    """The denoiser's x0 shape for size×size px images (None: the model's own default size)."""
    if size is None:
        return None
    with torch.no_grad():
        return tuple(backend.encode_images(torch.zeros(1, size, size, 3)).shape[1:])


def check_gallery(memory: ContinualMemory | None, samples: int, size: int | None, steps: int) -> None:
    """One clear error per bad input, before any model is loaded."""
    for what, v in (("samples", samples), ("steps", steps)):
        if v < 1:
            raise ValueError(f"{what} must be at least 1 (got {v})")
    if size is not None and (size < 8 or size % 8):
        raise ValueError(f"size must be a multiple of 8 px, at least 8 (got {size})")
    if memory is None or not memory.concepts:
        raise ValueError("memory: it holds no concepts yet; the gallery shows learned concepts")


def gallery_work(n_concepts: int, samples: int, steps: int, cfg: float) -> int:
    """Denoiser evaluations a gallery takes (progress total): sampling every column, then the DC self-check."""
    per_step = samples * (1 if cfg == 1.0 else 2)
    return (n_concepts + 1) * steps * per_step + n_concepts * samples * DC_TIMESTEPS * (n_concepts + 1)


@torch.no_grad()
def concept_gallery(backend: Backend, memory: ContinualMemory, seed: int = 0, samples: int = 4,
                    size: int | None = None, steps: int = 20, cfg: float = DEFAULT_CFG, progress=None) -> Gallery:
    """Sample `samples` images of each concept's prompt and of the generic prompt (seed, seed for every column: the
    same starting noise across columns and across galleries of the same memory), then DC-probe the concepts' own
    generations against every candidate (generic + each concept). `backend` must carry the memory's concepts.

    progress(done, total) is called after each batch of denoiser evaluations (it may raise to cancel)."""
    check_gallery(memory, samples, size, steps)
    total = gallery_work(len(memory.concepts), samples, steps, cfg)
    b = CountingBackend(backend, lambda done: progress(done, total)) if progress else backend
    tokens, shape = memory.tokens(), _shape(backend, size)
    prompts = [c.prompt for c in memory.concepts] + [memory.generic_prompt]
    images = torch.stack([sample(b, [p] * samples, steps=steps, guidance=cfg, seed=seed, shape=shape, tokens=tokens)
                          .float().cpu() for p in prompts])
    correct, probs = dc_probe_accuracy(b, memory, list(images[:-1]), n_timesteps=DC_TIMESTEPS, seed=seed)
    candidates = [GENERIC] + [c.name for c in memory.concepts]
    picks = [candidates[i] for i in probs.argmax(1).tolist()]
    return Gallery(
        names=[c.name for c in memory.concepts] + [GENERIC], triggers=[c.trigger for c in memory.concepts] + [""],
        prompts=prompts, images=images, thumbnails=[c.thumbnail for c in memory.concepts] + [None],
        picked=[picks[i * samples:(i + 1) * samples] for i in range(len(memory.concepts))], correct=correct,
        settings={"seed": seed, "samples": samples, "size": size or images.shape[-2], "steps": steps, "cfg": cfg,
                  "dc_timesteps": DC_TIMESTEPS})
