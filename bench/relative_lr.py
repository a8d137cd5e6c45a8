"""How far the default learning rate moves K/V rows, relative to their size, at the toy's, SD1.5's and SDXL's
context widths: one default must serve all three.

    python -m continual_concepts.bench.relative_lr [--steps 200]
Models are tiny UNets whose K/V layers read contexts of the real widths with default initialisation, whose weight
RMS 1/sqrt(3 width) is what real checkpoints have (0.072 / 0.021 / 0.0128 at 64 / 768 / 2048; measured SD1.5 0.02,
SDXL 0.013); rank 4: the same rows trained as a rank-4 change (TrainConfig.rank). The control is the old
behaviour: the delta in weight units, with the absolute lr that is the default's equivalent at the toy's width.
Last line: one JSON object."""
from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import replace

import torch

from ..core.backends.diffusers_backend import DiffusersBackend
from ..core.row_delta import RowDeltas, weight_rms
from ..core.tiny_model import TinyModelSpec, build_tiny_components
from ..core.train import TrainConfig, train_concept

WIDTHS = {"toy": 64, "sd15": 768, "sdxl": 2048}
TOY_RMS = 0.072


def relative_change(width: int, steps: int, relative: bool = True, rows_per_layer: int = 8, rank: int = 0) -> float:
    """||change|| / ||rows|| of the trained rows after `steps` (no penalties, no clipping: the lr alone)."""
    b = DiffusersBackend(**build_tiny_components(TinyModelSpec(sample_size=8, cross_attention_dim=width, text_layers=1)))
    rows = {l.name: torch.arange(rows_per_layer) for l in b.kv_layers()}
    x0 = b.encode_images(torch.rand(4, 8, 8, 3, generator=torch.Generator().manual_seed(0)))
    cfg = TrainConfig(steps=steps, train_token=False, lam_prev=0, lam_base=0, lam_ewc=0, lam_dsc=0, max_grad_norm=None,
                      rank=rank)
    if relative:
        res = train_concept(b, x0, "a sks", "sks", rows, None, cfg)
    else:
        res = train_concept(b, x0, "a sks", "sks", None, None, replace(cfg, lr=cfg.lr * TOY_RMS),
                            adapter=RowDeltas(rows, {l.name: l.weight.shape[1] for l in b.kv_layers()}))
    w = {l.name: l.weight.detach() for l in b.kv_layers()}
    num = sum(float(d.pow(2).sum()) for _, d in res.deltas.values())
    den = sum(float(w[n][r].pow(2).sum()) for n, r in rows.items())
    return math.sqrt(num / den)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=TrainConfig.steps)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    out = {"steps": a.steps, "lr": TrainConfig.lr}
    for name, width in WIDTHS.items():
        b = DiffusersBackend(**build_tiny_components(TinyModelSpec(sample_size=8, cross_attention_dim=width, text_layers=1)))
        out[name] = {"width": width, "weight_rms": sum(weight_rms(l.weight) for l in b.kv_layers()) / len(b.kv_layers()),
                     "relative_change": relative_change(width, a.steps),
                     "relative_change_absolute_lr": relative_change(width, a.steps, relative=False),
                     "relative_change_rank4": relative_change(width, a.steps, rank=4)}
        print(name, out[name], file=sys.stderr)
    rel = [out[n]["relative_change"] for n in WIDTHS]
    ab = [out[n]["relative_change_absolute_lr"] for n in WIDTHS]
    out["max_over_min"] = max(rel) / min(rel)
    out["max_over_min_absolute_lr"] = max(ab) / min(ab)
    low = [out[n]["relative_change_rank4"] for n in WIDTHS]
    out["max_over_min_rank4"] = max(low) / min(low)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
