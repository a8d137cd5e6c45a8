"""Remove a concept from a memory: the memory without it, and the row change that takes a model carrying the memory
to carrying the rest.

The change is minus the concept's own delta. That is exact where no later concept touched its rows. A later concept
that shares rows was trained on top of it: its own delta stays (its change is kept), but it was learned for rows that
held the removed concept too, so the report names it and how many rows it shares. The online Fisher still counts
the removed concept (it cannot be taken out of the running sum; it only protects its rows a little more)."""
from __future__ import annotations

import torch

from .carried import summed_changes, without
from .memory import ContinualMemory
from .validate import known_concept


def memory_without_concept(memory: ContinualMemory, name: str, input_name: str = "name"
                           ) -> tuple[ContinualMemory, dict[str, tuple[torch.Tensor, torch.Tensor]], dict]:
    """(memory without `name`, {layer: (rows, change)} to add to a model carrying the memory, report)."""
    record = known_concept(memory, name, input_name)
    later = memory.concepts[memory.concepts.index(record) + 1:]
    shared = []
    for c in later:
        n = sum(int(torch.isin(c.rows[layer], rows).sum()) for layer, rows in record.rows.items() if layer in c.rows)
        if n:
            shared.append({"concept": c.name, "rows": n})
    report = {"removed": name, "trigger": record.trigger, "rows": record.n_rows, "exact": not shared,
              "shared_with_later": shared,
              "kept": [c.name for c in memory.concepts if c is not record]}
    if shared:
        report["note"] = ("later concepts were trained on rows that also held this one: its own change is taken "
                          "out and theirs kept, so they may look a little different without it")
    return without(memory, [record]), summed_changes([record], -1.0), report
