"""`make demo`: a 3-concept continual sequence with the default method; last line one JSON object.

Runs on the shipped toy-world model when it is present (bench/toyworld), else on a tiny random model."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def _tiny_demo(out: Path) -> dict:
    import numpy as np
    import torch
    from PIL import Image, ImageDraw

    from ..core.backends.diffusers_backend import DiffusersBackend
    from ..core.neurons import SelectConfig
    from ..core.sequence import ConceptSpec, run_sequence
    from ..core.tiny_model import TinyModelSpec, build_tiny_components
    from ..core.train import TrainConfig

    def draw(colour, shape, k):
        ims = []
        for i in range(k):
            im = Image.new("RGB", (16, 16), (128, 128, 128))
            d, o = ImageDraw.Draw(im), i % 3
            (d.ellipse if shape == "circle" else d.rectangle)([2 + o, 2 + o, 12 + o, 12 + o], fill=colour)
            ims.append(np.asarray(im, dtype=np.float32) / 255)
        return torch.from_numpy(np.stack(ims))

    backend = DiffusersBackend(**build_tiny_components(TinyModelSpec()))
    specs = [ConceptSpec("red-ring", "sks", "a sks", draw((220, 30, 30), "circle", 4)),
             ConceptSpec("blue-box", "zwx", "a zwx", draw((30, 30, 220), "square", 4)),
             ConceptSpec("green-ring", "qfv", "a qfv", draw((30, 200, 30), "circle", 4))]
    calib = ["a red circle", "a photo of a dog", "a blue square", "a cat", "a green house", "a small tree"]
    rep = run_sequence(backend, specs, out, SelectConfig(n_calibration=5, budget_pct=3, rho_base=0.3, n_draws=2),
                       TrainConfig(steps=60), "a photo", calib, log=lambda s: print(s, file=sys.stderr))
    return {"method": "cns+ewc-dc+dsc", "model": "tiny-random", **rep["summary"]}


def main() -> int:
    out = Path("out") / time.strftime("demo-%Y%m%d-%H%M%S")
    try:
        from .toyworld.demo import run_demo  # the toy world's measured demo, when shipped
    except ImportError:
        run_demo = None
    summary = run_demo(out) if run_demo else _tiny_demo(out)
    print(f"report and pictures in {out}/", file=sys.stderr)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
