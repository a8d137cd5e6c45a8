"""A memory knows whether a model carries its concepts (core.carried), on plain tensors: no model needed."""
import pytest
import torch

from continual_concepts.core.carried import CARRIED, MISSING, concept_states
from continual_concepts.core.memory import ConceptRecord, ContinualMemory, MemoryMismatchError
from continual_concepts.core.strength import strength_changes

L = "layer.to_k"


def memory():
    """Base weights [8, 4]; A changes rows 0-2, B rows 2-4 (row 2 shared), C rows 6-7 (no token)."""
    g = torch.Generator().manual_seed(0)
    base = torch.randn(8, 4, generator=g) * 0.05
    mem = ContinualMemory("fp")
    mem.pretrained[L] = (torch.arange(8), base.clone())
    for name, trig, rows, tok in (("A", "sks", [0, 1, 2], True), ("B", "zwx", [2, 3, 4], True), ("C", "qpr", [6, 7], False)):
        r = torch.tensor(rows)
        mem.concepts.append(ConceptRecord(name, trig, f"a {trig}", {L: r}, {L: torch.randn(len(rows), 4, generator=g) * 0.01},
                                          torch.randn(6, generator=g) if tok else None))
    base_tokens = {"sks": torch.zeros(6), "zwx": torch.ones(6), "qpr": torch.zeros(6)}
    return mem, base, base_tokens


def with_concepts(mem, base, base_tokens, names):
    w, tokens = base.clone(), dict(base_tokens)
    for c in mem.concepts:
        if c.name in names:
            w.index_add_(0, c.rows[L], c.delta[L])
            if c.token is not None:
                tokens[c.trigger] = c.token.clone()
    return w, tokens


@pytest.mark.parametrize("names", [(), ("A",), ("B",), ("A", "B"), ("A", "B", "C"), ("C",)])
def test_each_concept_is_told_carried_or_missing(names):
    mem, base, bt = memory()
    w, tokens = with_concepts(mem, base, bt, names)
    got = concept_states(mem, {L: w}, tokens)
    assert got == {c.name: CARRIED if c.name in names else MISSING for c in mem.concepts}


def test_rows_rounded_to_half_precision_still_count_as_carried():
    mem, base, bt = memory()
    w, tokens = with_concepts(mem, base, bt, ("A", "B"))
    half = {t: v.half().float() for t, v in tokens.items()}
    assert concept_states(mem, {L: w.bfloat16().float()}, half) == {"A": CARRIED, "B": CARRIED, "C": MISSING}


def test_rows_from_another_run_are_an_error():
    mem, base, bt = memory()
    w, tokens = with_concepts(mem, base, bt, ("A",))
    w[0] += 0.02
    with pytest.raises(MemoryMismatchError, match="concept 'A'"):
        concept_states(mem, {L: w}, tokens)


def test_token_without_rows_or_rows_without_token_is_an_error():
    mem, base, bt = memory()
    w, tokens = with_concepts(mem, base, bt, ("A",))
    with pytest.raises(MemoryMismatchError, match="trigger 'sks' token is not"):
        concept_states(mem, {L: w}, bt)
    with pytest.raises(MemoryMismatchError, match="trigger 'zwx' token is the learned"):
        concept_states(mem, {L: w}, {**tokens, "zwx": mem.concepts[1].token})


def test_changes_without_strengths_bring_a_partial_model_to_every_concept():
    mem, base, bt = memory()
    w, tokens = with_concepts(mem, base, bt, ("B",))
    states = concept_states(mem, {L: w}, tokens)
    for n, (rows, d) in strength_changes(mem, states, {}).items():
        w.index_add_(0, rows, d)
    full, _ = with_concepts(mem, base, bt, ("A", "B", "C"))
    assert torch.allclose(w, full, atol=1e-7)
    assert 2 not in strength_changes(mem, states, {})[L][0].tolist() or states["A"] == MISSING
    tokens.update({c.trigger: c.token for c in mem.concepts if c.token is not None})
    assert set(concept_states(mem, {L: w}, tokens).values()) == {CARRIED}
