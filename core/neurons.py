"""Concept Neuron Selection: which cross-attention rows respond to the concept but not to generic prompts.

Rows come from the K/V projections (CNS, parts="kv"), from every cross-attention projection (parts="qkvo": Q
and output rows read the image features, where K/V read the text), or from those and the ResNet blocks'
convolutions too (parts="qkvoc": a row is one output channel's kernels, in_channels x 3 x 3 weights; where the toy's
layouts are carried; see bench/RESULTS.md for what each learns).

Definitions (DESIGN §2; [assumption] where the CNS paper is silent):
  importance (Taylor)   s_r = E_{draws} | <W_r, dL_diff/dW_r> |   on the concept images
  importance (activation, general only)  a_r = mean_positions | W_r . e |   text only
  base     = top rho_base of rows by s (ranked across layers after dividing by each layer's mean)
  general  = rows in the per-prompt top set for >= tau of the calibration prompts (none with 0 prompts)
  concept  = base AND NOT general, capped to the budget (% of UNet parameters; a row costs its input width)
             by score
"""
from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from importlib import resources

import torch

from .backends.base import Backend
from .denoise import denoise_error, draw_t_eps
from .row_delta import input_widths
from .weight_grads import weight_grads


@dataclass
class SelectConfig:
    budget_pct: float = 0.13  # % of UNet parameters (CNS reports ~0.13 % for SD1.5)
    parts: str = "qkvo"  # layers rows are chosen from: "kv" (CNS's own), "qkvo" (+ query and output projections) or
    # "qkvoc" (+ the ResNet blocks' convolutions)
    rho_base: float = 0.10  # fraction of all candidate rows (of `parts`) that are "base"
    rho_general: float | None = None  # per-prompt top fraction for "general" (None: = rho_base)
    tau: float = 0.5  # a row is general if top for >= tau of the prompts
    # 0 (default): no general filter, the top-scoring rows within the budget, no calibration passes; with rank-16
    # training this learned most on the toy, 8 concepts in a row (bench/RESULTS.md); CNS's own filter: 20
    n_calibration: int = 0
    general_scoring: str = "taylor"  # or "activation" (text only, no images)
    n_draws: int = 4  # (t, eps) draws per score
    batch_size: int = 8
    seed: int = 0


def default_calibration_prompts() -> list[str]:
    text = resources.files(__package__).joinpath("data/calibration_prompts.txt").read_text()
    return [l.strip() for l in text.splitlines() if l.strip()]


@dataclass
class NeuronSelection:
    rows: dict[str, torch.Tensor]  # layer -> sorted row indices (the concept neurons)
    scores: dict[str, torch.Tensor] = field(default_factory=dict)  # layer -> base (Taylor) score per row
    report: dict = field(default_factory=dict)

    @property
    def n_rows(self) -> int:
        return sum(len(r) for r in self.rows.values())


def taylor_scores(backend: Backend, x0: torch.Tensor, prompt: str | list[str], cfg: SelectConfig,
                  gen: torch.Generator, tokens: dict | None = None) -> dict[str, torch.Tensor]:
    """E over draws of |<W_r, grad_r>|, grad_r = dL/dW_r over all images of a draw (<W_r, .> is linear, so the
    per-chunk dot products add up). prompt: one for every image or one caption per image."""
    weights = {l.name: l.weight.detach() for l in backend.layers(cfg.parts)}
    prompts = [prompt] * len(x0) if isinstance(prompt, str) else list(prompt)
    uniq = sorted(set(prompts))
    which = torch.tensor([uniq.index(p) for p in prompts])
    acc = {n: torch.zeros(w.shape[0], device=backend.device) for n, w in weights.items()}
    dot = {n: torch.zeros_like(a) for n, a in acc.items()}

    def add_dot(n, g):
        dot[n] += (weights[n].float() * g).sum(1)

    ctx = backend.encode_text(uniq, tokens).detach()
    with weight_grads(backend, list(weights), add_dot):
        for _ in range(cfg.n_draws):
            for d in dot.values():
                d.zero_()
            for chunk, w in zip(x0.split(cfg.batch_size), which.split(cfg.batch_size)):
                t, eps = draw_t_eps(backend, chunk, gen)
                loss = denoise_error(backend, chunk, t, eps, ctx[w.to(ctx.device)]).sum() / len(x0)
                loss.backward()
            for n in acc:
                acc[n] += dot[n].abs()
    return {n: (a / cfg.n_draws).cpu() for n, a in acc.items()}


@torch.no_grad()
def activation_scores(backend: Backend, prompt: str) -> dict[str, torch.Tensor]:
    """mean over every context position cross-attention reads (padding included) of |W_r . e| (text only: K/V rows)."""
    e = backend.text_context(backend.encode_text([prompt]))[0].float()
    return {l.name: (e @ l.weight.float().T).abs().mean(0).cpu() for l in backend.layers("kv")}


def _top_mask(scores: dict[str, torch.Tensor], frac: float) -> dict[str, torch.Tensor]:
    """Top `frac` of all rows across layers, each layer's scores divided by its mean (layers differ in scale)."""
    names = list(scores)
    norm = torch.cat([scores[n] / scores[n].mean().clamp_min(1e-30) for n in names])
    k = max(1, int(round(frac * norm.numel())))
    keep = torch.zeros(norm.numel(), dtype=torch.bool)
    keep[norm.topk(k).indices] = True
    out, o = {}, 0
    for n in names:
        out[n] = keep[o : o + len(scores[n])]
        o += len(scores[n])
    return out


def select_concept_neurons(
    backend: Backend,
    x0: torch.Tensor,
    prompt: str | list[str],
    cfg: SelectConfig | None = None,
    calibration_prompts: list[str] | None = None,
    prev_rows: dict[str, torch.Tensor] | None = None,
    tokens: dict | None = None,
    progress=None,
) -> NeuronSelection:
    """Score, mask and cap. `progress(i, total)` is called after each scoring pass (may raise to cancel)."""
    cfg = cfg or SelectConfig()
    backend.layers(cfg.parts)  # validates parts
    if cfg.general_scoring == "activation" and cfg.parts != "kv" and cfg.n_calibration:
        raise ValueError("general_scoring 'activation' reads the text only, so it scores K/V rows: use parts 'kv', "
                         "or 'taylor' scoring with parts 'qkvo'")
    if len(x0) == 0:
        raise ValueError("images: no concept images to score neurons on")
    gen = torch.Generator().manual_seed(cfg.seed)
    pool = calibration_prompts or default_calibration_prompts()
    prompts = random.Random(cfg.seed).sample(pool, min(cfg.n_calibration, len(pool)))
    total = 1 + len(prompts)
    base_s = taylor_scores(backend, x0, prompt, cfg, gen, tokens)
    if progress:
        progress(1, total)
    base = _top_mask(base_s, cfg.rho_base)
    counts = {n: torch.zeros(len(s)) for n, s in base_s.items()}
    for i, p in enumerate(prompts):
        s = taylor_scores(backend, x0, p, cfg, gen) if cfg.general_scoring == "taylor" else activation_scores(backend, p)
        for n, m in _top_mask(s, cfg.rho_general or cfg.rho_base).items():
            counts[n] += m.float()
        if progress:
            progress(2 + i, total)
    general = {n: (counts[n] >= cfg.tau * len(prompts)) & bool(prompts) for n in counts}
    concept = {n: base[n] & ~general[n] for n in base}

    width = input_widths(backend, cfg.parts)
    unet_params = backend.unet_param_count()
    budget = max(min(width.values()), int(cfg.budget_pct / 100 * unet_params))
    cand = [(float(base_s[n][r]), n, int(r)) for n in concept for r in concept[n].nonzero().flatten()]
    cand.sort(key=lambda c: (-c[0], c[1], c[2]))
    chosen, used = [], 0
    for c in cand:  # by score while the budget lasts
        if used + width[c[1]] > budget:
            break
        chosen.append(c)
        used += width[c[1]]
    rows = {n: torch.tensor(sorted(r for _, m, r in chosen if m == n), dtype=torch.long) for n in base_s}

    n_base = sum(int(m.sum()) for m in base.values())
    n_both = sum(int((base[n] & general[n]).sum()) for n in base)
    sel = sum(len(r) for r in rows.values())
    report = {
        "prompt": prompt,
        "config": asdict(cfg),
        "calibration_prompts": prompts,
        "total_rows": sum(len(s) for s in base_s.values()),
        "base_rows": n_base,
        "general_rows": sum(int(m.sum()) for m in general.values()),
        "base_general_overlap": n_both / max(1, n_base),
        "concept_rows_before_cap": len(cand),
        "budget_params": budget,
        "selected_rows": sel,
        "selected_params": used,
        "params_pct": 100 * used / unet_params,
        "per_layer": {n: {"base": int(base[n].sum()), "general": int(general[n].sum()),
                          "selected": len(rows[n]), "rows": len(base_s[n])} for n in base_s},
    }
    if prev_rows:
        shared = sum(len(set(rows[n].tolist()) & set(prev_rows.get(n, torch.empty(0)).tolist())) for n in rows)
        report["overlap_with_previous_concepts"] = shared / max(1, sel)
    return NeuronSelection(rows, base_s, report)
