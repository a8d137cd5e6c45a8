"""Resuming from a memory file: a base model + the memory is refused by Train, Merge and the probe with one error
naming Apply Concept Memory; through that node it gives the same checkpoint as chaining in one graph."""
import copy
import json

import pytest
import torch

from conftest import run_node as run

pytest.importorskip("comfy_api")


def train_b(t, model, clip, memory):
    from continual_concepts.nodes.train_node import ContinualTrainStep

    return run(ContinualTrainStep, model=model, clip=clip, vae=t["vae"], images=t["images"], neurons=t["neurons"],
               prompt="a photo of ohwx", trigger="ohwx", name="b", steps=2, lr=1e-2, lam_prev=1.0, lam_base=0.1,
               lam_ewc=1.0, lam_dsc=1.0, dc_every=1, seed=0, memory=memory)


def merge(t, model, clip, memory, prefix):
    from continual_concepts.nodes.merge_node import MergeIntoCheckpoint

    # fp32 as held on this CPU: an fp16 file would turn 1e-7 of summation order into a whole fp16 step
    return run(MergeIntoCheckpoint, model=model, clip=clip, vae=t["vae"], memory=memory, filename_prefix=prefix,
               save_dtype="as loaded")[0]


@pytest.fixture
def one_thread():
    """Both trainings on one CPU thread: on two, identical runs sum in a run-dependent order (6e-8 apart), and Adam
    turns that noise in a near-zero token gradient into a whole step (0.1 of the row's RMS) -- over 1e-6 in CI under
    load. On one thread three repeated trainings came out bit-identical."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_resume_through_apply_equals_chaining_and_base_plus_memory_is_refused(trained, comfy_dirs, one_thread):
    from safetensors.torch import load_file

    from continual_concepts.core.carried import ConceptsMissingError
    from continual_concepts.nodes.apply_node import ApplyConceptMemory
    from continual_concepts.nodes.memory_nodes import LoadConceptMemory, SaveConceptMemory
    from continual_concepts.nodes.probe_node import DCScoreProbe

    t = trained
    saved = run(SaveConceptMemory, memory=t["mem"], filename_prefix="day1")[0]
    mem_a = run(LoadConceptMemory, path="day1_00001.safetensors")[0]  # found in output/concept_memory/
    assert saved.endswith("concept_memory/day1_00001.safetensors")
    base, clip = t["model"], t["clip"]
    for refused in (lambda: train_b(t, base, clip, mem_a), lambda: merge(t, base, clip, mem_a, "bad"),
                    lambda: run(DCScoreProbe, model=base, clip=clip, vae=t["vae"], images=t["images"], prompts="",
                                timesteps=1, seed=0, memory=mem_a)):
        with pytest.raises(ConceptsMissingError, match=r"does not carry 1 of the memory's concepts \(a\).*"
                                                       r"'Apply Concept Memory'"):
            refused()
    assert not (comfy_dirs / "output" / "checkpoints").exists(), "a refused merge wrote something"

    m_r, c_r, report, mem_r = run(ApplyConceptMemory, model=base, clip=clip, memory=mem_a)
    assert json.loads(report) == {"applied": ["a"], "already_carried": [], "strengths": {}}
    assert [c.name for c in mem_r.concepts] == ["a"] and torch.equal(mem_r.concepts[0].token, mem_a.concepts[0].token)
    assert json.loads(run(ApplyConceptMemory, model=m_r, clip=c_r, memory=mem_a)[2])["applied"] == []
    assert not base.patches and not clip.patcher.patches, "Apply changed its inputs"

    chained = train_b(t, t["m2"], t["c2"], t["mem"])
    resumed = train_b(t, m_r, c_r, mem_a)
    assert [c.name for c in resumed[2].concepts] == ["a", "b"]
    p1, p2 = merge(t, *chained[:3], "chained"), merge(t, *resumed[:3], "resumed")
    sd1, sd2 = load_file(p1), load_file(p2)
    assert sd1.keys() == sd2.keys()
    # equal up to float rounding; b's own change must be far above the tolerance, or the comparison proves nothing
    tol = 1e-6
    differ = [k for k in sd1 if not torch.allclose(sd1[k].float(), sd2[k].float(), rtol=0, atol=tol)]
    assert differ == [], differ[:5]
    ref = load_file(merge(t, t["m2"], t["c2"], t["mem"], "a_only"))
    kv = [k for k in sd1 if k.endswith(("attn2.to_k.weight", "attn2.to_v.weight"))]
    b_change = max(float((sd1[k].float() - ref[k].float()).abs().max()) for k in kv)
    assert b_change > 100 * tol, f"b changed the K/V weights by at most {b_change}: the comparison proves nothing"


def test_merge_refuses_a_memory_of_another_base_model(trained, comfy_dirs):
    from continual_concepts.core.memory import MemoryMismatchError

    other = copy.deepcopy(trained["mem"])
    other.fingerprint = "0" * 64
    with pytest.raises(MemoryMismatchError, match="another base model"):
        merge(trained, trained["m2"], trained["c2"], other, "other")
