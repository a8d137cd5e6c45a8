"""Per-concept strength and Remove Concept (issue 14) on the tiny diffusers model: three concepts a, b, c learned one
after another, c sharing rows with b; every model below is built from a fresh base model."""
import copy

import pytest
import torch

from continual_concepts.core.carried import CARRIED, MISSING, concept_states, summed_changes, without
from continual_concepts.core.continual import learn_concept
from continual_concepts.core.memory import ContinualMemory
from continual_concepts.core.remove import memory_without_concept
from continual_concepts.core.strength import (parse_strengths, strength_changes, strength_tokens,
                                              weighted_memory)
from continual_concepts.core.train import TrainConfig
from test_engine import CAL, SEL, backend, images

TRIGGERS = {"a": "sks", "b": "zwx", "c": "qfv"}


@pytest.fixture(scope="module")
def learned():
    """(memory after a and b, memory after a, b and c); c trains its own rows plus three of b's per layer."""
    b = backend()
    mem = ContinualMemory.for_model(b)
    for i, (name, trig) in enumerate(TRIGGERS.items()):
        rows = None
        if name == "c":
            two, prev = copy.deepcopy(mem), mem.prev_rows()
            size = {l.name: l.weight.shape[0] for l in b.kv_layers()}
            rows = {n: torch.tensor(sorted(r[:3].tolist() + [x for x in range(size[n]) if x not in prev[n]][:2]))
                    for n, r in mem.concepts[1].rows.items()}
        learn_concept(b, mem, images(seed=i), name, trig, f"a {trig}", SEL, TrainConfig(steps=2), CAL, rows=rows)
    return two, mem


def state(b) -> tuple[dict, dict]:
    """K/V weights and the three trigger rows of a backend."""
    return ({l.name: l.weight.detach().clone() for l in b.kv_layers()},
            {t: b.token_row(t) for t in TRIGGERS.values()})


def build(mem, strengths, from_states=None, start=None):
    """A fresh base model taken to `mem` at `strengths`, the way Apply does it (from carrying `start`'s concepts)."""
    b = backend()
    base_tokens = {t: b.token_row(t) for t in TRIGGERS.values()}
    if start is not None:
        build_into(b, start, {c.name: MISSING for c in start.concepts}, {}, base_tokens)
    states = from_states or {c.name: MISSING for c in mem.concepts}
    build_into(b, mem, states, strengths, base_tokens)
    return state(b)


def build_into(b, mem, states, strengths, base_tokens):
    for n, (rows, d) in strength_changes(mem, states, strengths).items():
        b.bake_rows(n, rows, d)
    for trig, row in strength_tokens(mem, states, strengths, lambda c: base_tokens[c.trigger]).items():
        b.set_token_row(trig, row)


def same(x, y):
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


# ------------------------------------------------------------------ parsing
def test_strength_spec_parses_and_defaults_to_one(learned):
    mem = learned[1]
    assert parse_strengths("", mem) == {"a": 1.0, "b": 1.0, "c": 1.0}
    assert parse_strengths(" b : 0.5,c:2 ,", mem) == {"a": 1.0, "b": 0.5, "c": 2.0}


@pytest.mark.parametrize("spec,needle", [
    ("dog:0.5", r"no concept 'dog' \(it has 'a', 'b', 'c'\)"), ("b:2.5", "'b' strength 2.5 is outside 0 to 2"),
    ("b:-0.1", "outside 0 to 2"), ("b:nan", "outside 0 to 2"), ("b:lots", "'lots' \\(for 'b'\\) is not a number"),
    ("b 0.5", "'b 0.5' is not name:strength"), ("b:1, b:0", "'b' is given twice")])
def test_bad_strength_is_one_clear_error(learned, spec, needle):
    with pytest.raises(ValueError, match=r"^strength: .*" + needle):
        parse_strengths(spec, learned[1])


# ------------------------------------------------------------------ strength
def test_strength_one_is_todays_apply_bit_for_bit(learned):
    mem = learned[1]
    missing = {c.name: MISSING for c in mem.concepts}
    today = summed_changes(mem.concepts)  # what Apply added to a base model before strengths existed
    for ones in (strength_changes(mem, missing, {}), strength_changes(mem, missing, parse_strengths("a:1, b:1, c:1", mem))):
        assert today.keys() == ones.keys() and all(torch.equal(today[n][i], ones[n][i]) for n in today for i in (0, 1))
    w, tok = build(mem, {})
    b = backend()
    mem.apply_to(b)  # the memory's own way: every concept's change baked, tokens set
    w_ref, tok_ref = state(b)
    assert same(tok, tok_ref)
    assert all(torch.allclose(w[n], w_ref[n], rtol=0, atol=1e-6) for n in w)


@pytest.mark.parametrize("name", ["a", "b", "c"])
def test_strength_zero_is_the_model_without_the_concept_bit_for_bit(learned, name):
    mem = learned[1]
    rest = without(mem, [mem.concepts[list(TRIGGERS).index(name)]])
    w0, tok0 = build(mem, {name: 0.0})
    w_ref, tok_ref = build(rest, {})
    assert same(w0, w_ref) and same(tok0, tok_ref)
    w1, tok1 = build(mem, {})
    assert not same(w1, w0) and not torch.equal(tok1[TRIGGERS[name]], tok0[TRIGGERS[name]])


def test_half_strength_is_half_the_change_and_the_token_half_way(learned):
    mem = learned[1]
    base_w, base_tok = build(mem, {n: 0.0 for n in TRIGGERS})
    full_w, full_tok = build(mem, {"a": 1.0, "b": 0.0, "c": 0.0})
    half_w, half_tok = build(mem, {"a": 0.5, "b": 0.0, "c": 0.0})
    for n in base_w:
        assert torch.allclose(half_w[n] - base_w[n], 0.5 * (full_w[n] - base_w[n]), atol=1e-7)
    assert torch.allclose(half_tok["sks"], (base_tok["sks"] + full_tok["sks"]) / 2, atol=1e-7)


def test_strength_on_a_model_that_already_carries_the_memory(learned):
    """From a model carrying a, b and c: b at 0 gives the model without b (up to the rounding of w + d - d), with
    b's trigger back to its original row exactly; b at 0.5 gives the model the weighted memory describes."""
    mem = learned[1]
    carried = {c.name: CARRIED for c in mem.concepts}
    w, tok = build(mem, {"b": 0.0}, from_states=carried, start=mem)
    w_ref, tok_ref = build(without(mem, [mem.concepts[1]]), {})
    assert same(tok, tok_ref)
    assert all(torch.allclose(w[n], w_ref[n], rtol=0, atol=1e-6) for n in w)
    w, tok = build(mem, {"b": 0.5}, from_states=carried, start=mem)
    originals = dict(zip(TRIGGERS.values(), state(backend())[1].values()))
    half = weighted_memory(mem, {"b": 0.5}, lambda c: originals[c.trigger])
    assert concept_states(half, w, tok) == {"a": CARRIED, "b": CARRIED, "c": CARRIED}
    assert half.concepts[1].config["strength"] == 0.5 and mem.concepts[1].config.get("strength") is None
    assert [c.name for c in weighted_memory(mem, {"b": 0.0}, None).concepts] == ["a", "c"]


# ------------------------------------------------------------------ remove
def test_removing_the_last_concept_restores_the_previous_memorys_model(learned):
    two, mem = learned
    new, change, report = memory_without_concept(mem, "c")
    assert report["exact"] and report["shared_with_later"] == [] and report["kept"] == ["a", "b"]
    assert same(*[build(m, {})[0] for m in (new, two)]) and same(*[build(m, {})[1] for m in (new, two)])
    for k in ("rows", "delta"):
        assert all(torch.equal(x, y) for c, d in zip(new.concepts, two.concepts)
                   for x, y in zip(getattr(c, k).values(), getattr(d, k).values()))
    # the model that carries the whole memory, plus the change, carries the new one
    b = backend()
    mem.apply_to(b)
    for n, (rows, d) in change.items():
        b.bake_rows(n, rows, d)
    b.set_token_row("qfv", backend().token_row("qfv"))
    w, tok = state(b)
    assert concept_states(new, w, tok) == {"a": CARRIED, "b": CARRIED}
    assert all(torch.allclose(w[n], v, rtol=0, atol=1e-6) for n, v in build(two, {})[0].items())


def test_removing_a_middle_concept_keeps_the_others_and_reports_shared_rows(learned):
    mem = learned[1]
    shared = sum(min(3, len(r)) for r in mem.concepts[1].rows.values())
    new, change, report = memory_without_concept(mem, "b")
    assert not report["exact"] and report["shared_with_later"] == [{"concept": "c", "rows": shared}] and shared
    assert "note" in report and [c.name for c in new.concepts] == ["a", "c"]
    assert len(mem.concepts) == 3, "the input memory was changed"
    b = backend()
    mem.apply_to(b)
    before_w, before_tok = state(b)
    for n, (rows, d) in change.items():
        b.bake_rows(n, rows, d)
    w, tok = state(b)
    for n in w:  # only b's rows moved, and they hold pretrained + a's and c's changes
        moved = (w[n] != before_w[n]).any(1).nonzero().flatten()
        assert set(moved.tolist()) <= set(mem.concepts[1].rows[n].tolist())
    assert same(tok, before_tok)  # a's and c's tokens as they were (b's is restored by the host, see the nodes)
    ref_w, _ = build(new, {})
    assert all(torch.allclose(w[n], ref_w[n], rtol=0, atol=1e-6) for n in w)
    for kept, orig in zip(new.concepts, (mem.concepts[0], mem.concepts[2])):
        assert torch.equal(kept.token, orig.token)
        assert all(torch.equal(kept.delta[n], orig.delta[n]) for n in orig.delta)


def test_removing_an_unknown_concept_lists_the_known_ones(learned):
    with pytest.raises(ValueError, match=r"^name: the memory has no concept 'dog' \(it has 'a', 'b', 'c'\)"):
        memory_without_concept(learned[1], "dog")
