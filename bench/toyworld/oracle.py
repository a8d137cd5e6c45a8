"""The oracle: a small CNN that reads a 32×32 render's shape-or-concept, colour and background.

Trained on fresh procedural renders (every class on every background); judged on held-out renders.
    python -m continual_concepts.bench.toyworld.oracle --train
"""
from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from .world import BG_NAMES, CLASSES, COLOUR_NAMES, labelled_batch

WEIGHTS = Path(__file__).with_name("oracle.safetensors")


class Oracle(nn.Module):
    def __init__(self):
        super().__init__()

        def block(i, o):
            return nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(),
                                 nn.Conv2d(o, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(), nn.MaxPool2d(2))

        self.body = nn.Sequential(block(3, 32), block(32, 64), block(64, 96), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.shape = nn.Linear(96, len(CLASSES))
        self.colour = nn.Linear(96, len(COLOUR_NAMES))
        self.bg = nn.Linear(96, len(BG_NAMES))

    def forward(self, x):  # x [B,3,32,32] in 0..1
        h = self.body(x * 2 - 1)
        return self.shape(h), self.colour(h), self.bg(h)


def _batch(n, rng, augment: bool = False):
    x, s, c, b = labelled_batch(n, rng)
    x = torch.tensor(x, dtype=torch.float32).permute(0, 3, 1, 2) / 255
    if augment:  # generated images are softer and noisier than renders: train on both
        g = torch.Generator().manual_seed(rng.randrange(2**31))
        soft = torch.rand(n, 1, 1, 1, generator=g) < 0.5
        x = torch.where(soft, F.avg_pool2d(x, 3, 1, 1, count_include_pad=False), x)
        x = (x + 0.04 * torch.rand(n, 1, 1, 1, generator=g) * torch.randn(x.shape, generator=g)).clamp(0, 1)
    return x, torch.tensor(s), torch.tensor(c), torch.tensor(b)


def load_oracle() -> Oracle:
    from safetensors.torch import load_file

    m = Oracle()
    m.load_state_dict(load_file(WEIGHTS))
    return m.eval()


@torch.no_grad()
def classify(oracle: Oracle, images: torch.Tensor) -> dict[str, list[str]]:
    """images [B,H,W,3] in 0..1 -> predicted names per head."""
    s, c, b = oracle(images.permute(0, 3, 1, 2).float())
    return {"shape": [CLASSES[i] for i in s.argmax(1)], "colour": [COLOUR_NAMES[i] for i in c.argmax(1)],
            "background": [BG_NAMES[i] for i in b.argmax(1)]}


@torch.no_grad()
def accuracy(oracle: Oracle, n: int = 2000, seed: str = "heldout-renders") -> dict[str, float]:
    x, s, c, b = _batch(n, random.Random(seed))
    ps, pc, pb = oracle(x)
    has_c = c >= 0
    return {"shape": float((ps.argmax(1) == s).float().mean()),
            "colour": float((pc.argmax(1)[has_c] == c[has_c]).float().mean()),
            "background": float((pb.argmax(1) == b).float().mean())}


def train(steps: int = 600, log=print) -> dict:
    from safetensors.torch import save_file

    from ...core.atomic_io import atomic_write

    torch.manual_seed(0)
    m = Oracle()
    opt = torch.optim.AdamW(m.parameters(), lr=2e-3)
    for step in range(steps):
        x, s, c, b = _batch(96, random.Random(f"oracle-{step}"), augment=True)
        ps, pc, pb = m(x)
        loss = F.cross_entropy(ps, s) + F.cross_entropy(pc, c, ignore_index=-1) + F.cross_entropy(pb, b)
        for g in opt.param_groups:
            g["lr"] = 2e-3 * (1 - step / steps) + 1e-5
        opt.zero_grad()
        loss.backward()
        opt.step()
        if (step + 1) % 100 == 0:
            log(f"oracle step {step + 1}/{steps} loss {loss.item():.4f}")
    m.eval()
    acc = accuracy(m)
    sd = {k: v.contiguous() for k, v in m.state_dict().items()}
    atomic_write(WEIGHTS, lambda tmp: save_file(sd, tmp), overwrite=True)
    log(f"held-out accuracy {acc}")
    return acc


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--train", action="store_true")
    ap.add_argument("--steps", type=int, default=600)
    a = ap.parse_args(argv)
    if a.train:
        train(a.steps)
    print(accuracy(load_oracle()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
