"""Continual-personalisation benchmark harness: every method, same seeds, same concept order.

A *world* supplies the concepts and the measurements (the toy world does it with its oracle):
  world.concepts            list[core.sequence.ConceptSpec] in task order
  world.generic_prompt      the DC "pretrained" candidate c0
  world.calibration_prompts generic prompts for general-neuron scoring
  world.concept_accuracy(backend, spec) -> float   generation from the trigger judged correct
  world.base_accuracy(backend) -> float            zero-shot prompts judged correct
  world.train_context_accuracy(backend, spec)      the same on the contexts it was trained in (reported apart)
  world.samples_per_concept() -> int               generations behind each accuracy
  world.concept_samples(backend, specs) -> Tensor  rows of one generation per concept, for the sample grid
After each task: accuracy of every concept learned so far, DC-probe accuracy, seconds; at the end: average
accuracy, average forgetting (best earlier score minus final), base accuracy before/after, % params changed.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch

from ..core.memory import ContinualMemory
from ..core.sequence import dc_probe_accuracy
from ..report.pictures import heatmap, sample_grid, save_png
from .methods import learn


def forgetting(matrix: list[list[float]]) -> float:
    """Mean over all but the last concept of (best accuracy after any earlier task − final accuracy); entries
    not measured (nan) are skipped."""
    n = len(matrix)
    if n < 2:
        return 0.0
    best = [max(v for k in range(j, n) if not math.isnan(v := matrix[k][j])) for j in range(n - 1)]
    return sum(best[j] - matrix[-1][j] for j in range(n - 1)) / (n - 1)


def unet_weights(backend) -> dict[str, torch.Tensor]:
    """A copy of every UNet weight (the benchmarks run diffusers backends): methods may change more than K/V."""
    return {n: p.detach().cpu().clone() for n, p in backend.unet.named_parameters()}


def changed_params_pct(backend, before: dict[str, torch.Tensor]) -> float:
    changed = sum(int((p.detach().cpu() != before[n]).sum()) for n, p in backend.unet.named_parameters())
    return 100 * changed / backend.unet_param_count()


def run_method(method, make_backend, world, select_cfg, train_cfg, log=print, full_matrix: bool = True,
               ceilings: list[float] | None = None, **method_kw) -> dict:
    """full_matrix=False measures each concept right after its task and every concept at the end only (a quick
    sweep: forgetting then counts from those two points)."""
    backend = make_backend()
    before = unet_weights(backend)
    memory, state = ContinualMemory.for_model(backend, world.generic_prompt), {}
    base_before = world.base_accuracy(backend)
    acc, dc_acc, secs = [], [], []
    specs = world.concepts
    for k, c in enumerate(specs):
        t0 = time.perf_counter()
        learn(method, backend, memory, c.images, c.name, c.trigger, c.prompt, select_cfg, train_cfg,
              world.calibration_prompts, state, captions=c.captions, **method_kw)
        secs.append(time.perf_counter() - t0)
        measure = full_matrix or k == len(specs) - 1
        acc.append([world.concept_accuracy(backend, s) if measure or j == k else math.nan
                    for j, s in enumerate(specs[: k + 1])])
        dc_acc.append(dc_probe_accuracy(backend, memory, [s.images for s in specs[: k + 1]],
                                        captions=[s.captions for s in specs[: k + 1]])[0])
        log(f"  {method} after {c.name}: acc {[round(a, 2) for a in acc[-1]]}, {secs[-1]:.1f} s")
    final = acc[-1]
    train_ctx = [world.train_context_accuracy(backend, s) for s in specs]
    out = {
        "method": method,
        "accuracy_matrix": acc,
        "dc_probe_matrix": dc_acc,
        "samples_per_concept": world.samples_per_concept(),
        "final_heldout": final,
        "final_train_context": train_ctx,
        "avg_acc": sum(final) / len(final),
        "avg_train_context_acc": sum(train_ctx) / len(train_ctx),
        "avg_forgetting": forgetting(acc),
        "dc_probe_avg_acc": sum(dc_acc[-1]) / len(dc_acc[-1]),
        "base_acc_before": base_before,
        "base_acc_after": world.base_accuracy(backend),
        "params_pct": (pct := changed_params_pct(backend, before)),
        "params_pct_per_concept": pct / len(specs),
        "seconds_per_concept": sum(secs) / len(secs),
        "samples": world.concept_samples(backend, specs),
    }
    if ceilings:
        out["ceiling_avg_acc"] = sum(ceilings) / len(ceilings)
        out["fraction_of_ceiling"] = out["avg_acc"] / max(out["ceiling_avg_acc"], 1e-9)
    return out


def markdown_table(results: list[dict]) -> str:
    head = ("| method | held-out acc | / ceiling | training-context acc | avg forgetting | base acc before → after | "
            "DC-probe acc | params changed % | s / concept |\n|---|---|---|---|---|---|---|---|---|\n")
    rows = [f"| {r['method']} | {r['avg_acc']:.3f} | {r.get('fraction_of_ceiling', math.nan):.2f} | "
            f"{r['avg_train_context_acc']:.3f} | {r['avg_forgetting']:.3f} | {r['base_acc_before']:.3f} → "
            f"{r['base_acc_after']:.3f} | {r['dc_probe_avg_acc']:.3f} | {r['params_pct']:.3f} | "
            f"{r['seconds_per_concept']:.1f} |" for r in results]
    return head + "\n".join(rows) + "\n"


def write_outputs(results: list[dict], world, out_dir) -> dict:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = [c.name for c in world.concepts]
    n = len(names)
    for r in results:
        mat = [row + [math.nan] * (n - len(row)) for row in r["accuracy_matrix"]]
        save_png(out / f"accuracy_{r['method'].replace('+', '_')}.png",
                 heatmap(mat, [f"after {x}" for x in names], names, f"oracle accuracy: {r['method']}"))
    # first row: one training image per concept; then each method's generations on held-out contexts
    rows = [torch.stack([c.images[0] for c in world.concepts])] + [r["samples"] for r in results]
    labels = ["training image"] + [f"{r['method']} {i + 1}" for r in results for i in range(len(r["samples"]) // n)]
    save_png(out / "samples_method_x_concept.png",
             sample_grid(torch.cat(rows), ncol=n, labels=labels, col_labels=names, scale=3))
    table = markdown_table(results)
    (out / "results.md").write_text(table)
    data = [{k: v for k, v in r.items() if k != "samples"} for r in results]
    (out / "results.json").write_text(json.dumps(data, indent=2))
    return {"table": table, "results": data}
