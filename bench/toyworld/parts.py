"""Which parts of the UNet can carry a concept: the ceiling's fine-tune (same images, captions, token and Adam lr)
restricted to the UNet weights a regex names, one concept at a time into the fresh toy model.

    python -m continual_concepts.bench.toyworld.parts --concepts striped-diamond,twin-dots \\
        --parts "K/V=attn2\\.to_[kv]\\.;cross-attention=attn2\\.;whole UNet=" [--lr 2e-4] [--steps 300] [--model DIR]
Tells whether the gap between K/V-only methods and the whole-UNet ceiling is in the K/V rows' recipe or in layers
they cannot reach. `--sequence` instead fine-tunes the first part given concept after concept in one model (naive
continual learning with those parts: what they cost in forgetting and base accuracy without a regulariser).
Last line: one JSON object."""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from functools import partial
from pathlib import Path

from ..ceiling import CEILING_LR, ceiling
from .benchmark import TRAIN, make_backend, one_concept_tool


def sequence(world, specs, part: tuple[str, str], model, out: Path, train=TRAIN, lr: float = CEILING_LR) -> dict:
    """One model fine-tunes `part` (label, regex) concept after concept: accuracy right after each and at the end,
    forgetting, base accuracy before and after."""
    backend = make_backend(model)
    base_before = world.base_accuracy(backend)
    steps = [ceiling(lambda: backend, world, s, train, lr, parts=part[1] or None) for s in specs]
    right_after = [c["heldout"] for c in steps]
    final = [world.concept_accuracy(backend, s) for s in specs]
    r = {"parts": part[0], "regex": part[1], "concepts": [s.name for s in specs], "right_after": right_after,
         "final": final, "avg_final": sum(final) / len(final),
         "avg_forgetting": sum(max(0.0, d - f) for d, f in zip(right_after[:-1], final[:-1])) / max(1, len(final) - 1),
         "base_acc_before": base_before, "base_after_each": [c["base_after"] for c in steps],
         "base_acc_after": steps[-1]["base_after"], "samples": world.samples_per_concept()}
    (out / "sequence.json").write_text(json.dumps(r, indent=2))
    return r


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concepts", default="striped-diamond,split-circle,twin-dots,framed-square",
                    help="comma-separated, or 'all' (the benchmark's 8, in its order)")
    ap.add_argument("--parts", default="K/V=attn2\\.to_[kv]\\.;whole UNet=",
                    help="'label=regex;...' over UNet parameter names; an empty regex is the whole UNet")
    ap.add_argument("--sequence", action="store_true", help="the first part, concept after concept, in one model")
    ap.add_argument("--lr", type=float, default=CEILING_LR, help="Adam lr on the fine-tuned weights (absolute)")
    ap.add_argument("--steps", type=int, default=TRAIN.steps)
    ap.add_argument("--lam-prior", type=float, default=0.0, help="prior preservation on the world's calibration "
                                                                      "prompts (0: off, the ceiling's recipe)")
    a, out, world, specs = one_concept_tool(ap, "parts", argv)
    train = replace(TRAIN, steps=a.steps)
    from ...report.pictures import heatmap, save_png

    parts = [tuple(p.split("=", 1)) for p in a.parts.split(";") if p.strip()]
    if a.sequence:
        print(json.dumps(sequence(world, specs, parts[0], a.model, out, train, a.lr)))
        return 0
    rows = []
    for label, regex in parts:
        for spec in specs:
            r = ceiling(partial(make_backend, a.model), world, spec, train, a.lr, parts=regex or None,
                        lam_prior=a.lam_prior)
            rows.append({"parts": label, "regex": regex, "lr": a.lr, "steps": a.steps, "lam_prior": a.lam_prior,
                         "concept": spec.name, **r,
                         "samples": world.samples_per_concept()})
            print(json.dumps(rows[-1]), file=sys.stderr)
            (out / "parts.json").write_text(json.dumps(rows, indent=2))
    labels, names = [p[0] for p in parts], [s.name for s in specs]
    mat = [[next(r["heldout"] for r in rows if r["parts"] == p and r["concept"] == n) for n in names] for p in labels]
    save_png(out / "parts.png", heatmap(mat, labels, names, f"fine-tuned UNet parts + token, one concept, held-out "
                                                             f"accuracy ({rows[0]['samples']} samples)"))
    print(json.dumps({"mean_heldout": {p: sum(m) / len(m) for p, m in zip(labels, mat)}, "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
