"""Does a model carry a memory's concepts? Per concept, the model's K/V rows must equal pretrained + that concept's
change (carried) or the pretrained rows (missing), and its trigger token must be the learned one exactly when the
rows are carried. Anything else (rows from another memory, a half-applied concept) is an error.

Rows shared by several concepts hold the sum of the carried concepts' changes; a concept is decided on the rows
only it touched, and concepts without such rows by the one combination that explains every touched row."""
from __future__ import annotations

import itertools

import torch

from .backends.base import Backend
from .memory import ConceptRecord, ContinualMemory, MemoryMismatchError

CARRIED, MISSING = "carried", "missing"
RTOL = 2.0**-7  # bf16 keeps 8 significant bits: a row stored in bf16 or fp16 and read back is within this
ATOL = 1e-6
APPLY_NODE = "Apply Concept Memory"


class ConceptsMissingError(ValueError):
    """The memory lists concepts the model does not carry (a base model with a loaded memory)."""


def _tol(ref: torch.Tensor) -> torch.Tensor:
    return RTOL * ref.abs().amax(-1, keepdim=True) + ATOL


def _fits(x: torch.Tensor, tol: torch.Tensor) -> bool:
    return bool((x.abs() <= tol).all())


def concept_states(memory: ContinualMemory, weights: dict[str, torch.Tensor],
                   token_rows: dict[str, torch.Tensor] | None = None) -> dict[str, str]:
    """{concept name: 'carried' | 'missing'} for a model whose K/V weights (layer -> [out, in]) and trigger-token
    rows (trigger -> row; None: not checked) are given. Raises MemoryMismatchError when no state explains them."""
    pre = memory.pretrained
    offset = {n: weights[n].detach()[rows.to(weights[n].device)].float().cpu() - vals.float() for n, (rows, vals) in pre.items()}
    tol = {n: _tol(vals.float()) for n, (_, vals) in pre.items()}
    pos = {n: {int(r): i for i, r in enumerate(rows)} for n, (rows, _) in pre.items()}
    users: dict[tuple[str, int], int] = {}
    changes = []  # per concept: {layer: (positions in the pretrained table, delta)}
    for c in memory.concepts:
        ch = {n: (torch.tensor([pos[n][int(r)] for r in rows], dtype=torch.long), c.delta[n].float())
              for n, rows in c.rows.items() if len(rows)}
        for n, (p, _) in ch.items():
            for i in p.tolist():
                users[n, i] = users.get((n, i), 0) + 1
        changes.append(ch)

    def explains(carried: set[int], where: dict[str, torch.Tensor] | None = None) -> bool:
        """Do the offsets equal the carried concepts' summed change (on `where`'s positions, default all)?"""
        for n, o in offset.items():
            sel = slice(None) if where is None else where.get(n)
            if sel is None:
                continue
            expect = torch.zeros_like(o)
            for k in carried:
                if n in changes[k]:
                    expect.index_add_(0, *changes[k][n])
            if not _fits(o[sel] - expect[sel], tol[n][sel]):
                return False
        return True

    states: dict[int, str] = {}
    undecided = []
    for k, ch in enumerate(changes):
        own = {n: p[torch.tensor([users[n, i] == 1 for i in p.tolist()], dtype=torch.bool)] for n, (p, _) in ch.items()}
        own = {n: p for n, p in own.items() if len(p)}
        if not own:
            undecided.append(k)
            continue
        d_own = {n: ch[n][1][torch.isin(ch[n][0], p)] for n, p in own.items()}
        err_c = max(float(((offset[n][p] - d_own[n]).abs() - tol[n][p]).max()) for n, p in own.items())
        err_m = max(float((offset[n][p].abs() - tol[n][p]).max()) for n, p in own.items())
        if min(err_c, err_m) > 0:
            raise MemoryMismatchError(
                f"memory: concept '{memory.concepts[k].name}': the model's trained rows equal neither the pretrained rows "
                "nor pretrained + this concept's change (a model or memory from another run?)")
        states[k] = CARRIED if err_c <= err_m else MISSING
    decided = {k for k, s in states.items() if s == CARRIED}
    if undecided:
        where = {n: torch.cat([changes[k][n][0] for k in undecided if n in changes[k]])
                 for n in {n for k in undecided for n in changes[k]}}
        fits = [set(sub) for r in range(len(undecided) + 1) for sub in itertools.combinations(undecided, r)
                if explains(decided | set(sub), where)] if len(undecided) <= 12 else []
        if not fits:
            raise MemoryMismatchError("memory: the model's rows shared by several concepts fit no combination of "
                                      f"them ({', '.join(memory.concepts[k].name for k in undecided)})")
        for k in undecided:
            states[k] = CARRIED if k in fits[-1] else MISSING
    if not explains({k for k, s in states.items() if s == CARRIED}):
        raise MemoryMismatchError("memory: the model's trained rows fit no combination of this memory's concepts")
    for k, c in enumerate(memory.concepts):
        row = (token_rows or {}).get(c.trigger)
        if c.token is None or row is None:
            continue
        has = _fits(row.float().cpu() - c.token.float(), _tol(c.token.float()))
        if has != (states[k] == CARRIED):
            raise MemoryMismatchError(
                f"memory: concept '{c.name}': its rows are {states[k]} but the trigger '{c.trigger}' token "
                f"{'is' if has else 'is not'} the learned one")
    return {c.name: states[k] for k, c in enumerate(memory.concepts)}


def model_states(memory: ContinualMemory, backend: Backend, force: bool = False) -> dict[str, str]:
    """Fingerprint check (the memory belongs to this base model), then concept_states on the backend's model."""
    memory.check_model(backend, force)
    weights = {l.name: l.weight for l in backend.projection_layers()}
    tokens = {c.trigger: backend.token_row(c.trigger) for c in memory.concepts if c.token is not None}
    return concept_states(memory, weights, tokens)


def require_carried(memory: ContinualMemory, backend: Backend, input_name: str = "memory") -> None:
    """Refuse a model that lacks some of the memory's concepts, naming them and the node that applies them."""
    missing = [n for n, s in model_states(memory, backend).items() if s == MISSING]
    if missing:
        raise ConceptsMissingError(
            f"{input_name}: the model does not carry {len(missing)} of the memory's concepts ({', '.join(missing)}); "
            f"connect the model, clip and memory through '{APPLY_NODE}' first (a base model with a loaded memory)")


def summed_changes(records: list[ConceptRecord], sign: float = 1.0,
                   scale: dict[str, float] | None = None) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{layer: (rows, sign * summed change)} of several concepts (rows shared between them add up); `scale` weighs
    each concept's change by name (absent: 1)."""
    acc: dict[str, dict[int, torch.Tensor]] = {}
    for c in records:
        s = (scale or {}).get(c.name, 1.0)
        for n, rows in c.rows.items():
            layer = acc.setdefault(n, {})
            for r, d in zip(rows.tolist(), c.delta[n].float() * s):
                layer[r] = layer[r] + d if r in layer else d.clone()
    return {n: (torch.tensor(sorted(rows), dtype=torch.long), sign * torch.stack([rows[r] for r in sorted(rows)]))
            for n, rows in acc.items() if rows}


def without(memory: ContinualMemory, records: list[ConceptRecord]) -> ContinualMemory:
    """A copy of the memory without these concepts (their pretrained rows and Fisher stay: still true)."""
    out = memory.copy()
    names = {c.name for c in records}
    out.concepts = [c for c in out.concepts if c.name not in names]
    return out
