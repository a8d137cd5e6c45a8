"""Remove Concept, judged by the oracle: learn three toy concepts with the default method, take one out (by default
the first, whose rows later concepts share: the inexact case) with memory_without_concept (its row change
subtracted, its trigger token back to the base model's), and measure every
concept's held-out accuracy before and after, beside the untrained model's accuracy for the removed one.

    python -m continual_concepts.bench.toyworld.remove_check [--remove striped-diamond] [--concepts 3] [--pictures DIR]
The removed trigger should fall to about the untrained level and the kept concepts stay where they were.
--pictures writes the Concept Gallery before and after the removal there (the README's gallery pictures).
Last line: one JSON object."""
from __future__ import annotations

import argparse
import json
import sys
import time

from pathlib import Path

from ...core.gallery import concept_gallery
from ...core.memory import ContinualMemory
from ...core.remove import memory_without_concept
from ...report.gallery import gallery_picture
from ...report.pictures import save_png
from ..methods import DEFAULT_METHOD, learn
from .benchmark import SELECT, TRAIN, make_backend
from .evaluate import ToyWorld


def remove_check(n_concepts: int, remove: str, log=print, pictures: Path | None = None) -> dict:
    world = ToyWorld(n_concepts=n_concepts)
    base, b = make_backend(), make_backend()
    memory, state = ContinualMemory.for_model(b, world.generic_prompt), {}
    for c in world.concepts:
        t = time.perf_counter()
        learn(DEFAULT_METHOD, b, memory, c.images, c.name, c.trigger, c.prompt, SELECT, TRAIN,
              world.calibration_prompts, state, captions=c.captions)
        log(f"  learned {c.name} ({time.perf_counter() - t:.0f} s)")
    before = {c.name: world.concept_accuracy(b, c) for c in world.concepts}
    if pictures:
        save_png(pictures / "gallery_before_removal.png", gallery_picture(concept_gallery(b, memory)))
    new, change, report = memory_without_concept(memory, remove)
    for layer, (rows, d) in change.items():
        b.bake_rows(layer, rows, d)
    trigger = report["trigger"]
    b.set_token_row(trigger, base.token_row(trigger))
    after = {c.name: world.concept_accuracy(b, c) for c in world.concepts}
    if pictures:
        save_png(pictures / f"gallery_without_{remove}.png", gallery_picture(concept_gallery(b, new)))
    removed = next(c for c in world.concepts if c.name == remove)
    return {"method": DEFAULT_METHOD, "removed": remove, "report": report, "before": before, "after": after,
            "untrained_removed": world.concept_accuracy(base, removed),
            "samples_per_concept": world.samples_per_concept(), "kept_in_memory": [c.name for c in new.concepts]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concepts", type=int, default=3)
    ap.add_argument("--remove", default="striped-diamond")
    ap.add_argument("--pictures", type=Path, default=None, help="folder for the gallery PNGs (before / after)")
    a = ap.parse_args(argv)
    print(json.dumps(remove_check(a.concepts, a.remove, log=lambda s: print(s, file=sys.stderr), pictures=a.pictures)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
