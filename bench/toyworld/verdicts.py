"""What the oracle calls each concept's held-out generations right after it is learned, concepts learned one after
another into one model: does a late concept fail by looking like an earlier concept (captured trigger) or like the
base model's plain shapes?

    python -m continual_concepts.bench.toyworld.verdicts [--method cns+dsc] [--set lam_prev:0] [--concepts all]
Writes verdicts.json to --out; last line: one JSON object (per concept: position, accuracy, verdict counts)."""
from __future__ import annotations

import argparse
import collections
import json
import sys

from ..methods import DEFAULT_METHOD, learn
from ...core.memory import ContinualMemory
from .benchmark import make_backend, one_concept_tool, parse_variant


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concepts", default="all", help="comma-separated, in the order learned, or 'all'")
    ap.add_argument("--method", default=DEFAULT_METHOD)
    ap.add_argument("--set", default="", help="settings other than SELECT/TRAIN's, as the benchmark's --set")
    a, out, world, specs = one_concept_tool(ap, "verdicts", argv)
    _, select, train = parse_variant("=" + a.set)
    backend = make_backend(a.model)
    memory, state, rows = ContinualMemory.for_model(backend, world.generic_prompt), {}, []
    for k, c in enumerate(specs):
        learn(a.method, backend, memory, c.images, c.name, c.trigger, c.prompt, select, train,
              world.calibration_prompts, state, captions=c.captions)
        pred = world.heldout_verdicts(backend, c)
        rows.append({"concept": c.name, "position": k + 1, "accuracy": pred.count(c.name) / len(pred),
                     "verdicts": dict(collections.Counter(pred).most_common())})
        print(json.dumps(rows[-1]), file=sys.stderr)
    result = {"method": a.method, "set": a.set, "samples": len(pred), "rows": rows}
    (out / "verdicts.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
