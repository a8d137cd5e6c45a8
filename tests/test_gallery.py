"""Concept gallery on the toy world: thumbnails stored at train time, one column per concept + generic, a DC
self-check that passes on learned concepts and fails on two the model cannot tell apart, older memories load."""
import copy
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from continual_concepts.bench.toyworld import MODEL_DIR
from continual_concepts.core.gallery import GENERIC, check_gallery, concept_gallery, gallery_work
from continual_concepts.core.images import THUMBNAIL_SIZE, thumbnail
from continual_concepts.core.memory import ConceptRecord, ContinualMemory

pytestmark = pytest.mark.skipif(not (MODEL_DIR / "unet").is_dir(), reason="toy model not exported yet")
DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def learned():
    """Two toy-world concepts learned one after the other (few steps: enough to learn them, as the self-check shows)."""
    from continual_concepts.bench.toyworld.benchmark import SELECT, TRAIN, make_backend
    from continual_concepts.bench.toyworld.evaluate import concept_specs
    from continual_concepts.core.continual import learn_concept

    b, specs = make_backend(), concept_specs(2)
    mem = ContinualMemory.for_model(b, "")
    for s in specs:
        learn_concept(b, mem, s.images, s.name, s.trigger, s.prompt, replace(SELECT, n_draws=1),
                      replace(TRAIN, steps=40), captions=s.captions)
    return b, mem, specs


def test_training_stores_a_thumbnail_of_the_first_image_and_it_survives_the_file(learned, tmp_path):
    _, mem, specs = learned
    for c, s in zip(mem.concepts, specs):
        assert c.thumbnail.dtype == torch.uint8 and c.thumbnail.shape == (THUMBNAIL_SIZE, THUMBNAIL_SIZE, 3)
        assert torch.equal(c.thumbnail, thumbnail(s.images[0]))
    # it shows the image: 32 px upscaled to 64, then back down, is within rounding of the training image
    small = torch.nn.functional.avg_pool2d(mem.concepts[0].thumbnail.permute(2, 0, 1).float(), 2).permute(1, 2, 0)
    assert (small / 255 - specs[0].images[0]).abs().mean() < 0.02
    back = ContinualMemory.load(mem.save(tmp_path / "m.safetensors"))
    assert all(torch.equal(a.thumbnail, b.thumbnail) for a, b in zip(mem.concepts, back.concepts))
    assert all(c["thumbnail"] for c in back.summary()["concepts"])


def test_memory_from_before_thumbnails_still_loads_without_them():
    mem = ContinualMemory.load(DATA / "memory_v1_tiny.safetensors")
    assert [c.name for c in mem.concepts] == ["red", "blue"] and all(c.thumbnail is None for c in mem.concepts)


def test_gallery_columns_thumbnails_progress_and_self_check(learned):
    from continual_concepts.report.gallery import gallery_cells, gallery_picture

    b, mem, specs = learned
    seen = []
    g = concept_gallery(b, mem, seed=3, samples=2, steps=8, cfg=4.0, progress=lambda d, t: seen.append((d, t)))
    assert g.names == [s.name for s in specs] + [GENERIC] and g.triggers == [s.trigger for s in specs] + [""]
    assert g.images.shape == (3, 2, 32, 32, 3)
    total = gallery_work(2, 2, 8, 4.0)
    assert seen[-1] == (total, total) and all(a[0] < c[0] for a, c in zip(seen, seen[1:]))
    # the same seed gives the same gallery (columns compare like for like across galleries)
    again = concept_gallery(b, mem, seed=3, samples=2, steps=8, cfg=4.0)
    assert torch.equal(g.images, again.images)

    cells, labels = gallery_cells(g)
    assert cells.shape[:2] == (3, 3) and labels == ["training image", "sample 1", "sample 2"]
    assert torch.equal(cells[1:].transpose(0, 1), g.images)
    assert (cells[0, 2] == 1).all(), "the generic column has no thumbnail"
    for i, s in enumerate(specs):  # each concept's column is topped by its own training image
        assert (cells[0, i] - s.images[0]).abs().mean() < 0.03
        assert (cells[0, i] - specs[1 - i].images[0]).abs().mean() > 0.1

    check = json.loads(json.dumps(g.self_check()))
    assert check["candidates"] == [GENERIC] + [s.name for s in specs]
    assert [(c["name"], c["trigger"], len(c["picked"])) for c in check["concepts"]] == [
        (s.name, s.trigger, 2) for s in specs]
    assert all(c["correct"] == 1.0 for c in check["concepts"]), check  # learned concepts pass

    pic = gallery_picture(g)
    assert pic.dtype.name == "uint8" and pic.ndim == 3 and pic.shape[2] == 3
    no_thumbs = replace(g, thumbnails=[None] * 3)
    assert gallery_cells(no_thumbs)[0].shape[0] == 2 and gallery_picture(no_thumbs).shape[0] < pic.shape[0]


def test_self_check_fails_for_a_concept_the_model_cannot_tell_from_another(learned):
    """A second record whose trigger carries the first concept's learned token (as when one concept overwrote
    another): each of its generations equals the first concept's, so at most one of the two can be picked for it."""
    from continual_concepts.bench.toyworld.evaluate import concept_specs

    b, mem, specs = learned
    first, other = mem.concepts[0], concept_specs(3)[2]
    clash = copy.copy(mem)
    clash.concepts = [first, ConceptRecord("copycat", other.trigger, first.prompt.replace(first.trigger, other.trigger),
                                           {}, {}, token=first.token.clone())]
    g = concept_gallery(b, clash, seed=3, samples=4, steps=8, cfg=4.0)
    assert torch.allclose(g.images[0], g.images[1], atol=1e-5)
    c = g.self_check()["concepts"]
    assert c[0]["correct"] + c[1]["correct"] <= 1.0 and g.self_check()["mean_correct"] <= 0.5, c


def test_bad_input_is_one_clear_error():
    mem = ContinualMemory("fp")
    with pytest.raises(ValueError, match="memory: it holds no concepts"):
        check_gallery(mem, 2, 32, 4)
    mem.concepts.append(ConceptRecord("a", "sks", "a sks", {}, {}))
    for args, needle in (((0, 32, 4), "samples must be at least 1"), ((2, 30, 4), "multiple of 8"),
                         ((2, 32, 0), "steps must be at least 1")):
        with pytest.raises(ValueError, match=needle):
            check_gallery(mem, *args)
