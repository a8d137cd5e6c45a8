"""How well one concept is learned, alone, into the fresh toy model, under variants of the default settings:
the measurement behind the toy's budget, steps and learning rate.

    python -m continual_concepts.bench.toyworld.sweep --concepts striped-diamond,twin-dots \\
        --variants "default; budget 1%=budget_pct:1; 600 steps=steps:600; lr 0.005=lr:0.005" [--model DIR]
A variant is `label=field:value,field:value` over SelectConfig and TrainConfig fields (the benchmark's SELECT and
TRAIN are the starting point); every variant learns every concept into its own fresh model. Writes sweep.json and
sweep.png (variant × concept held-out accuracy) to --out; last line: one JSON object."""
from __future__ import annotations

import argparse
import json
import sys
from functools import partial

from ..continual_bench import run_method
from ..methods import DEFAULT_METHOD
from .benchmark import make_backend, one_concept_tool, parse_variant


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concepts", default="striped-diamond,split-circle,twin-dots")
    ap.add_argument("--variants", default="default")
    ap.add_argument("--method", default=DEFAULT_METHOD)
    a, out, world, specs = one_concept_tool(ap, "sweep", argv)
    from ...report.pictures import heatmap, save_png

    names = [s.name for s in specs]
    variants = [parse_variant(v) for v in a.variants.split(";") if v.strip()]
    rows = []
    for label, sel, tr in variants:
        for spec in specs:
            world.concepts = [spec]
            r = run_method(a.method, partial(make_backend, a.model), world, sel, tr,
                           log=lambda s: print(s, file=sys.stderr))
            rows.append({"variant": label, "concept": spec.name, "heldout": r["avg_acc"],
                         "train_context": r["avg_train_context_acc"], "base_after": r["base_acc_after"],
                         "params_pct": r["params_pct"], "seconds": r["seconds_per_concept"],
                         "samples": r["samples_per_concept"]})
            print(json.dumps(rows[-1]), file=sys.stderr)
            (out / "sweep.json").write_text(json.dumps(rows, indent=2))
    labels = [v[0] for v in variants]
    mat = [[next(r["heldout"] for r in rows if r["variant"] == v and r["concept"] == n) for n in names] for v in labels]
    save_png(out / "sweep.png", heatmap(mat, labels, names, f"{a.method}, one concept, held-out accuracy "
                                                             f"({rows[0]['samples']} samples)"))
    means = {v: sum(m) / len(m) for v, m in zip(labels, mat)}
    print(json.dumps({"method": a.method, "mean_heldout": means, "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
