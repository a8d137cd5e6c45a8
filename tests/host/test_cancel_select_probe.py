"""Select, DC Probe and Concept Gallery show progress and stop after Cancel within one scoring pass / one denoiser
batch; nothing stays applied and a later run is unaffected (like the Train test)."""
import json

import pytest

from conftest import run_node as run

pytest.importorskip("comfy_api")


@pytest.fixture
def cancel_at_first_update():
    """ComfyUI's progress hook that presses Cancel at the first update it sees; records every update."""
    import comfy.model_management as mm
    import comfy.utils

    seen = []

    def hook(value, total, preview, node_id=None):
        seen.append((value, total))
        mm.interrupt_current_processing(True)

    old = comfy.utils.PROGRESS_BAR_HOOK
    comfy.utils.set_progress_bar_global_hook(hook)
    try:
        yield seen
    finally:
        comfy.utils.set_progress_bar_global_hook(old)
        mm.interrupt_current_processing(False)


def nothing_left(t):
    import comfy.model_management as mm

    assert not mm.processing_interrupted(), "the interrupt was not consumed"
    dm = t["model"].model.diffusion_model
    assert not any(m._forward_hooks for n, m in dm.named_modules() if n.endswith(("attn2.to_k", "attn2.to_v")))
    assert not t["model"].patches and not t["clip"].patcher.patches


def test_select_stops_after_the_first_scoring_pass(trained, cancel_at_first_update):
    import comfy.model_management as mm

    from continual_concepts.nodes.select_node import SelectConceptNeurons

    t = trained
    kw = dict(model=t["model"], clip=t["clip"], vae=t["vae"], images=t["images"], prompt="a photo of sks",
              trigger="sks", budget_pct=0.5, calibration_prompts=20, general_scoring="taylor", seed=0)
    with pytest.raises(mm.InterruptProcessingException):
        run(SelectConceptNeurons, **kw)
    assert cancel_at_first_update == [(1, 21)]
    nothing_left(t)


def test_probe_stops_after_the_first_denoiser_batch(trained, cancel_at_first_update):
    import comfy.model_management as mm

    from continual_concepts.nodes.probe_node import DCScoreProbe

    t = trained
    kw = dict(model=t["m2"], clip=t["c2"], vae=t["vae"], images=t["images"], prompts="a dog", timesteps=300, seed=0,
              memory=t["mem"])
    with pytest.raises(mm.InterruptProcessingException):
        run(DCScoreProbe, **kw)
    total = 2 * 300 * 3
    assert cancel_at_first_update == [(64, total)]
    nothing_left(t)
    cancel_at_first_update.clear()
    import comfy.utils

    comfy.utils.set_progress_bar_global_hook(lambda v, tot, p, node_id=None: cancel_at_first_update.append((v, tot)))
    js = run(DCScoreProbe, **{**kw, "timesteps": 2})[0]
    assert len(json.loads(js)["probs"]) == 2 and cancel_at_first_update[-1] == (12, 12)


def test_gallery_stops_after_the_first_denoiser_batch(trained, cancel_at_first_update):
    import comfy.model_management as mm

    from continual_concepts.core.gallery import gallery_work
    from continual_concepts.nodes.gallery_node import ConceptGallery

    t = trained
    with pytest.raises(mm.InterruptProcessingException):
        run(ConceptGallery, model=t["m2"], clip=t["c2"], vae=t["vae"], memory=t["mem"], seed=0, samples=3, size=64,
            steps=50, cfg=7.0)
    assert cancel_at_first_update == [(6, gallery_work(1, 3, 50, 7.0))]  # one guided step of 3 samples
    nothing_left(t)
