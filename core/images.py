"""Load a folder of concept images as one float batch [B,H,W,3] in 0..1, with one clear error per problem."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

EXTENSIONS = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}


def to_rgb_array(img) -> np.ndarray:
    """Any PIL mode -> RGB float array; alpha is composited on white (transparent pixels are background)."""
    from PIL import Image

    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(bg, rgba)
    return np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0


FITS = ("crop", "pad", "stretch")


def check_fit(fit: str) -> None:
    if fit not in FITS:
        raise ValueError(f"fit must be one of {', '.join(FITS)} (got {fit!r})")


def fit_square(rgb: np.ndarray, size: int, fit: str = "crop") -> np.ndarray:
    """An RGB float array to size×size keeping the aspect ratio: crop = scale the short side to `size` and cut
    the centre (what kohya / diffusers trainers do), pad = scale the long side and centre it on white, stretch =
    squash (distorts the subject)."""
    from PIL import Image

    check_fit(fit)
    im = Image.fromarray((rgb * 255).round().astype(np.uint8))
    w, h = im.size
    if fit == "stretch":
        return np.asarray(im.resize((size, size), Image.BICUBIC), dtype=np.float32) / 255.0
    s = size / (min(w, h) if fit == "crop" else max(w, h))
    nw, nh = max(size if fit == "crop" else 1, round(w * s)), max(size if fit == "crop" else 1, round(h * s))
    im = im.resize((nw, nh), Image.BICUBIC)
    if fit == "crop":
        left, top = (nw - size) // 2, (nh - size) // 2
        im = im.crop((left, top, left + size, top + size))
    else:
        canvas = Image.new("RGB", (size, size), (255, 255, 255))
        canvas.paste(im, ((size - nw) // 2, (size - nh) // 2))
        im = canvas
    return np.asarray(im, dtype=np.float32) / 255.0


THUMBNAIL_SIZE = 64


def thumbnail(image: torch.Tensor, size: int = THUMBNAIL_SIZE) -> torch.Tensor:
    """A concept's picture in its memory: one image [H,W,3] in 0..1 -> uint8 [size,size,3], centre-cropped (a few
    KiB per concept, so galleries can show what was taught without keeping the training images)."""
    rgb = image[..., :3].detach().float().cpu().clamp(0, 1).numpy()
    return torch.from_numpy((fit_square(rgb, size, "crop") * 255).round().astype(np.uint8))


def load_image_folder(folder, size: int | None = None, fit: str = "crop") -> torch.Tensor:
    """All images of a folder (sorted by name), each brought to size×size by `fit` (fit_square). Without a size,
    mixed sizes are an error."""
    from PIL import Image, UnidentifiedImageError

    check_fit(fit)  # before any file is read
    p = Path(folder)
    if not p.is_dir():
        raise FileNotFoundError(f"images: folder {p} does not exist")
    files = sorted(f for f in p.iterdir() if f.suffix.lower() in EXTENSIONS)
    if not files:
        raise ValueError(f"images: folder {p} has no images ({', '.join(sorted(EXTENSIONS))})")
    arrays = []
    for f in files:
        try:
            with Image.open(f) as im:
                im.load()
                rgb = to_rgb_array(im)
            arrays.append(fit_square(rgb, size, fit) if size else rgb)
        except (UnidentifiedImageError, OSError) as e:
            raise ValueError(f"images: cannot read {f.name} ({e})") from None
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise ValueError(f"images: mixed sizes in {p} ({sorted(s[:2] for s in shapes)}); pass a size to resize")
    return torch.from_numpy(np.stack(arrays))


def with_flips(images: torch.Tensor) -> torch.Tensor:
    """The batch followed by its horizontal mirror images. Training draws uniformly from it, which is a random
    horizontal flip with p = 0.5 per sample (kohya's --flip_aug, diffusers' --random_flip; opt-in there as here), with
    every orientation encoded exactly by the VAE instead of flipping latents (a VAE is not mirror-symmetric). Not for
    subjects whose left and right differ (text, asymmetric logos)."""
    return torch.cat([images, images.flip(2)])


def training_views(images: torch.Tensor, captions: list[str] | None, flip: bool):
    """What training draws from: the images (and their captions), with `flip` followed by their mirror images."""
    if not flip:
        return images, captions
    return with_flips(images), (captions * 2 if captions else captions)


def check_image_batch(images: torch.Tensor, name: str = "images") -> torch.Tensor:
    """Validate an IMAGE batch [B,H,W,C]; grayscale is repeated to RGB and alpha dropped."""
    if images is None or images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(f"{name}: expected a non-empty image batch [B,H,W,C], got {None if images is None else tuple(images.shape)}")
    c = images.shape[-1]
    if c == 1:
        images = images.repeat(1, 1, 1, 3)
    elif c == 4:
        images = images[..., :3]
    elif c != 3:
        raise ValueError(f"{name}: expected 1, 3 or 4 channels, got {c}")
    return images.float().clamp(0, 1)


def folder_fingerprint(folder) -> str:
    """Changes whenever an image is added, removed, renamed or rewritten (names, sizes and mtimes): the value
    ComfyUI compares to decide whether a cached Load Concept Images output is still valid."""
    import hashlib

    p = Path(folder)
    h = hashlib.sha256(str(p.resolve()).encode())
    for f in sorted(p.iterdir()) if p.is_dir() else []:
        if f.suffix.lower() in EXTENSIONS:
            st = f.stat()
            h.update(f"{f.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()
