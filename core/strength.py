"""Per-concept strength: a concept at strength s has s × its row change and its trigger token at
original + s × (learned − original). 0 is the model without the concept, 1 the concept as learned, up to 2.

A model may come in carrying some concepts already (core.carried states): the change that brings it to the asked
strengths is s × the change for a concept it lacks and (s − 1) × for one it carries; a concept whose factor is 0
is not touched at all, so strength 0 of a missing concept and 1 of a carried one leave its rows as they are."""
from __future__ import annotations

import math
from typing import Callable

import torch

from .carried import CARRIED, summed_changes, without
from .memory import ConceptRecord, ContinualMemory
from .validate import known_concept

LOW, HIGH = 0.0, 2.0
SYNTAX = "'name:strength, other:strength' (e.g. 'dog:0.5, mug:1.2'); concepts not named keep 1"


def parse_strengths(spec: str, memory: ContinualMemory, input_name: str = "strength") -> dict[str, float]:
    """{concept name: strength} for every concept of the memory from a spec like 'dog:0.5, mug:1.2' (empty: all 1)."""
    out = {c.name: 1.0 for c in memory.concepts}
    named = set()
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        name, sep, value = (x.strip() for x in part.rpartition(":"))
        if not sep or not name:
            raise ValueError(f"{input_name}: '{part}' is not name:strength; write {SYNTAX}")
        known_concept(memory, name, input_name)
        if name in named:
            raise ValueError(f"{input_name}: concept '{name}' is given twice")
        try:
            s = float(value)
        except ValueError:
            raise ValueError(f"{input_name}: '{value}' (for '{name}') is not a number") from None
        if not (math.isfinite(s) and LOW <= s <= HIGH):
            raise ValueError(f"{input_name}: '{name}' strength {value} is outside {LOW:g} to {HIGH:g}")
        named.add(name)
        out[name] = s
    return out


def _factor(states: dict[str, str], strengths: dict[str, float], name: str) -> float:
    return strengths.get(name, 1.0) - (1.0 if states[name] == CARRIED else 0.0)


def strength_changes(memory: ContinualMemory, states: dict[str, str],
                     strengths: dict[str, float]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{layer: (rows, change)} taking a model whose concepts are in `states` to each concept at its strength
    (absent: 1): with no strengths, the change that brings every missing concept."""
    factor = {c.name: _factor(states, strengths, c.name) for c in memory.concepts}
    return summed_changes([c for c in memory.concepts if factor[c.name]], scale=factor)


def blended_token(original: torch.Tensor, learned: torch.Tensor, strength: float) -> torch.Tensor:
    """original + s (learned − original); exactly `original` at 0 and `learned` at 1 (torch.lerp)."""
    return torch.lerp(original.float(), learned.float(), strength)


def strength_tokens(memory: ContinualMemory, states: dict[str, str], strengths: dict[str, float],
                    original: Callable[[ConceptRecord], torch.Tensor]) -> dict[str, torch.Tensor]:
    """{trigger: row to set} for the concepts whose token must change to reach their strength; `original(c)` gives
    the trigger's embedding without the concept and is asked only for those."""
    return {c.trigger: blended_token(original(c), c.token, strengths.get(c.name, 1.0)) for c in memory.concepts
            if c.token is not None and _factor(states, strengths, c.name)}


def weighted_memory(memory: ContinualMemory, strengths: dict[str, float],
                    original: Callable[[ConceptRecord], torch.Tensor]) -> ContinualMemory:
    """The memory a model with these strengths carries: each change scaled, each token blended, concepts at 0 left
    out (the strength is kept in the concept's config)."""
    out = without(memory, [c for c in memory.concepts if strengths.get(c.name, 1.0) == 0])
    for c in out.concepts:
        s = strengths.get(c.name, 1.0)
        if s == 1:
            continue
        c.delta = {n: d.float() * s for n, d in c.delta.items()}
        if c.token is not None:
            c.token = blended_token(original(c), c.token, s)
        c.config["strength"] = c.config.get("strength", 1.0) * s
    return out
