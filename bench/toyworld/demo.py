"""`make demo` on the toy world: 3 concepts with the default method, measured by the oracle."""
from __future__ import annotations

import sys
from pathlib import Path

from ...core.backends.diffusers_backend import DiffusersBackend
from ..continual_bench import run_method, write_outputs
from ..methods import DEFAULT_METHOD
from . import load_components
from .benchmark import SELECT, TRAIN
from .evaluate import ToyWorld


def run_demo(out: Path) -> dict:
    world = ToyWorld(n_concepts=3)
    r = run_method(DEFAULT_METHOD, lambda: DiffusersBackend(**load_components()), world, SELECT, TRAIN,
                   log=lambda s: print(s, file=sys.stderr))
    write_outputs([r], world, out)
    return {"method": r["method"], "concepts": [c.name for c in world.concepts], "avg_acc": r["avg_acc"],
            "avg_forgetting": r["avg_forgetting"], "base_acc_before": r["base_acc_before"],
            "base_acc_after": r["base_acc_after"], "params_pct": r["params_pct"],
            "dc_probe_avg_acc": r["dc_probe_avg_acc"], "seconds": r["seconds_per_concept"] * len(world.concepts)}


