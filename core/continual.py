"""Learn one concept into a model and its memory: select -> train -> merge -> update the DC Fisher."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from .backends.base import Backend
from .fisher import dc_fisher
from .memory import ConceptRecord, ContinualMemory
from .neurons import NeuronSelection, SelectConfig, select_concept_neurons
from .train import TrainConfig, TrainResult, train_concept


@dataclass
class ConceptOutcome:
    selection: NeuronSelection
    result: TrainResult
    record: ConceptRecord


def merge_result(backend: Backend, memory: ContinualMemory, record: ConceptRecord) -> None:
    """Bake a trained concept into the backend's weights (fusion-free: the model itself now knows it)."""
    memory.record_pretrained(backend, record.rows)
    for n, r in record.rows.items():
        backend.bake_rows(n, r, record.delta[n])
    if record.token is not None:
        backend.set_token_row(record.trigger, record.token)
    memory.add_concept(record)


def update_fisher(backend: Backend, memory: ContinualMemory, x0: torch.Tensor, cfg: TrainConfig,
                  at: dict | None = None) -> None:
    """Fold the newest concept's DC Fisher into the memory (`at`: its deltas, if not baked into backend)."""
    with torch.no_grad():
        ctx = backend.encode_text(memory.candidates(), memory.tokens())
    f = dc_fisher(backend, x0, ctx, target=len(memory.concepts), draws=cfg.fisher_draws, seed=cfg.seed,
                  temperature=cfg.dc_temperature, scale=cfg.dc_scale, at=at)
    memory.update_fisher(f, cfg.fisher_gamma)


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
) -> ConceptOutcome:
    """The whole continual step on a host-agnostic backend; `rows` skips selection (e.g. dense baselines)."""
    train_cfg = train_cfg or TrainConfig()
    select_cfg = select_cfg or SelectConfig()
    backend.trigger_token_id(trigger)  # validate before any work
    x0 = backend.encode_images(images)
    if rows is None:
        sel = select_concept_neurons(backend, x0, prompt, select_cfg, calibration_prompts, memory.prev_rows())
    else:
        sel = NeuronSelection(rows, report={"selected_rows": sum(len(r) for r in rows.values()), "given": True})
    res = train_concept(backend, x0, prompt, trigger, sel.rows, memory, train_cfg, callback)
    record = ConceptRecord(
        name, trigger, prompt,
        rows={n: r for n, (r, _) in res.deltas.items()},
        delta={n: d for n, (_, d) in res.deltas.items()},
        token=res.token,
        config={"select": asdict(select_cfg), "train": res.config},
        metrics={"selected_rows": sel.n_rows, "seconds": res.seconds, "final_loss": res.history[-1]["diff"]},
    )
    merge_result(backend, memory, record)
    if train_cfg.lam_ewc > 0:
        update_fisher(backend, memory, x0, train_cfg)
    return ConceptOutcome(sel, res, record)
