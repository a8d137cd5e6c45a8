"""The concept gallery as one picture: a column per concept (its training thumbnail on top, its samples below, name
and trigger underneath) and one for the generic prompt, with the DC self-check table beneath, so a user sees at a
glance what the model has learned and whether a later concept broke an earlier one."""
from __future__ import annotations

from collections import Counter

import numpy as np
import torch

from ..core.gallery import Gallery
from .pictures import agg_pyplot, fig_to_array, sample_grid

DPI = 100
CELL_PX = 128  # small samples (the toy world's 32 px) are upscaled to about this, so they stay visible


def _thumbnail_row(g: Gallery, h: int, w: int) -> torch.Tensor:
    """[columns, h, w, 3]: each column's thumbnail brought to the samples' size; white where there is none."""
    out = torch.ones(len(g.thumbnails), h, w, 3)
    for i, t in enumerate(g.thumbnails):
        if t is not None:
            x = t.float().div(255).permute(2, 0, 1).unsqueeze(0)
            out[i] = torch.nn.functional.interpolate(x, size=(h, w), mode="bilinear", antialias=True,
                                                     align_corners=False)[0].permute(1, 2, 0).clamp(0, 1)
    return out


def _picked(picks: list[str]) -> str:
    return ", ".join(f"{name} {k}" for name, k in Counter(picks).most_common())


def gallery_cells(g: Gallery) -> tuple[torch.Tensor, list[str]]:
    """The grid's cells [rows, columns, H, W, 3] (a row of thumbnails when the memory holds any, then one row per
    sample) and the rows' labels."""
    n = g.images.shape[1]
    thumbs = any(t is not None for t in g.thumbnails)
    rows = ([_thumbnail_row(g, *g.images.shape[2:4])] if thumbs else []) + [g.images[:, j] for j in range(n)]
    return torch.stack(rows), (["training image"] if thumbs else []) + [f"sample {j + 1}" for j in range(n)]


def gallery_picture(g: Gallery) -> np.ndarray:
    """RGB uint8 [H, W, 3]: gallery_cells with the columns' names and triggers beneath, and the self-check table."""
    cells, row_labels = gallery_cells(g)
    n_row, n_col, h, w, _ = cells.shape
    scale = max(1, CELL_PX // max(h, w))
    grid = sample_grid(cells.flatten(0, 1), ncol=n_col, scale=scale)
    gh, gw = grid.shape[:2]
    pad_x = (gw - n_col * w * scale) / (n_col + 1)  # sample_grid's white gap, read off the grid
    pad_y = (gh - n_row * h * scale) / (n_row + 1)

    check = g.self_check()
    cells = [[c["name"], c["trigger"], f"{c['correct']:.0%}", _picked(c["picked"])] for c in check["concepts"]]
    left, right, title, labels = 1.3, 0.2, 0.5, 0.55
    table = 0.25 * (len(cells) + 1) + 0.2
    width, height = left + gw / DPI + right, title + gh / DPI + labels + table
    width = max(width, 6.0)
    plt = agg_pyplot()
    fig = plt.figure(figsize=(width, height), dpi=DPI)
    ax = fig.add_axes([left / width, (table + labels) / height, gw / DPI / width, gh / DPI / height])
    ax.imshow(grid, interpolation="nearest")
    ax.set_xticks([pad_x + c * (w * scale + pad_x) + w * scale / 2 for c in range(n_col)])
    ax.set_xticklabels([f"{name}\n{trig}" if trig else f"{name}\n'{prompt}'"
                        for name, trig, prompt in zip(g.names, g.triggers, g.prompts)], fontsize=8)
    ax.set_yticks([pad_y + r * (h * scale + pad_y) + h * scale / 2 for r in range(n_row)])
    ax.set_yticklabels(row_labels, fontsize=8)
    ax.tick_params(length=0)
    for s in ax.spines.values():
        s.set_visible(False)
    fig.suptitle(f"Concept gallery: seed {g.settings['seed']}, {g.settings['steps']} steps, cfg {g.settings['cfg']:g}; "
                 f"DC self-check mean {check['mean_correct']:.0%}", fontsize=9, y=1 - 0.15 / height)
    tab_ax = fig.add_axes([0.03, 0.1 / height, 0.94, (table - 0.1) / height])
    tab_ax.axis("off")
    t = tab_ax.table(cellText=cells, colLabels=["concept", "trigger", "DC self-check", "DC picked"], loc="center",
                     cellLoc="left")
    t.auto_set_font_size(False)
    t.set_fontsize(8)
    return fig_to_array(fig)
