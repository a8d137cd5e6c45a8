"""Concept Gallery on ComfyUI's real ModelPatcher / CLIP / VAE (slim SD1.5): the Train node stored a thumbnail, the
grid and JSON come back, progress reaches its total, the inputs stay as they were, bad input is one clear error."""
import json

import pytest
import torch

from conftest import run_node_ui

pytest.importorskip("comfy_api")

SMALL = dict(seed=0, samples=2, size=64, steps=2, cfg=2.0)


@pytest.fixture
def progress_seen():
    import comfy.utils

    seen = []
    old = comfy.utils.PROGRESS_BAR_HOOK
    comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, node_id=None: seen.append((value, total)))
    try:
        yield seen
    finally:
        comfy.utils.set_progress_bar_global_hook(old)


def test_train_node_stores_a_thumbnail_of_the_first_image(trained):
    from continual_concepts.core.images import thumbnail

    c = trained["mem"].concepts[0]
    assert c.thumbnail is not None and torch.equal(c.thumbnail, thumbnail(trained["images"][0]))


def test_gallery_grid_json_and_progress(trained, progress_seen):
    from continual_concepts.core.gallery import gallery_work
    from continual_concepts.nodes.gallery_node import ConceptGallery

    t = trained
    before = dict(t["m2"].patches)
    out = run_node_ui(ConceptGallery, model=t["m2"], clip=t["c2"], vae=t["vae"], memory=t["mem"], **SMALL)
    grid, js, checked = out.args
    assert grid.ndim == 4 and grid.shape[0] == 1 and grid.shape[-1] == 3 and 0 <= grid.min() and grid.max() <= 1
    check = json.loads(js)
    assert out.ui["text"] == [js]
    assert check["candidates"] == ["generic", "a"] and check["size"] == 64 and check["samples"] == 2
    c = check["concepts"][0]
    assert (c["name"], c["trigger"], len(c["picked"])) == ("a", "sks", 2)
    assert set(c["picked"]) <= {"generic", "a"} and c["correct"] == c["picked"].count("a") / 2
    assert checked.concepts[0].metrics["dc_self_check"] == c["correct"] and "dc_self_check" not in t["mem"].concepts[0].metrics
    total = gallery_work(1, 2, 2, 2.0)
    assert progress_seen and progress_seen[-1] == (total, total)
    assert dict(t["m2"].patches) == before and not t["model"].patches and not t["clip"].patcher.patches


@pytest.mark.parametrize("case", ["base_model", "empty_memory", "bad_size"])
def test_bad_input_is_one_clear_error(trained, case):
    from continual_concepts.core.carried import ConceptsMissingError
    from continual_concepts.core.memory import ContinualMemory
    from continual_concepts.nodes.gallery_node import ConceptGallery

    t = trained
    kw = dict(model=t["m2"], clip=t["c2"], vae=t["vae"], memory=t["mem"], **SMALL)
    if case == "base_model":  # a memory whose concepts the model does not carry
        with pytest.raises(ConceptsMissingError, match="does not carry 1 of the memory's concepts"):
            run_node_ui(ConceptGallery, **{**kw, "model": t["model"], "clip": t["clip"]})
    elif case == "empty_memory":
        with pytest.raises(ValueError, match="memory: it holds no concepts"):
            run_node_ui(ConceptGallery, **{**kw, "memory": ContinualMemory(t["mem"].fingerprint)})
    else:
        with pytest.raises(ValueError, match="multiple of 8"):
            run_node_ui(ConceptGallery, **{**kw, "size": 100})
