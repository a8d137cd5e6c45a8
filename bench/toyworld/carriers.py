"""What carries a learned concept: its K/V row deltas, its trigger token, or both together.

    python -m continual_concepts.bench.toyworld.carriers --concepts striped-diamond,twin-dots \\
        --variants "default; token lr 0.01=token_lr:0.01" [--model DIR]
Each concept is learned alone into a fresh toy model (default method, the benchmark's settings changed as
`label=field:value,...` as in sweep.py), then judged three ways on the held-out contexts: rows + token (what the
method delivers), the token alone (rows put back to their pretrained values) and the rows alone (the trigger's
original embedding put back). Also reports how far the rows and the token moved, relative to their norms. Last
line: one JSON object."""
from __future__ import annotations

import argparse
import json
import sys

import torch

from ...core.memory import ContinualMemory
from ..methods import DEFAULT_METHOD, learn
from .benchmark import make_backend, parse_variant, pick_concepts
from .evaluate import ToyWorld


def carriers(backend, world, spec, select, train, method: str = DEFAULT_METHOD) -> dict:
    before = {l.name: l.weight.detach().clone() for l in backend.kv_layers()}
    tok0 = backend.token_row(spec.trigger).clone()
    mem = ContinualMemory.for_model(backend, world.generic_prompt)
    learn(method, backend, mem, spec.images, spec.name, spec.trigger, spec.prompt, select, train,
          world.calibration_prompts, {}, captions=spec.captions)
    rows = mem.concepts[-1].rows
    rel = [float((l.weight.detach()[rows[l.name]] - before[l.name][rows[l.name]]).norm()
                 / before[l.name][rows[l.name]].norm()) for l in backend.kv_layers() if l.name in rows]
    tok1 = backend.token_row(spec.trigger).clone()
    both = world.concept_accuracy(backend, spec)
    backend.set_token_row(spec.trigger, tok0)
    rows_only = world.concept_accuracy(backend, spec)
    backend.set_token_row(spec.trigger, tok1)
    with torch.no_grad():
        for l in backend.kv_layers():
            l.weight.copy_(before[l.name])
    return {"rows_and_token": both, "token_only": world.concept_accuracy(backend, spec), "rows_only": rows_only,
            "rows": sum(len(r) for r in rows.values()), "row_change_rel_mean": sum(rel) / len(rel),
            "token_change_rel": float((tok1 - tok0).norm() / tok0.norm()), "samples": world.samples_per_concept()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concepts", default="striped-diamond,twin-dots")
    ap.add_argument("--variants", default="default")
    ap.add_argument("--model", default=None, help="a toy model folder other than the shipped one")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    world = ToyWorld()
    specs = pick_concepts(world, a.concepts)
    rows = []
    for label, select, train in (parse_variant(v) for v in a.variants.split(";") if v.strip()):
        for spec in specs:
            rows.append({"variant": label, "concept": spec.name,
                         **carriers(make_backend(a.model), world, spec, select, train)})
            print(json.dumps(rows[-1]), file=sys.stderr)
    print(json.dumps({"rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
