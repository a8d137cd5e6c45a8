"""Where the two concepts the default method falls short on go wrong: the right parts in the wrong layout.

    python -m continual_concepts.bench.toyworld.layout [--seeds 2] [--ceiling-prior 1] [--set k:v,...] [--out DIR]
split-circle (left half red, right half blue) and twin-dots (two purple dots side by side) are learned alone into the
fresh toy model by the default method and by the ceiling's whole-UNet fine-tune, and each held-out generation is
read for its layout, which the oracle's one verdict does not say:
  split-circle: `right` (the oracle reads split-circle), `mirrored` (it does so only once the image is mirrored:
                the halves on the wrong sides) or `other`;
  twin-dots:    `level` (two purple blobs side by side, |dy| <= LEVEL |dx|, as in every training image, or the
                two joined into one blob at least JOINED times as wide as high), `not level` (two, one above the
                other or diagonal, apart or joined), `1 dot` (one round blob), or the number of purple blobs.
Writes layout.json and layout.png (each run's held-out generations, one row per run); last line: one JSON object."""
from __future__ import annotations

import argparse
import collections
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from ...core.atomic_io import atomic_write
from ...core.memory import ContinualMemory
from ..ceiling import ceiling_steps, fine_tune
from ..methods import DEFAULT_METHOD, learn
from .benchmark import make_backend, one_concept_tool, parse_variant
from .oracle import classify
from .world import BACKGROUNDS, COLOURS, WHITE

LEVEL = 0.35  # |dy| / |dx| of two blobs still read as side by side (training images: 0; the 2x2 scenes' cells: any)
MIN_AREA = 4  # pixels of a 32x32 image: smaller specks of a colour are not a dot
JOINED = 1.5  # width / height of one blob read as two dots touching side by side (one dot: about 1)
CONCEPTS = ("split-circle", "twin-dots")  # the concepts with a layout reading
PALETTE = {**COLOURS, **{f"bg-{k}": v for k, v in BACKGROUNDS.items()}, "white": WHITE}


def colour_blobs(image: torch.Tensor, colour: str) -> list[tuple[int, float, float, int, int]]:
    """(area, row, col, height, width) of each 4-connected region of pixels nearest to `colour` among the world's
    colours and backgrounds, largest first. image [H,W,3] in 0..1."""
    px = (image.float().clamp(0, 1) * 255).numpy()
    names = list(PALETTE)
    ref = np.array([PALETTE[n] for n in names], np.float32)
    mask = (((px[:, :, None, :] - ref) ** 2).sum(-1).argmin(-1) == names.index(colour))
    seen, blobs = np.zeros_like(mask), []
    for y0, x0 in zip(*np.nonzero(mask)):
        if seen[y0, x0]:
            continue
        stack, cells = [(y0, x0)], []
        seen[y0, x0] = True
        while stack:
            y, x = stack.pop()
            cells.append((y, x))
            for ny, nx in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
                if 0 <= ny < mask.shape[0] and 0 <= nx < mask.shape[1] and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    stack.append((ny, nx))
        if len(cells) >= MIN_AREA:
            ys, xs = zip(*cells)
            blobs.append((len(cells), float(np.mean(ys)), float(np.mean(xs)), max(ys) - min(ys) + 1,
                          max(xs) - min(xs) + 1))
    return sorted(blobs, reverse=True)


def twin_layout(image: torch.Tensor) -> str:
    blobs = colour_blobs(image, "purple")
    if len(blobs) == 1:
        _, _, _, h, w = blobs[0]
        return "level" if w >= JOINED * h else "not level" if h >= JOINED * w else "1 dot"
    if len(blobs) != 2:
        return f"{len(blobs)} blobs"
    (_, y1, x1, _, _), (_, y2, x2, _, _) = blobs
    return "level" if abs(y1 - y2) <= LEVEL * abs(x1 - x2) else "not level"


def split_layout(oracle, images: torch.Tensor) -> list[str]:
    as_is = classify(oracle, images)["shape"]
    mirrored = classify(oracle, images.flip(2))["shape"]
    return ["right" if a == "split-circle" else "mirrored" if m == "split-circle" else "other"
            for a, m in zip(as_is, mirrored)]


def read_layout(oracle, concept: str, images: torch.Tensor) -> dict[str, int]:
    """How many of the generations fall in each layout class (the module's docstring)."""
    marks = split_layout(oracle, images) if concept == "split-circle" else [twin_layout(i) for i in images]
    return dict(collections.Counter(marks))


def learned(learner: str, model, world, spec, select, train, ceiling_prior: float):
    """A fresh toy model with `spec` learned alone: by the default method, or by the ceiling's fine-tune."""
    if learner == "ceiling":
        return fine_tune(lambda: make_backend(model), world, spec, replace(train, steps=ceiling_steps(ceiling_prior)),
                         lam_prior=ceiling_prior)[0]
    backend = make_backend(model)
    learn(DEFAULT_METHOD, backend, ContinualMemory.for_model(backend, world.generic_prompt), spec.images, spec.name,
          spec.trigger, spec.prompt, select, train, world.calibration_prompts, {}, captions=spec.captions)
    return backend


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concepts", default=",".join(CONCEPTS), help=f"among {', '.join(CONCEPTS)}")
    ap.add_argument("--seeds", type=int, default=1, help="training seeds 0..N-1 for each learner")
    ap.add_argument("--ceiling-prior", type=float, default=1.0, help="the ceiling's prior weight (0: plain)")
    ap.add_argument("--set", default="", help="settings other than SELECT/TRAIN's, as the benchmark's --set")
    a, out, world, specs = one_concept_tool(ap, "layout", argv)
    if bad := [s.name for s in specs if s.name not in CONCEPTS]:
        raise SystemExit(f"--concepts: {bad} have no layout reading (only {', '.join(CONCEPTS)})")
    from ...report.pictures import sample_grid, save_png

    _, select, train = parse_variant("=" + a.set)
    rows, grids, labels = [], [], []
    for spec in specs:
        for seed in range(a.seeds):
            for learner in ("default", "ceiling"):
                backend = learned(learner, a.model, world, spec, replace(select, seed=seed), replace(train, seed=seed),
                                  a.ceiling_prior)
                images = world.heldout_images(backend, spec)
                layout = read_layout(world.oracle, spec.name, images)
                acc = classify(world.oracle, images)["shape"].count(spec.name) / len(images)
                rows.append({"concept": spec.name, "learner": learner, "seed": seed, "heldout": acc,
                             "layout": layout, "samples": len(images)})
                print(json.dumps(rows[-1]), file=sys.stderr)
                grids.append(images)
                labels.append(f"{spec.name} {learner} s{seed}")
                text = json.dumps(rows, indent=2)  # after every run, so a stopped run keeps what it measured
                atomic_write(out / "layout.json", lambda tmp: Path(tmp).write_text(text), overwrite=True)
    save_png(out / "layout.png", sample_grid(torch.cat(grids), ncol=len(grids[0]), labels=labels, scale=3))
    print(json.dumps({"ceiling_prior": a.ceiling_prior, "settings": a.set, "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
