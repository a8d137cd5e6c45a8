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
