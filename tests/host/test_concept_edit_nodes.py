"""Per-concept strength on Apply Concept Memory and Merge into Checkpoint, and the Remove Concept node, through
ComfyUI's own MODEL / CLIP classes (issue 14). Concept 'a' (trigger sks) comes from the `trained` fixture; 'b'
(trigger ohwx) is trained here on the same rows, so removing 'a' is the inexact case and removing 'b' the exact one."""
import json

import pytest
import torch

from conftest import run_node as run

pytest.importorskip("comfy_api")

TOL = 1e-6  # the rounding of w + d - d in fp32
TOK = 1e-4  # the CLIP computes in fp16 here: a token row patched away and back is within an fp16 step of the
# learned value's size (1.5e-5 for |x| < 0.06)


@pytest.fixture(scope="module")
def two(trained):
    """(model, clip, memory) carrying a and b."""
    from test_resume import train_b

    return train_b(trained, trained["m2"], trained["c2"], trained["mem"])[:3]


def weights(model, clip, triggers=("sks", "ohwx")):
    """K/V weights and trigger rows of a MODEL/CLIP as they compute (patches applied)."""
    from continual_concepts.nodes.common import reading_backend

    with reading_backend(model, clip) as b:
        return ({l.name: l.weight.detach().float().cpu().clone() for l in b.kv_layers()},
                {t: b.token_row(t) for t in triggers})


def close(x, y, tol=TOL):
    return x.keys() == y.keys() and all(torch.allclose(x[k], y[k], rtol=0, atol=tol) for k in x)


def equal(x, y):
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def test_remove_the_last_concept_gives_the_previous_model_back(trained, two):
    from continual_concepts.core.carried import model_states
    from continual_concepts.nodes.common import reading_backend
    from continual_concepts.nodes.remove_node import RemoveConcept

    model, clip, mem = two
    n_patches = (len(model.patches), len(clip.patcher.patches))
    m, c, new, report = run(RemoveConcept, model=model, clip=clip, memory=mem, name="b")
    rep = json.loads(report)
    assert rep["removed"] == "b" and rep["exact"] and rep["kept"] == ["a"]
    assert [x.name for x in new.concepts] == ["a"] and [x.name for x in mem.concepts] == ["a", "b"]
    assert (len(model.patches), len(clip.patcher.patches)) == n_patches, "Remove changed its inputs"
    w, tok = weights(m, c)
    w_ref, tok_ref = weights(trained["m2"], trained["c2"])
    assert close(w, w_ref) and close(tok, tok_ref, TOK)
    assert not torch.allclose(tok_ref["ohwx"], weights(model, clip)[1]["ohwx"], atol=10 * TOK)
    assert not close(w, weights(model, clip)[0], 100 * TOL), "b changed nothing: the comparison proves nothing"
    with reading_backend(m, c) as b:
        assert model_states(new, b) == {"a": "carried"}


def test_remove_a_concept_later_ones_share_rows_with_is_reported_and_keeps_theirs(trained, two):
    from continual_concepts.nodes.remove_node import RemoveConcept

    model, clip, mem = two
    m, c, new, report = run(RemoveConcept, model=model, clip=clip, memory=mem, name="a")
    rep = json.loads(report)
    assert not rep["exact"] and rep["shared_with_later"] == [{"concept": "b", "rows": mem.concepts[0].n_rows}]
    w, tok = weights(m, c)
    before, base_tok = weights(trained["model"], trained["clip"])
    full, full_tok = weights(model, clip)
    assert torch.equal(tok["ohwx"], full_tok["ohwx"]) and torch.allclose(tok["sks"], base_tok["sks"], atol=TOK)
    for k, v in w.items():  # pretrained + b's own change
        rows, d = mem.concepts[1].rows[k], mem.concepts[1].delta[k]
        expect = before[k].clone()
        expect[rows] += d
        assert torch.allclose(v, expect, rtol=0, atol=TOL), k


@pytest.mark.parametrize("case", ["unknown", "base_model"])
def test_remove_refuses_bad_input(trained, two, case):
    from continual_concepts.core.carried import ConceptsMissingError
    from continual_concepts.nodes.remove_node import RemoveConcept

    model, clip, mem = two
    if case == "unknown":
        with pytest.raises(ValueError, match=r"^name: the memory has no concept 'dog' \(it has 'a', 'b'\)"):
            run(RemoveConcept, model=model, clip=clip, memory=mem, name="dog")
    else:
        with pytest.raises(ConceptsMissingError, match="Apply Concept Memory"):
            run(RemoveConcept, model=trained["model"], clip=trained["clip"], memory=trained["mem"], name="a")


def test_apply_strength_zero_one_and_half_on_a_base_model(trained):
    from continual_concepts.core.carried import model_states
    from continual_concepts.nodes.apply_node import ApplyConceptMemory
    from continual_concepts.nodes.common import reading_backend

    base, clip, mem = trained["model"], trained["clip"], trained["mem"]
    w0, tok0 = weights(base, clip)
    m, c, report, out = run(ApplyConceptMemory, model=base, clip=clip, memory=mem, strength="a:0")
    assert equal(weights(m, c)[0], w0) and equal(weights(m, c)[1], tok0)  # bit for bit: nothing patched
    assert out.concepts == [] and json.loads(report)["strengths"] == {"a": 0.0}
    w1, tok1 = weights(*run(ApplyConceptMemory, model=base, clip=clip, memory=mem)[:2])
    assert equal(w1, weights(*run(ApplyConceptMemory, model=base, clip=clip, memory=mem, strength="a:1")[:2])[0])
    assert close(w1, weights(trained["m2"], trained["c2"])[0]) and torch.allclose(tok1["sks"], mem.concepts[0].token, atol=TOK)
    m, c, report, half = run(ApplyConceptMemory, model=base, clip=clip, memory=mem, strength="a: 0.5")
    wh, tokh = weights(m, c)
    assert all(torch.allclose(wh[k] - w0[k], (w1[k] - w0[k]) / 2, atol=TOL) for k in w0)
    assert torch.allclose(tokh["sks"], (tok0["sks"] + tok1["sks"]) / 2, atol=TOK)
    assert not torch.allclose(tok0["sks"], tok1["sks"], atol=10 * TOK)
    assert half.concepts[0].config["strength"] == 0.5
    with reading_backend(m, c) as b:  # the memory output is the one the model carries: Merge etc. accept it
        assert model_states(half, b) == {"a": "carried"}


def test_apply_strength_on_a_model_that_carries_the_concept(trained):
    from continual_concepts.nodes.apply_node import ApplyConceptMemory

    m, c, report, out = run(ApplyConceptMemory, model=trained["m2"], clip=trained["c2"], memory=trained["mem"],
                            strength="a:0")
    assert json.loads(report)["already_carried"] == ["a"]
    w, tok = weights(m, c)
    w0, tok0 = weights(trained["model"], trained["clip"])
    assert close(w, w0) and close(tok, tok0, TOK)
    assert not close(weights(trained["m2"], trained["c2"])[0], w0, 100 * TOL)


@pytest.mark.parametrize("spec,needle", [("a:3", "'a' strength 3 is outside 0 to 2"),
                                         ("dog:1", r"no concept 'dog' \(it has 'a'\)")])
def test_bad_strength_is_one_clear_error_and_merge_writes_nothing(trained, comfy_dirs, spec, needle):
    from continual_concepts.nodes.apply_node import ApplyConceptMemory
    from continual_concepts.nodes.merge_node import MergeIntoCheckpoint

    t = trained
    with pytest.raises(ValueError, match="^strength: .*" + needle):
        run(ApplyConceptMemory, model=t["model"], clip=t["clip"], memory=t["mem"], strength=spec)
    with pytest.raises(ValueError, match="^strength: .*" + needle):
        run(MergeIntoCheckpoint, model=t["m2"], clip=t["c2"], vae=t["vae"], memory=t["mem"], filename_prefix="s",
            strength=spec)
    assert not any(p.is_file() for p in comfy_dirs.rglob("*"))


def test_bad_save_dtype_is_one_clear_error_and_merge_writes_nothing(trained, comfy_dirs):
    from continual_concepts.nodes.merge_node import MergeIntoCheckpoint

    t = trained
    with pytest.raises(ValueError, match=r"^save_dtype: 'fp8' is not one of fp16, bf16, fp32, as loaded$"):
        run(MergeIntoCheckpoint, model=t["m2"], clip=t["c2"], vae=t["vae"], memory=t["mem"], filename_prefix="d",
            save_dtype="fp8")
    assert not any(p.is_file() for p in comfy_dirs.rglob("*"))


def test_merge_with_strength_writes_the_concepts_at_that_strength(trained, comfy_dirs):
    from safetensors.torch import load_file

    from continual_concepts.core.memory import ContinualMemory
    from continual_concepts.nodes.merge_node import MergeIntoCheckpoint

    t = trained
    res = run(MergeIntoCheckpoint, model=t["m2"], clip=t["c2"], vae=t["vae"], memory=t["mem"], filename_prefix="z",
              strength="a:0", save_dtype="as loaded")  # fp32, as held here: TOL is fp32's rounding
    sd = load_file(res[0])
    for k, v in t["before"].items():  # the base model's K/V weights (w + d - d: up to its rounding)
        assert torch.allclose(sd["model." + k].float(), v.float(), rtol=0, atol=TOL), k
    files = sorted(p.relative_to(comfy_dirs).as_posix() for p in comfy_dirs.rglob("*") if p.is_file())
    assert files == ["output/checkpoints/z_00001.safetensors", "output/concept_memory/z_00001.safetensors"]
    assert ContinualMemory.load(comfy_dirs / files[1]).concepts == []
    run(MergeIntoCheckpoint, model=t["m2"], clip=t["c2"], vae=t["vae"], memory=t["mem"], filename_prefix="h",
        strength="a:0.5")
    half = ContinualMemory.load(comfy_dirs / "output/concept_memory/h_00001.safetensors").concepts[0]
    full = t["mem"].concepts[0]
    assert half.config["strength"] == 0.5
    assert all(torch.allclose(half.delta[n], full.delta[n] / 2) for n in full.delta)


def test_a_merged_checkpoint_has_lost_the_original_token_one_clear_error(trained, comfy_dirs):
    """Its CLIP holds the learned token in its own weights: Remove and a strength other than 1 cannot know the
    original embedding and say so (strength 1 still works: nothing to blend)."""
    import comfy.sd

    from continual_concepts.nodes.apply_node import ApplyConceptMemory
    from continual_concepts.nodes.merge_node import MergeIntoCheckpoint
    from continual_concepts.nodes.remove_node import RemoveConcept

    t = trained
    path = run(MergeIntoCheckpoint, model=t["m2"], clip=t["c2"], vae=t["vae"], memory=t["mem"], filename_prefix="m")[0]
    m, c, _, _ = comfy.sd.load_checkpoint_guess_config(path)
    needle = "trigger 'sks' of concept 'a' holds its learned embedding in the CLIP's own weights"
    with pytest.raises(ValueError, match="^clip: the " + needle):
        run(RemoveConcept, model=m, clip=c, memory=t["mem"], name="a")
    with pytest.raises(ValueError, match="^clip: the " + needle):
        run(ApplyConceptMemory, model=m, clip=c, memory=t["mem"], strength="a:0.5")
    assert json.loads(run(ApplyConceptMemory, model=m, clip=c, memory=t["mem"])[2])["already_carried"] == ["a"]
