"""`make demo` on the toy world: 3 concepts with the default method, each beside its ceiling (a single-concept
whole-UNet + token fine-tune on the same images), measured by the oracle on held-out backgrounds."""
from __future__ import annotations

import sys
from pathlib import Path

from ..continual_bench import run_method, write_outputs
from ..methods import DEFAULT_METHOD
from .benchmark import SELECT, TRAIN, ceilings, make_backend
from .evaluate import ToyWorld


def run_demo(out: Path) -> dict:
    log = lambda s: print(s, file=sys.stderr)  # noqa: E731
    world = ToyWorld(n_concepts=3)
    ceil = ceilings(world, TRAIN, log)
    r = run_method(DEFAULT_METHOD, make_backend, world, SELECT, TRAIN, log=log, ceilings=[c["heldout"] for c in ceil])
    write_outputs([r], world, out)
    return {"method": r["method"], "concepts": [c.name for c in world.concepts],
            "samples_per_concept": r["samples_per_concept"], "avg_acc": r["avg_acc"],
            "ceiling_avg_acc": r["ceiling_avg_acc"],
            # what the ceilings cost the model's other prompts (each from base_acc_before), which the method keeps
            "ceiling_base_acc_after": sum(c["base_after"] for c in ceil) / len(ceil),
            "avg_train_context_acc": r["avg_train_context_acc"],
            "avg_forgetting": r["avg_forgetting"], "base_acc_before": r["base_acc_before"],
            "base_acc_after": r["base_acc_after"], "params_pct": r["params_pct"],
            "dc_probe_avg_acc": r["dc_probe_avg_acc"]}
