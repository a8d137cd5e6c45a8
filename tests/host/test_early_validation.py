"""Bad concept input is refused before any model work (first milliseconds); replace learns a concept again;
Load Concept Images re-reads a folder whose images changed."""
import time

import pytest

from conftest import run_node as run

pytest.importorskip("comfy_api")


def train_kw(t, **over):
    return {**dict(model=t["m2"], clip=t["c2"], vae=t["vae"], images=t["images"], neurons=t["neurons"],
                   prompt="a photo of ohwx", trigger="ohwx", name="b", steps=1, lr=1e-2, lam_prev=0, lam_base=0,
                   lam_ewc=0, lam_dsc=0, dc_every=1, seed=0, memory=t["mem"]), **over}


@pytest.mark.parametrize("over,match", [
    ({"prompt": "a photo of a ring"}, "prompt: must contain the trigger word 'ohwx'"),
    ({"name": "a"}, r"name/trigger: the memory already has concept 'a' \(trigger 'sks'\)"),
    ({"trigger": "sks", "prompt": "a photo of sks"}, r"name/trigger: the memory already has concept 'a'"),
    ({"prior_prompts": "a photo of a ring\na ohwx on a table"}, "prior_prompts: line 2 contains the trigger 'ohwx'"),
])
def test_train_refuses_at_once(trained, over, match):
    from continual_concepts.nodes.train_node import ContinualTrainStep

    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=match):
        run(ContinualTrainStep, **train_kw(trained, **over))
    assert time.perf_counter() - t0 < 0.1


def test_select_refuses_a_prompt_without_its_trigger_at_once(trained):
    from continual_concepts.nodes.select_node import SelectConceptNeurons

    t = trained
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="prompt: must contain the trigger word 'sks'"):
        run(SelectConceptNeurons, model=t["model"], clip=t["clip"], vae=t["vae"], images=t["images"],
            prompt="a photo of a ring", trigger="sks", budget_pct=0.5, calibration_prompts=2,
            general_scoring="taylor", seed=0)
    assert time.perf_counter() - t0 < 0.1


def test_replace_takes_the_old_concept_out_of_model_and_memory(trained):
    import torch

    from continual_concepts.core.carried import model_states
    from continual_concepts.nodes.common import reading_backend
    from continual_concepts.nodes.train_node import ContinualTrainStep

    t = trained
    m, c, mem, _ = run(ContinualTrainStep, **train_kw(t, name="a", trigger="sks", prompt="a photo of sks", seed=1,
                                                       replace=True))
    assert [x.name for x in mem.concepts] == ["a"] and [x.name for x in t["mem"].concepts] == ["a"]
    old, new = t["mem"].concepts[0], mem.concepts[0]
    assert any(not torch.allclose(old.delta[n], new.delta[n]) for n in new.delta)
    with torch.inference_mode(), reading_backend(m, c) as b:
        assert model_states(mem, b) == {"a": "carried"}


def test_load_concept_images_runs_again_when_the_folder_changes(tmp_path):
    import numpy as np
    from PIL import Image

    from continual_concepts.nodes.memory_nodes import LoadConceptImages

    def add(i):
        Image.fromarray((np.random.default_rng(i).random((8, 8, 3)) * 255).astype("uint8")).save(tmp_path / f"{i}.png")

    add(0)
    fp = LoadConceptImages.fingerprint_inputs(folder=str(tmp_path), size=8)
    assert LoadConceptImages.fingerprint_inputs(folder=str(tmp_path), size=8) == fp
    add(1)
    assert LoadConceptImages.fingerprint_inputs(folder=str(tmp_path), size=8) != fp
    assert run(LoadConceptImages, folder=str(tmp_path), size=8)[0].shape == (2, 8, 8, 3)
