"""`make bench-toy`: the continual benchmark on the toy world — every method, same seeds, same order.

    python -m continual_concepts.bench.toyworld.benchmark [--concepts 8] [--methods cns,naive] [--record]
Writes results.md, results.json, accuracy heatmaps and the method × concept sample grid to --out;
--record also appends the table, dated, to bench/RESULTS.md. Last line: one JSON object."""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import date
from pathlib import Path

import torch

from ...core.backends.diffusers_backend import DiffusersBackend
from ...core.neurons import SelectConfig
from ...core.train import TrainConfig
from ..continual_bench import run_method, write_outputs
from ..methods import METHODS
from . import load_components
from .evaluate import ToyWorld

# The toy UNet has 4.2 M parameters; SD1.5's 0.13 % would be 85 K/V rows of 64 (6 % of its 1,408 rows).
# In first runs that was too little to learn a concept here, so the toy budget is 0.5 % (330 rows, 23 %).
SELECT = SelectConfig(budget_pct=0.5, rho_base=0.3, n_calibration=20, n_draws=2, batch_size=6)
TRAIN = TrainConfig(steps=300, lr=2e-2, token_lr=2e-3, batch_size=6)
NAIVE_LR = 2e-3  # every K/V weight moves: a smaller step, as full fine-tuning would use


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concepts", type=int, default=5)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--steps", type=int, default=TRAIN.steps)
    ap.add_argument("--out", default=None)
    ap.add_argument("--record", action="store_true")
    a = ap.parse_args(argv)
    methods = [m.strip() for m in a.methods.split(",") if m.strip()]
    out = Path(a.out or f"out/bench-toy-{time.strftime('%Y%m%d-%H%M%S')}")
    world = ToyWorld(n_concepts=a.concepts)
    train = TrainConfig(**{**TRAIN.__dict__, "steps": a.steps})
    results = []
    for m in methods:
        print(f"method {m}", file=sys.stderr)
        kw = {"naive_lr": NAIVE_LR} if m == "naive" else {}
        results.append(run_method(m, lambda: DiffusersBackend(**load_components()), world, SELECT, train,
                                  log=lambda s: print(s, file=sys.stderr), **kw))
    rep = write_outputs(results, world, out)
    print(rep["table"], file=sys.stderr)
    if a.record:
        head = (f"\n### Toy-world benchmark, {date.today().isoformat()}, {a.concepts} concepts, {train.steps} steps/concept\n"
                f"Machine: {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}. "
                f"Outputs: `{out}`.\n\n")
        with open(Path(__file__).parents[1] / "RESULTS.md", "a") as f:
            f.write(head + rep["table"])
    print(json.dumps({r["method"]: {k: r[k] for k in ("avg_acc", "avg_forgetting", "base_acc_before",
                                                       "base_acc_after", "params_pct", "seconds_per_concept")}
                      for r in rep["results"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
