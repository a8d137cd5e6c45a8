"""`make bench-toy`: the continual benchmark on the toy world — every method, same seeds, same order, each reported
beside the per-concept ceiling (a single-concept whole-UNet + token fine-tune on the same images).

    python -m continual_concepts.bench.toyworld.benchmark [--concepts 8] [--methods cns,naive] [--seeds 3] [--quick]
        [--ceiling-seeds 3] [--record]
Writes results.md, results.json, accuracy heatmaps and the method × concept sample grid to --out;
--record also appends the table, dated, to bench/RESULTS.md. Last line: one JSON object."""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import replace
from functools import partial
from datetime import date
from pathlib import Path

import torch

from ...core.backends.diffusers_backend import DiffusersBackend
from ...core.neurons import SelectConfig
from ...core.train import TrainConfig
from ..ceiling import ceiling, ceiling_steps
from ..continual_bench import run_method, write_outputs
from ..methods import METHODS
from . import load_components
from .evaluate import ToyWorld

# Settings of the toy benchmark, chosen from the measurements in bench/RESULTS.md (the library defaults are the
# same relative quantities; only what depends on the toy's size is set here).
# the default method on the toy: the top 2 % of UNet weights in Q/K/V/output rows (no general filter), trained at rank
# 16 (TrainConfig's defaults); rho_base 1.0 so that only the budget caps them (bench/RESULTS.md, low-rank rows)
SELECT = SelectConfig(budget_pct=2.0, rho_base=1.0, parts="qkvo", n_calibration=0, n_draws=2, batch_size=8)
# lam_ewc: for the methods with EWC-DC (flip stays off, the default: split-circle has sides, left red, right blue)
TRAIN = TrainConfig(steps=300, lam_ewc=1.0)


def _value(key: str, default, text: str):
    if isinstance(default, bool):
        return text.strip().lower() in ("1", "true", "yes", "on")
    try:
        return (float if default is None else type(default))(text.strip())  # None defaults are optional floats
    except ValueError:
        raise SystemExit(f"'{key}': '{text.strip()}' is not a {type(default).__name__}") from None


def parse_variant(text: str):
    """'label=field:value,...' (or a bare label with no changes) -> (label, SelectConfig, TrainConfig); 'seed' is the
    selection's and the training's."""
    label, _, changes = text.partition("=")
    sel, tr = {}, {}
    for item in filter(None, (c.strip() for c in changes.split(","))):
        key, _, val = (x.strip() for x in item.partition(":"))
        if not (hasattr(SELECT, key) or hasattr(TRAIN, key)):
            raise SystemExit(f"'{key}' is not a SelectConfig or TrainConfig field")
        for cfg, changes in ((SELECT, sel), (TRAIN, tr)):  # a field both have (seed) is set in both
            if hasattr(cfg, key):
                changes[key] = _value(key, getattr(cfg, key), val)
    return label.strip(), replace(SELECT, **sel), replace(TRAIN, **tr)


def pick_concepts(world, names: str) -> list:
    """The world's concept specs named in a comma-separated list ('all': every one, in order), or one clear error."""
    if names == "all":
        return list(world.concepts)
    by_name = {s.name: s for s in world.concepts}
    picked = [n.strip() for n in names.split(",") if n.strip()]
    if unknown := [n for n in picked if n not in by_name]:
        raise SystemExit(f"--concepts: {unknown} not among {list(by_name)}")
    return [by_name[n] for n in picked]


def seed_spread(results: list[dict], methods: list[str], seeds: int) -> dict:
    """Per method, its held-out mean over the training seeds, and their range (what one run's mean can miss by)."""
    out = {}
    for m in methods:
        names = {f"{m}-seed{s}" for s in range(seeds)}
        accs = [r["avg_acc"] for r in results if r["method"] in names]
        out[m] = {"avg_acc_by_seed": accs, "avg_acc_mean": sum(accs) / len(accs),
                  "avg_acc_range": max(accs) - min(accs)}
    return out


def make_backend(folder=None):
    return DiffusersBackend(**load_components(folder=folder))


def ceilings(world, train: TrainConfig, log=print, backend=make_backend, seeds: int = 1,
             lam_prior: float = 0.0, steps: int | None = None) -> list[dict]:
    """Each concept's ceiling, averaged over `seeds` training seeds from train.seed: one 9-image fine-tune moves by
    up to ±0.5 between seeds (cross-dot 0.88 / 0.38 / 0.25, bench/RESULTS.md), so one seed is a noisy denominator.
    lam_prior > 0: the fine-tune with prior preservation (the most the model takes of a concept while it keeps
    drawing its other prompts). `steps`: the fine-tune's own step count, not the method's (default: bench.ceiling's for
    lam_prior)."""
    out = []
    train = replace(train, steps=steps or ceiling_steps(lam_prior))
    for s in world.concepts:
        runs = [ceiling(backend, world, s, replace(train, seed=train.seed + k), lam_prior=lam_prior)
                for k in range(seeds)]
        c = {k: sum(r[k] for r in runs) / seeds for k in runs[0]}
        if seeds > 1:
            c.update(heldout_per_seed=[r["heldout"] for r in runs],
                     train_context_per_seed=[r["train_context"] for r in runs])
        log(f"  ceiling {s.name}: held-out {c['heldout']:.2f}, training contexts {c['train_context']:.2f}, "
            f"base prompts after {c['base_after']:.2f}"
            + (f" (mean of {seeds} seeds)" if seeds > 1 else ""))
        out.append({"concept": s.name, "steps": train.steps, **c})
    return out


def one_concept_tool(ap: argparse.ArgumentParser, name: str, argv=None):
    """Options and start shared by the tools that learn one concept at a time (sweep, parts): parsed args, output
    folder, world and the concepts picked."""
    ap.add_argument("--model", default=None, help="a toy model folder other than the shipped one")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    out = Path(a.out or f"out/{name}-{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    world = ToyWorld()
    return a, out, world, pick_concepts(world, a.concepts)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concepts", type=int, default=8)
    ap.add_argument("--order", default=None, help="the concepts to learn, comma-separated, in this order (default: "
                                                  "the world's order)")
    ap.add_argument("--quick", action="store_true", help="5 concepts, no ceiling, diagonal + final accuracy only")
    ap.add_argument("--no-ceiling", action="store_true", help="skip the ceilings (e.g. measured by another run)")
    ap.add_argument("--ceiling-seeds", type=int, default=3, help="average each concept's ceiling over this many "
                                                                  "training seeds (one is ±0.3 per concept)")
    ap.add_argument("--ceiling-prior", type=float, default=0.0, help="the ceiling's fine-tune with prior "
                                                                      "preservation at this weight (0: the plain "
                                                                      "whole-UNet fine-tune, the recorded ceiling)")
    ap.add_argument("--ceiling-steps", type=int, default=None, help=f"the ceiling's fine-tune steps (default "
                                                                    f"{ceiling_steps(0)}, {ceiling_steps(1)} with "
                                                                    f"--ceiling-prior; the methods' are --steps)")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--steps", type=int, default=None, help=f"steps per concept (default {TRAIN.steps})")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None)
    ap.add_argument("--set", default="", help="settings other than SELECT/TRAIN's, e.g. 'token_lr:0.01,budget_pct:1'")
    ap.add_argument("--seeds", type=int, default=1, help="run each method with seeds 0..N-1 (selection and "
                                                         "training) and report the mean and range (one run's mean "
                                                         "is ±0.05)")
    ap.add_argument("--model", default=None, help="a toy model folder other than the shipped one (e.g. a retrain)")
    ap.add_argument("--record", action="store_true")
    a = ap.parse_args(argv)
    if a.ceiling_seeds < 1:
        ap.error(f"--ceiling-seeds must be at least 1 (got {a.ceiling_seeds})")
    if a.ceiling_steps is not None and a.ceiling_steps < 1:
        ap.error(f"--ceiling-steps must be at least 1 (got {a.ceiling_steps})")
    torch.set_num_threads(a.threads)
    methods = [m.strip() for m in a.methods.split(",") if m.strip()]  # none: ceilings only
    out = Path(a.out or f"out/bench-toy-{time.strftime('%Y%m%d-%H%M%S')}")
    world = ToyWorld(n_concepts=5 if a.quick else a.concepts)
    if a.order:
        world.concepts = pick_concepts(ToyWorld(), a.order)
    _, select, train = parse_variant("=" + a.set)
    train = replace(train, steps=a.steps or train.steps)
    log = lambda s: print(s, file=sys.stderr)  # noqa: E731
    backend = partial(make_backend, a.model)
    ceil = [] if a.quick or a.no_ceiling else ceilings(world, train, log, backend, a.ceiling_seeds, a.ceiling_prior,
                                                         a.ceiling_steps)
    results = []
    for m in methods:
        for seed in range(a.seeds):
            log(f"method {m}" + (f", seed {seed}" if a.seeds > 1 else ""))
            sel, tr = (replace(select, seed=seed), replace(train, seed=seed)) if a.seeds > 1 else (select, train)
            r = run_method(m, backend, world, sel, tr, log=log, full_matrix=not a.quick,
                           ceilings=[c["heldout"] for c in ceil])
            if a.seeds > 1:
                r.update(method=f"{m}-seed{seed}", seed=seed)
            results.append(r)
    rep = write_outputs(results, world, out)
    if ceil:
        (out / "ceilings.json").write_text(json.dumps(ceil, indent=2))
    log(rep["table"])
    if a.record:
        head = (f"\n### Toy-world benchmark, {date.today().isoformat()}, {len(world.concepts)} concepts, "
                f"{train.steps} steps/concept, {world.samples_per_concept()} samples per accuracy\n"
                f"Machine: {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}. "
                f"Outputs: `{out}`.\n\n")
        with open(Path(__file__).parents[1] / "RESULTS.md", "a") as f:
            f.write(head + rep["table"])
    summary = {r["method"]: {k: r.get(k) for k in ("avg_acc", "fraction_of_ceiling", "avg_train_context_acc",
                                                    "avg_forgetting", "base_acc_before", "base_acc_after",
                                                    "params_pct", "seconds_per_concept")} for r in rep["results"]}
    if a.seeds > 1:
        summary.update(seed_spread(rep["results"], methods, a.seeds))
    if ceil:
        summary["ceiling_avg_acc"] = sum(c["heldout"] for c in ceil) / len(ceil)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
