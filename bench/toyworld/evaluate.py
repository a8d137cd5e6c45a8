"""Measure the toy model with the oracle: zero-shot quality on held-out captions, and concept accuracy."""
from __future__ import annotations

import torch

from ...core.sampling import sample
from ...core.sequence import ConceptSpec
from .oracle import classify, load_oracle
from .world import BG_NAMES, CONCEPTS, concept_images, concept_prompt, heldout_combos, train_combos, caption

GUIDANCE, STEPS = 4.0, 20
# Benchmark order: the fifth concept, a blue/yellow striped diamond, is deliberately close to the first (red/white
# striped diamond), so learning it can overwrite the first: that is where forgetting shows.
ORDER = ["striped-diamond", "ring-dot", "checker-square", "split-circle", "blue-striped-diamond", "cross-dot",
         "twin-dots", "framed-square"]
# Protocol, like real personalization sets (DreamBooth, CustomConcept101 show a subject in several contexts):
# each concept's images show it on three backgrounds, at jittered positions and scales, each captioned with its
# background; accuracy counts on the background never trained on, teal (training contexts are reported apart).
TRAIN_BGS = ("gray", "black", "white")
HELDOUT_BGS = tuple(b for b in BG_NAMES if b not in TRAIN_BGS)
IMAGES_PER_CONCEPT = 9
EVAL_SEEDS = (11, 12)  # image seeds; samples per concept = len(EVAL_SEEDS) x per_seed
EVAL_PER_SEED = 12


def concept_specs(n: int, images_per_concept: int = IMAGES_PER_CONCEPT) -> list[ConceptSpec]:
    out = []
    for c in sorted(CONCEPTS, key=lambda c: ORDER.index(c.name))[:n]:
        imgs = torch.tensor(concept_images(c, images_per_concept, bg=TRAIN_BGS), dtype=torch.float32) / 255
        captions = [concept_prompt(c, TRAIN_BGS[i % len(TRAIN_BGS)]) for i in range(images_per_concept)]
        out.append(ConceptSpec(c.name, c.trigger, concept_prompt(c, TRAIN_BGS[0]), imgs,
                               eval_prompts=[concept_prompt(c, bg) for bg in HELDOUT_BGS], captions=captions,
                               train_prompts=[concept_prompt(c, bg) for bg in TRAIN_BGS]))
    return out


class ToyWorld:
    """The world object bench.continual_bench measures with (see its docstring)."""

    generic_prompt = ""  # c0: the unconditional prompt stands for "what the model drew before"

    def __init__(self, n_concepts: int = 8, per_seed: int = EVAL_PER_SEED, seeds=EVAL_SEEDS, base_samples: int = 1):
        self.concepts = concept_specs(n_concepts)
        self.calibration_prompts = [caption(*x) for x in train_combos()]
        self.oracle = load_oracle()
        self.per_seed, self.seeds, self.base_k = per_seed, tuple(seeds), base_samples

    def _generate(self, backend, prompts, seed):
        return sample(backend, prompts, steps=STEPS, guidance=GUIDANCE, seed=seed)

    def _images(self, backend, contexts: list[str]) -> torch.Tensor:
        """len(seeds) x per_seed generations [N,H,W,3], spread evenly over the context prompts."""
        prompts = [contexts[i % len(contexts)] for i in range(self.per_seed)]
        return torch.cat([self._generate(backend, prompts, s) for s in self.seeds])

    def _verdicts(self, backend, contexts: list[str]) -> list[str]:
        """The oracle's shape class of each of _images' generations."""
        return classify(self.oracle, self._images(backend, contexts))["shape"]

    def heldout_images(self, backend, spec: ConceptSpec) -> torch.Tensor:
        """The generations concept_accuracy judges (for tools that read more than the oracle's verdict)."""
        return self._images(backend, spec.eval_prompts)

    def _accuracy(self, backend, name: str, contexts: list[str]) -> float:
        pred = self._verdicts(backend, contexts)
        return sum(p == name for p in pred) / len(pred)

    def heldout_verdicts(self, backend, spec: ConceptSpec) -> list[str]:
        """What the concept's held-out generations are judged to be (concept_accuracy counts its own name)."""
        return self._verdicts(backend, spec.eval_prompts)

    def samples_per_concept(self) -> int:
        return self.per_seed * len(self.seeds)

    def concept_accuracy(self, backend, spec: ConceptSpec) -> float:
        """On held-out contexts: the accuracy that counts."""
        return self._accuracy(backend, spec.name, spec.eval_prompts)

    def train_context_accuracy(self, backend, spec: ConceptSpec) -> float:
        return self._accuracy(backend, spec.name, spec.train_prompts)

    def base_scores(self, backend) -> dict[str, float]:
        combos = [x for x in heldout_combos() for _ in range(self.base_k)]
        pred = classify(self.oracle, self._generate(backend, [caption(*x) for x in combos], seed=7))
        shape = [p == s for p, (s, _, _) in zip(pred["shape"], combos)]
        colour = [p == c for p, (_, c, _) in zip(pred["colour"], combos)]
        bg = [p == b for p, (_, _, b) in zip(pred["background"], combos)]
        n = len(combos)
        return {"shape": sum(shape) / n, "colour": sum(colour) / n, "background": sum(bg) / n,
                "shape_and_colour": sum(a and b for a, b in zip(shape, colour)) / n}

    def base_accuracy(self, backend) -> float:
        return self.base_scores(backend)["shape_and_colour"]

    def concept_samples(self, backend, specs) -> torch.Tensor:
        """One row per held-out context, one generation per concept."""
        return self._generate(backend, [s.eval_prompts[i] for i in range(len(HELDOUT_BGS)) for s in specs], seed=3)


def quality_report(backend, n_concepts: int = 8) -> dict:
    """Base-model quality on held-out captions, how often the untrained model already draws each concept, and how
    often the oracle still sees the concept in its VAE round trip (an upper bound on what any training can reach)."""
    world = ToyWorld(n_concepts=n_concepts, base_samples=4)
    with torch.no_grad():
        vae = {s.name: classify(world.oracle, backend.decode(backend.encode_images(s.images)))["shape"].count(s.name)
               / len(s.images) for s in world.concepts}
    return {"base": world.base_scores(backend),
            "untrained_concept_accuracy": {s.name: world.concept_accuracy(backend, s) for s in world.concepts},
            "vae_reconstruction_concept_accuracy": vae}


if __name__ == "__main__":
    import json
    import sys

    from ...core.backends.diffusers_backend import DiffusersBackend
    from . import load_components

    comps = load_components(folder=sys.argv[1] if len(sys.argv) > 1 else None)
    print(json.dumps(quality_report(DiffusersBackend(**comps))))
