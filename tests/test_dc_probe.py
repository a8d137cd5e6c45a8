"""The DC probe judges each training image among candidates phrased in that image's own context: against the
concepts' training prompts alone, an image captioned on another background loses to c0 whatever was learned."""
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch

from continual_concepts.bench.toyworld import MODEL_DIR
from continual_concepts.core.memory import ContinualMemory
from continual_concepts.core.sequence import dc_probe_accuracy


def test_candidates_in_an_image_context_change_only_the_concept_word():
    mem = ContinualMemory("fp", "")
    mem.concepts = [SimpleNamespace(trigger="sks", prompt="a sks on a gray background"),
                    SimpleNamespace(trigger="zwx", prompt="a zwx on a gray background")]
    prompts = ["", "a sks on a gray background", "a zwx on a gray background"]
    assert mem.candidates() == prompts
    assert mem.candidates("a sks on a black background", "sks") == [
        "", "a sks on a black background", "a zwx on a black background"]
    assert mem.candidates("asks: a sks, sksx", "sks") == ["", "asks: a sks, sksx", "asks: a zwx, sksx"]
    assert mem.candidates("a vbn on a white background", "vbn") == [  # a new concept's caption: the earlier ones
        "", "a sks on a white background", "a zwx on a white background"]
    assert mem.candidates("a photo of a dog", "sks") == prompts  # no trigger in the caption: the prompts


@pytest.mark.skipif(not (MODEL_DIR / "unet").is_dir(), reason="toy model not exported yet")
def test_probe_judges_the_concept_not_the_background():
    from continual_concepts.bench.toyworld.benchmark import SELECT, TRAIN, make_backend
    from continual_concepts.bench.toyworld.evaluate import concept_specs
    from continual_concepts.core.continual import learn_concept

    torch.manual_seed(0)
    b, specs = make_backend(), concept_specs(2)
    mem = ContinualMemory.for_model(b, "")
    quick = replace(TRAIN, steps=40, lam_dsc=0, lam_prior=0, lam_ewc=0)  # the probe is tested, not the regularisers
    for s in specs:
        learn_concept(b, mem, s.images, s.name, s.trigger, s.prompt, replace(SELECT, n_draws=1), quick,
                      captions=s.captions)
    images, captions = [s.images for s in specs], [s.captions for s in specs]
    assert len(set(captions[0])) == 3 and specs[0].prompt in captions[0]  # three backgrounds, one is the prompt's
    prompt_only, _ = dc_probe_accuracy(b, mem, images)
    own_context, probs = dc_probe_accuracy(b, mem, images, captions=captions)
    # with the prompts alone, only the images on the prompt's background can be picked (the others lose to c0)
    assert max(prompt_only) <= 1 / 3 + 1e-6
    assert min(own_context) >= 2 / 3, own_context
    # each image's probabilities stay in its row: the same images grouped by context (within-context order kept,
    # so each context's DC call sees the same batch) give the same rows, moved
    order = sorted(range(len(images[0])), key=lambda j: captions[0][j])
    assert order != list(range(len(images[0])))
    _, grouped = dc_probe_accuracy(b, mem, [images[0][order], images[1]],
                                   captions=[[captions[0][j] for j in order], captions[1]])
    n = len(images[0])
    assert torch.allclose(grouped[:n], probs[:n][order]) and torch.allclose(grouped[n:], probs[n:])
