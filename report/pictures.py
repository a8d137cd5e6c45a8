"""Pictures people would rather look at than read: neuron maps, loss curves, DC-score charts, sample grids.

Each returns an RGB uint8 array [H, W, 3] (ComfyUI IMAGE = this / 255 with a batch axis; PNG via save_png)."""
from __future__ import annotations

import numpy as np
import torch


def fig_to_array(fig) -> np.ndarray:
    """A drawn matplotlib figure as an RGB array (and the figure closed)."""
    fig.canvas.draw()
    arr = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    import matplotlib.pyplot as plt

    plt.close(fig)
    return arr


def agg_pyplot():
    """pyplot on the Agg backend (no display; headless servers)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def short_layer_name(name: str) -> str:
    parts = name.replace("transformer_blocks.0.", "").replace(".attn2", "").split(".")
    return ".".join(p for p in parts if p not in ("attentions", "diffusion_model", "1"))[-28:]


def neuron_map(rows: dict[str, torch.Tensor], sizes: dict[str, int], title: str = "selected rows") -> np.ndarray:
    """One strip per layer; a lit cell is a selected row (rows binned to at most 256 columns)."""
    plt = agg_pyplot()
    names = list(sizes)
    width = min(256, max(sizes.values()))
    grid = np.zeros((len(names), width))
    for i, n in enumerate(names):
        r = rows.get(n)
        if r is not None and len(r):
            bins = (np.asarray(r) * width // sizes[n]).clip(0, width - 1)
            np.add.at(grid[i], bins, 1)
            grid[i] /= max(1.0, sizes[n] / width)
    fig, ax = plt.subplots(figsize=(8, 0.25 * len(names) + 1.2), dpi=80)
    ax.imshow(grid, aspect="auto", cmap="magma", vmin=0, vmax=1, interpolation="nearest")
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels([f"{short_layer_name(n)} ({len(rows.get(n, []))})" for n in names], fontsize=6)
    ax.set_xlabel("row (binned)")
    ax.set_title(f"{title}: {sum(len(r) for r in rows.values())} rows", fontsize=9)
    fig.tight_layout()
    return fig_to_array(fig)


def loss_curve(history: list[dict], title: str = "training loss") -> np.ndarray:
    plt = agg_pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=80)
    keys = [k for k in (history[0] if history else {}) if k != "total"]
    for k in keys:
        ys = [h.get(k, np.nan) for h in history]
        ax.plot(range(1, len(ys) + 1), ys, label=k, lw=1)
    ax.set_yscale("symlog", linthresh=1e-4)
    ax.set_xlabel("step")
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig_to_array(fig)


def dc_chart(probs: torch.Tensor, candidates: list[str], image_labels: list[str] | None = None,
             title: str = "DC scores P(concept | image)") -> np.ndarray:
    """Heatmap images × candidate concepts, probabilities written in the cells."""
    plt = agg_pyplot()
    p = probs.detach().float().cpu().numpy()
    n, k = p.shape
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * k, 1.0 + 0.35 * n), dpi=80)
    ax.imshow(p, cmap="viridis", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(k))
    ax.set_xticklabels([c[:18] for c in candidates], rotation=30, ha="right", fontsize=7)
    ax.set_yticks(range(n))
    ax.set_yticklabels(image_labels or [f"image {i}" for i in range(n)], fontsize=7)
    if n * k <= 400:
        for i in range(n):
            for j in range(k):
                ax.text(j, i, f"{p[i, j]:.2f}", ha="center", va="center", fontsize=6,
                        color="black" if p[i, j] > 0.5 else "white")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig_to_array(fig)


def heatmap(matrix, row_labels: list[str], col_labels: list[str], title: str) -> np.ndarray:
    """Generic annotated heatmap (e.g. an accuracy matrix task × concept)."""
    return dc_chart(torch.as_tensor(np.asarray(matrix, dtype=np.float32)), col_labels, row_labels, title)


def sample_grid(images: torch.Tensor, ncol: int, labels: list[str] | None = None, scale: int = 2,
                col_labels: list[str] | None = None) -> np.ndarray:
    """images [B,H,W,3] in 0..1 -> one grid (nearest-neighbour upscaled so tiny images stay visible); labels name
    the rows, col_labels the columns."""
    b, h, w, _ = images.shape
    nrow = (b + ncol - 1) // ncol
    img = (images.clamp(0, 1) * 255).byte().cpu().numpy().repeat(scale, 1).repeat(scale, 2)
    h, w, pad = h * scale, w * scale, 2
    grid = np.full((nrow * (h + pad) + pad, ncol * (w + pad) + pad, 3), 255, np.uint8)
    for i in range(b):
        r, c = divmod(i, ncol)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + c * (w + pad): pad + c * (w + pad) + w] = img[i]
    if labels or col_labels:
        plt = agg_pyplot()
        fig, ax = plt.subplots(figsize=(grid.shape[1] / 60 + 1.5, grid.shape[0] / 60 + 0.3 + 0.4 * bool(col_labels)),
                               dpi=80)
        ax.imshow(grid)
        ax.set_xticks([pad + c * (w + pad) + w / 2 for c in range(ncol)] if col_labels else [])
        if col_labels:
            ax.set_xticklabels(col_labels[:ncol], fontsize=7, rotation=30, ha="left")
            ax.xaxis.tick_top()
        ax.set_yticks([pad + r * (h + pad) + h / 2 for r in range(nrow)] if labels else [])
        if labels:
            ax.set_yticklabels(labels[:nrow], fontsize=7)
        fig.tight_layout()
        return fig_to_array(fig)
    return grid


def save_png(path, array: np.ndarray):
    from PIL import Image

    from ..core.atomic_io import atomic_write

    return atomic_write(path, lambda tmp: Image.fromarray(array).save(tmp, format="PNG"))


def to_comfy_image(array: np.ndarray) -> torch.Tensor:
    """uint8 [H,W,3] -> ComfyUI IMAGE [1,H,W,3] float 0..1."""
    return torch.from_numpy(array.astype(np.float32) / 255.0).unsqueeze(0)
