"""Learn one concept into a model and its memory: select -> train -> merge -> fold the DC Fisher (while EWC is on)."""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from datetime import datetime, timezone

import torch

from .backends.base import Backend
from .fisher import dc_fisher
from .images import thumbnail, training_views
from .memory import ConceptRecord, ContinualMemory
from .neurons import NeuronSelection, SelectConfig, default_calibration_prompts, select_concept_neurons
from .train import TrainConfig, TrainResult, train_concept


@dataclass
class ConceptOutcome:
    selection: NeuronSelection
    result: TrainResult
    record: ConceptRecord


def bake(backend: Backend, record: ConceptRecord) -> None:
    """Write a concept's row deltas and token into the backend's weights (fusion-free: the model itself knows it)."""
    for n, r in record.rows.items():
        backend.bake_rows(n, r, record.delta[n])
    if record.token is not None:
        backend.set_token_row(record.trigger, record.token)


def merge_result(backend: Backend, memory: ContinualMemory, record: ConceptRecord) -> None:
    """Record a concept trained elsewhere (e.g. a baseline's adapter) in the memory and bake it."""
    memory.record_pretrained(backend, record.rows)
    bake(backend, record)
    memory.add_concept(record)


def fisher_parts(backend: Backend, memory: ContinualMemory) -> str:
    """K/V, or every projection once any concept or the Fisher has touched a Q or output row, and the ResNet
    convolutions too once one touched a convolution's: the Fisher covers what later concepts may train without
    paying for Q/output weights on K/V-only memories (SDXL: +0.8 GiB)."""
    kind = {l.name: l.kind for l in backend.projection_layers()}
    touched = {kind.get(n) for n in set(memory.fisher) | {n for c in memory.concepts for n in c.rows}}
    return "qkvoc" if "c" in touched else "qkvo" if touched & {"q", "o"} else "kv"


def update_fisher(backend: Backend, memory: ContinualMemory, x0: torch.Tensor, cfg: TrainConfig,
                  at: dict | None = None) -> None:
    """Fold the newest concept's DC Fisher into the memory (`at`: its deltas, if not baked into backend)."""
    with torch.no_grad():
        ctx = backend.encode_text(memory.candidates(), memory.tokens())
    f = dc_fisher(backend, x0, ctx, target=len(memory.concepts), draws=cfg.fisher_draws, seed=cfg.seed,
                  temperature=cfg.dc_temperature, at=at, parts=fisher_parts(backend, memory))
    memory.update_fisher(f, cfg.fisher_gamma)


def train_into_memory(
    backend: Backend,
    memory: ContinualMemory,
    x0: torch.Tensor,
    name: str,
    trigger: str,
    prompt: str,
    rows: dict[str, torch.Tensor],
    train_cfg: TrainConfig,
    callback=None,
    captions: list[str] | None = None,
    metrics: dict | None = None,
    first_image: torch.Tensor | None = None,
    prior_prompts: list[str] | None = None,
) -> tuple[TrainResult, ConceptRecord]:
    """Learn one concept into `memory` without writing the backend's weights: train, record the rows' pretrained
    values and the concept, and, while EWC-DC is on, fold its DC Fisher (measured at W + the new deltas). The CLI,
    the benchmarks and the ComfyUI train node all learn through here; hosts that may write weights then bake
    (merge_result). prior_prompts: what the prior term (lam_prior) keeps drawing as before (none: the shipped generic
    prompts, core/data/calibration_prompts.txt)."""
    if any(c.name == name for c in memory.concepts):
        raise ValueError(f"concept name '{name}' is already in this memory")
    if train_cfg.lam_ewc > 0 and (bare := sum(c.metrics.get("ewc_fisher") is False for c in memory.concepts)):
        logging.warning("EWC-DC protects only concepts learned with lam_ewc > 0: %d of this memory's %d concepts "
                        "have no Fisher", bare, len(memory.concepts))
    res = train_concept(backend, x0, captions or prompt, trigger, rows, memory, train_cfg, callback,
                        prior_prompts=prior_prompts or default_calibration_prompts())
    n_params = sum(d.numel() for _, d in res.deltas.values())
    record = ConceptRecord(
        name, trigger, prompt,
        rows={n: r for n, (r, _) in res.deltas.items()},
        delta={n: d for n, (_, d) in res.deltas.items()},
        token=res.token,
        config={"train": res.config},
        metrics={**(metrics or {}), "seconds": res.seconds, "final_loss": res.history[-1]["diff"],
                 "params_pct": 100 * n_params / backend.unet_param_count(), "ewc_fisher": train_cfg.lam_ewc > 0,
                 "date": datetime.now(timezone.utc).isoformat(timespec="seconds")},
        thumbnail=None if first_image is None else thumbnail(first_image),
    )
    memory.record_pretrained(backend, record.rows)
    memory.add_concept(record)
    if train_cfg.lam_ewc > 0:
        # only while EWC-DC is on: a dense fp32 value per projection weight would be most of every memory file
        # (SD1.5: 176 MB, SDXL: 2.2 GB), and only EWC reads it (bench/RESULTS.md)
        update_fisher(backend, memory, x0, train_cfg, at=res.deltas)
    return res, record


def learn_concept(
    backend: Backend,
    memory: ContinualMemory,
    images: torch.Tensor,
    name: str,
    trigger: str,
    prompt: str,
    select_cfg: SelectConfig | None = None,
    train_cfg: TrainConfig | None = None,
    calibration_prompts: list[str] | None = None,
    callback=None,
    rows: dict[str, torch.Tensor] | None = None,
    captions: list[str] | None = None,
) -> ConceptOutcome:
    """The whole continual step on a host-agnostic backend that may write its weights: select, train into the
    memory, bake. `rows` skips selection (e.g. dense baselines).

    prompt is the concept's prompt (kept in the memory: the DC candidate and what a user types); captions, one per
    image, optionally replace it for selection and training (e.g. each naming its image's background)."""
    train_cfg = train_cfg or TrainConfig()
    select_cfg = select_cfg or SelectConfig()
    backend.trigger_token_id(trigger)  # validate before any work
    views, view_captions = training_views(images, captions, train_cfg.flip)
    x_all = backend.encode_images(views)
    x0 = x_all[: len(images)]  # selection scores the images as given, as the Select node does
    if rows is None:
        sel = select_concept_neurons(backend, x0, captions or prompt, select_cfg, calibration_prompts,
                                     memory.prev_rows())
    else:
        sel = NeuronSelection(rows, report={"selected_rows": sum(len(r) for r in rows.values()), "given": True})
    res, record = train_into_memory(backend, memory, x_all, name, trigger, prompt, sel.rows, train_cfg, callback,
                                    view_captions, metrics={"selected_rows": sel.n_rows}, first_image=images[0],
                                    prior_prompts=calibration_prompts)
    record.config["select"] = asdict(select_cfg)
    bake(backend, record)
    return ConceptOutcome(sel, res, record)
