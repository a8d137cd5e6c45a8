"""Every 8-concept run recorded for a toy model in one picture: each run a point (average forgetting, final held-out
accuracy) coloured by base-prompt accuracy after, the issue's goals drawn in — where the methods sit between
learning and keeping, at a glance.

    python -m continual_concepts.bench.toyworld.tradeoff bench/results/toy3 [--out DIR]
Reads every JSON in the folder holding benchmark results (dicts with an accuracy matrix); writes tradeoff.png and
tradeoff.json (one row per run: file, label, final, right after learning, forgetting, base after) to --out (default:
the folder). Last line: one JSON object."""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

GOAL_ACC, GOAL_FORGETTING = 0.8, 0.05  # issue 11's goals for the default method
DPI = 90
KEY_LINE_INCHES = 0.115  # one key line at 6.5 pt: the figure grows with the runs so that none is cut off
# the command every benchmark run shares says nothing in the key; what follows it (--set …) does
COMMON = re.compile(r"benchmark --methods \S+ --no-ceiling --threads \d+ ?")


def runs(folder: Path) -> list[dict]:
    """One row per recorded run with a full accuracy matrix, in file-name order."""
    out = []
    for f in sorted(folder.glob("*.json")):
        data = json.loads(f.read_text())
        for r in data if isinstance(data, list) else [data]:
            if not (isinstance(r, dict) and r.get("accuracy_matrix")):
                continue
            m = r["accuracy_matrix"]
            order = "order " + r["order"].split(",")[0] + "…" if r.get("order") else ""
            extra = ", ".join(x for x in (COMMON.sub("", r.get("settings", "")), order) if x)
            label = f"{f.stem.removeprefix('results_')}: {r['method']}" + (f" [{extra}]" if extra else "")
            out.append({"file": f.name, "label": label,
                        "final": r["avg_acc"], "right_after": sum(m[i][i] for i in range(len(m))) / len(m),
                        "forgetting": r["avg_forgetting"], "base_after": r["base_acc_after"]})
    return out


def picture(rows: list[dict], title: str):
    from ...report.pictures import agg_pyplot, fig_to_array

    plt = agg_pyplot()
    height = max(5.5, KEY_LINE_INCHES * len(rows) + 0.6)
    fig, (ax, key) = plt.subplots(1, 2, figsize=(14, height), dpi=DPI, gridspec_kw={"width_ratios": [1, 1.25]})
    sc = ax.scatter([r["forgetting"] for r in rows], [r["final"] for r in rows], c=[r["base_after"] for r in rows],
                    cmap="viridis", vmin=0.6, vmax=1.0, s=40, edgecolors="black", linewidths=0.5)
    for i, r in enumerate(rows):
        ax.annotate(str(i + 1), (r["forgetting"], r["final"]), xytext=(4, 3), textcoords="offset points", fontsize=7)
    ax.axhline(GOAL_ACC, ls="--", c="gray", lw=0.8)
    ax.axvline(GOAL_FORGETTING, ls="--", c="gray", lw=0.8)
    ax.text(0.002, GOAL_ACC + 0.01, f"goal: held-out ≥ {GOAL_ACC}, forgetting ≤ {GOAL_FORGETTING}", fontsize=7)
    ax.set_xlim(-0.01, max(0.2, max(r["forgetting"] for r in rows) + 0.02))
    ax.set_ylim(0.3, 1.0)
    ax.set_xlabel("average forgetting")
    ax.set_ylabel("final held-out accuracy (mean of 8 concepts)")
    fig.colorbar(sc, ax=ax, label="base-prompt accuracy after")
    ax.set_title(title, fontsize=9)
    key.axis("off")
    key.text(0, 1, "\n".join(f"{i + 1:>2}  {r['label'][:100]}" for i, r in enumerate(rows)), va="top",
             family="monospace", fontsize=6.5)
    fig.tight_layout()
    return fig_to_array(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    from ...report.pictures import save_png

    folder, out = Path(a.folder), Path(a.out or a.folder)
    rows = runs(folder)
    if not rows:
        raise SystemExit(f"{folder}: no benchmark results (JSON with an accuracy matrix) found")
    out.mkdir(parents=True, exist_ok=True)
    # the PNG first: save_png refuses to overwrite, and then nothing is written
    save_png(out / "tradeoff.png", picture(rows, f"{len(rows)} runs of 8 concepts in a row ({folder.name})"))
    (out / "tradeoff.json").write_text(json.dumps(rows, indent=1))
    print(json.dumps({"runs": len(rows), "best_final": max(rows, key=lambda r: r["final"])}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
