"""parts="qkvo": concept neurons also in the cross-attention query and output projections, whose rows read the
image features (the block's width) where K/V rows read the text — selection, training, memory and Fisher."""
import pytest
import torch

from continual_concepts.core.backends.diffusers_backend import DiffusersBackend
from continual_concepts.core.continual import learn_concept
from continual_concepts.core.memory import ContinualMemory
from continual_concepts.core.neurons import SelectConfig, select_concept_neurons
from continual_concepts.core.tiny_model import TinyModelSpec, build_tiny_components
from continual_concepts.core.train import TrainConfig, row_anchors
from continual_concepts.core.row_delta import RowDeltas

CAL = ["a red circle", "a photo of a dog", "a blue square"]
SEL = SelectConfig(n_calibration=3, budget_pct=4, rho_base=0.3, n_draws=1, parts="qkvo")


def backend():
    return DiffusersBackend(**build_tiny_components(TinyModelSpec(sample_size=8)))


def images(seed=0):
    return torch.rand(3, 8, 8, 3, generator=torch.Generator().manual_seed(seed))


def test_projections_found_with_their_kinds_and_widths():
    b = backend()
    kinds = [l.kind for l in b.layers("qkvo")]
    assert kinds == ["q", "k", "v", "o"] * (len(kinds) // 4) and len(kinds) >= 8
    assert [l.name for l in b.kv_layers()] == [l.name for l in b.layers("kv")]
    widths = {l.kind: l.weight.shape[1] for l in b.projection_layers()}
    assert widths["q"] != widths["k"], "the tiny model must give Q rows another width than K rows, else this is blind"
    with pytest.raises(ValueError, match="parts must be one of"):
        b.layers("qv")


def test_selection_spends_the_budget_by_each_rows_width():
    b = backend()
    sel = select_concept_neurons(b, b.encode_images(images()), "a sks", SEL, CAL)
    width = {l.name: l.weight.shape[1] for l in b.projection_layers()}
    kind = {l.name: l.kind for l in b.projection_layers()}
    r = sel.report
    assert r["selected_params"] == sum(len(rows) * width[n] for n, rows in sel.rows.items())
    assert 0 < r["selected_params"] <= r["budget_params"]
    assert {kind[n] for n, rows in sel.rows.items() if len(rows)} >= {"q", "o"}
    with pytest.raises(ValueError, match="activation"):
        select_concept_neurons(b, b.encode_images(images()), "a sks",
                               SelectConfig(**{**SEL.__dict__, "general_scoring": "activation"}), CAL)


def test_learned_query_and_output_rows_bake_save_and_apply(tmp_path):
    b = backend()
    before = {l.name: l.weight.detach().clone() for l in b.projection_layers()}
    mem = ContinualMemory.for_model(b)
    out = learn_concept(b, mem, images(), "a", "sks", "a sks", SEL, TrainConfig(steps=4, fisher_draws=1, lam_ewc=1.0), CAL)
    moved = set()
    for l in b.projection_layers():
        changed = (l.weight.detach() != before[l.name]).any(1).nonzero().flatten().tolist()
        assert set(changed) <= set(out.record.rows.get(l.name, torch.empty(0)).tolist()), l.name
        moved |= {l.kind} if changed else set()
    assert {"q", "o"} <= moved, "the Q and output rows it selected must have learned"
    assert {l.name for l in b.layers("qkvo")} == set(mem.fisher), "the Fisher covers Q/output rows now in use"
    fresh = backend()
    back = ContinualMemory.load(mem.save(tmp_path / "m.safetensors"), fresh)
    assert back.apply_to(fresh) == "applied" and back.apply_to(fresh) == "already"
    assert all(torch.equal(x.weight, y.weight) for x, y in zip(fresh.projection_layers(), b.projection_layers()))
    # a second concept on the same rows: penalties see them as earlier concepts' rows, with their Fisher
    anchors = row_anchors(b, RowDeltas.on(b, out.record.rows), mem)
    assert anchors.in_prev.all() and anchors.fisher is not None and anchors.fisher.shape == anchors.offset.shape


def test_no_calibration_prompts_means_no_general_filter():
    """n_calibration 0: no row is 'general', so the selection is the top-scoring rows within the budget, with one
    scoring pass instead of 1 + prompts."""
    b = backend()
    x0 = b.encode_images(images())
    calls = []
    cfg = SelectConfig(**{**SEL.__dict__, "n_calibration": 0, "rho_base": 1.0})
    sel = select_concept_neurons(b, x0, "a sks", cfg, CAL, progress=lambda i, t: calls.append((i, t)))
    assert calls == [(1, 1)] and sel.report["general_rows"] == 0
    width = {l.name: l.weight.shape[1] for l in b.projection_layers()}
    ranked = sorted(((float(s), n, r) for n, sc in sel.scores.items() for r, s in enumerate(sc)),
                    key=lambda c: (-c[0], c[1], c[2]))
    want, used = {}, 0
    for _, n, r in ranked:
        if used + width[n] > sel.report["budget_params"]:
            break
        want.setdefault(n, []).append(r)
        used += width[n]
    assert {n: sorted(v) for n, v in want.items()} == {n: r.tolist() for n, r in sel.rows.items() if len(r)}
