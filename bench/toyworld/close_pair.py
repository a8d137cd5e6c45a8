"""The learning / forgetting trade-off on the close pair (striped-diamond, then blue-striped-diamond): the
default method beside variants with EWC-DC or DSC switched off and with every λ scaled, one bar chart.

    python -m continual_concepts.bench.toyworld.close_pair [--out DIR] [--threads 1] [--variants 'a;b']
The second concept is the one that could overwrite the first (same shape, other stripe colours): forgetting of the
first and held-out accuracy of the second are read off one run per variant. Last line: one JSON object."""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from ..continual_bench import run_method
from .benchmark import SELECT, TRAIN, make_backend
from .evaluate import ToyWorld

PAIR = ("striped-diamond", "blue-striped-diamond")
LAMBDAS = ("lam_prev", "lam_base", "lam_ewc", "lam_dsc")


def scaled(cfg, k: float):
    return replace(cfg, **{n: getattr(cfg, n) * k for n in LAMBDAS})


VARIANTS = {
    "CNS + EWC-DC + DSC": lambda c: c,
    "no EWC-DC": lambda c: replace(c, lam_ewc=0),
    "no DSC": lambda c: replace(c, lam_dsc=0),
    "no EWC-DC nor DSC": lambda c: replace(c, lam_ewc=0, lam_dsc=0),
    "all λ × 0.1": lambda c: scaled(c, 0.1),
    "all λ × 10": lambda c: scaled(c, 10),
}


def pair_picture(rows: list[dict], title: str):
    """Per variant, three bars: the first concept right after learning it, the first after the second was learned
    (the gap between them is forgetting), the second concept; held-out accuracy."""
    import numpy as np

    from ...report.pictures import agg_pyplot, fig_to_array

    fig, ax = agg_pyplot().subplots(figsize=(8, 3.8), dpi=100)
    x = np.arange(len(rows))
    bars = [("first_after_first", f"{PAIR[0]}, right after learning it"),
            ("first_after_second", f"{PAIR[0]}, after {PAIR[1]}"), ("second", PAIR[1])]
    for i, (key, label) in enumerate(bars):
        ax.bar(x + (i - 1) * 0.27, [r[key] for r in rows], 0.27, label=label)
    ax.set_xticks(x, [r["variant"] for r in rows], fontsize=8)
    ax.set_ylim(0, 1.15)
    ax.set_ylabel("held-out accuracy")
    ax.legend(fontsize=7, loc="upper center", ncol=3)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig_to_array(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--variants", default=";".join(VARIANTS), help="names separated by ;")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    from ...report.pictures import save_png

    out = Path(a.out or f"out/close-pair-{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    world = ToyWorld()
    world.concepts = [next(s for s in world.concepts if s.name == n) for n in PAIR]
    rows = []
    for v in (x.strip() for x in a.variants.split(";")):
        if v not in VARIANTS:
            raise SystemExit(f"--variants: '{v}' is not one of {', '.join(VARIANTS)}")
        r = run_method("cns+ewc+dsc", make_backend, world, SELECT, VARIANTS[v](TRAIN),
                       log=lambda s: print(s, file=sys.stderr))
        m = r["accuracy_matrix"]
        rows.append({"variant": v, "first_after_first": m[0][0], "first_after_second": m[1][0],
                     "second": m[1][1], "forgetting_first": max(m[0][0] - m[1][0], 0.0), "avg_acc": r["avg_acc"],
                     "train_context": r["final_train_context"], "base_after": r["base_acc_after"],
                     "samples_per_concept": r["samples_per_concept"], "seconds_per_concept": r["seconds_per_concept"]})
        print(json.dumps(rows[-1]), file=sys.stderr)
        (out / "close_pair.json").write_text(json.dumps(rows, indent=2))
    save_png(out / "close_pair.png", pair_picture(
        rows, f"{PAIR[0]} then {PAIR[1]}, {rows[0]['samples_per_concept']} samples per accuracy"))
    print(json.dumps({"variants": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
