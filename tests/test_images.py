"""Concept images are brought to the model's square size keeping their proportions (crop or pad), never squashed
unless asked."""
import numpy as np
import torch
import pytest
from PIL import Image

from continual_concepts.core.images import load_image_folder

RED, BLUE, GREEN = (255, 0, 0), (0, 0, 255), (0, 255, 0)


@pytest.fixture
def wide(tmp_path):
    """40×20: green margins (10 px) around a red | blue square of 20×20."""
    a = np.zeros((20, 40, 3), np.uint8)
    a[:, :10], a[:, 10:20], a[:, 20:30], a[:, 30:] = GREEN, RED, BLUE, GREEN
    Image.fromarray(a).save(tmp_path / "0.png")
    return tmp_path


def _near(px, rgb):
    return np.abs(px * 255 - np.array(rgb)).max() < 40


def test_crop_keeps_the_centre_square_pad_keeps_everything_on_white_stretch_squashes(wide):
    crop = load_image_folder(wide, 20)[0].numpy()
    assert crop.shape == (20, 20, 3)
    assert _near(crop[10, 2], RED) and _near(crop[10, 17], BLUE) and not _near(crop[10, 0], GREEN)
    pad = load_image_folder(wide, 20, "pad")[0].numpy()
    assert _near(pad[0, 10], (255, 255, 255)) and _near(pad[19, 10], (255, 255, 255))  # bands above and below
    assert _near(pad[10, 1], GREEN) and _near(pad[10, 7], RED) and _near(pad[10, 12], BLUE)  # all of it, half size
    stretch = load_image_folder(wide, 20, "stretch")[0].numpy()
    assert _near(stretch[0, 1], GREEN) and _near(stretch[10, 12], BLUE) and not _near(stretch[0, 10], (255, 255, 255))


def test_bad_fit_is_one_clear_error(wide):
    with pytest.raises(ValueError, match="fit must be one of crop, pad, stretch"):
        load_image_folder(wide, 20, "zoom")


def test_with_flips_appends_the_mirror_image_of_each(wide):
    from continual_concepts.core.images import with_flips

    batch = load_image_folder(wide, 20)
    both = with_flips(batch)
    assert both.shape[0] == 2 and torch.equal(both[0], batch[0])
    assert _near(both[1][10, 2].numpy(), BLUE) and _near(both[1][10, 17].numpy(), RED)  # blue now on the left


@pytest.mark.parametrize("flip", [True, False])
def test_library_training_draws_from_the_mirror_images_too_when_flip_is_on(flip, monkeypatch):
    """learn_concept (the CLI's and the benchmarks' path) encodes each image and, with flip, its mirror image, and
    gives one caption per view; selection still scores the images as given."""
    from continual_concepts.core import continual
    from continual_concepts.core.backends.diffusers_backend import DiffusersBackend
    from continual_concepts.core.memory import ContinualMemory
    from continual_concepts.core.neurons import SelectConfig
    from continual_concepts.core.tiny_model import TinyModelSpec, build_tiny_components
    from continual_concepts.core.train import TrainConfig

    b = DiffusersBackend(**build_tiny_components(TinyModelSpec(sample_size=8, seed=0)))
    imgs = torch.rand(3, 8, 8, 3, generator=torch.Generator().manual_seed(0))
    seen = {}
    encode, train, select = b.encode_images, continual.train_concept, continual.select_concept_neurons
    monkeypatch.setattr(b, "encode_images", lambda x: seen.setdefault("encoded", x) is x and encode(x))
    monkeypatch.setattr(continual, "select_concept_neurons",
                        lambda be, x0, *a, **k: seen.setdefault("selected", x0) is x0 and select(be, x0, *a, **k))
    monkeypatch.setattr(continual, "train_concept",
                        lambda be, x0, prompts, *a, **k: seen.update(trained=x0, prompts=prompts) or train(be, x0, prompts, *a, **k))
    caps = ["a sks on gray", "a sks on black", "a sks on white"]
    continual.learn_concept(b, ContinualMemory.for_model(b), imgs, "a", "sks", "a sks",
                            SelectConfig(n_calibration=2, budget_pct=3, rho_base=0.3, n_draws=1),
                            TrainConfig(steps=1, lam_dsc=0, fisher_draws=1, flip=flip), ["a cat", "a dog"],
                            captions=caps)
    n = 6 if flip else 3
    assert len(seen["encoded"]) == n and len(seen["trained"]) == n and seen["prompts"] == caps * (n // 3)
    assert len(seen["selected"]) == 3
    if flip:
        assert torch.equal(seen["encoded"][3:], imgs.flip(2))
