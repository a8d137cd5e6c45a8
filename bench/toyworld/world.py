"""The toy world: 32×32 renders of shapes × colours × backgrounds, captions, and 8 novel concepts.

Deterministic from a seed. Novel concepts are distinctive combinations of things the base model can draw
(stripes, rings, dots, checkers, splits) bound to a trigger word never used in pretraining."""
from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SIZE = 32
SHAPES = ["circle", "square", "triangle", "ring", "cross", "diamond"]
COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (50, 80, 230), "yellow": (240, 220, 40),
           "purple": (150, 60, 200), "orange": (245, 140, 30)}
BACKGROUNDS = {"gray": (128, 128, 128), "black": (15, 15, 15), "white": (240, 240, 240), "teal": (20, 120, 120)}
COLOUR_NAMES, BG_NAMES = list(COLOURS), list(BACKGROUNDS)
WHITE = (245, 245, 245)


@dataclass(frozen=True)
class Concept:
    name: str
    trigger: str
    description: str


CONCEPTS = [
    Concept("striped-diamond", "sks", "a diamond with red and white stripes"),
    Concept("ring-dot", "zwx", "a yellow ring with a yellow dot inside"),
    Concept("checker-square", "qfv", "a blue and white checkered square"),
    Concept("split-circle", "plk", "a circle, left half red, right half blue"),
    Concept("cross-dot", "mrt", "a green cross with a purple dot in the middle"),
    Concept("twin-dots", "vbn", "two purple dots side by side"),
    Concept("framed-square", "dxr", "an orange square frame with a green square inside"),
    Concept("blue-striped-diamond", "hjy", "a diamond with blue and yellow stripes (close to striped-diamond)"),
]
TRIGGERS = [c.trigger for c in CONCEPTS]
CLASSES = SHAPES + [c.name for c in CONCEPTS]  # the oracle's shape-or-concept head
PATTERN_WORDS = {"stripes": "striped", "checkers": "checkered", "halves": "split"}
VOCAB = ["a", "on", "background", "and"] + SHAPES + COLOUR_NAMES + BG_NAMES + list(PATTERN_WORDS.values()) + TRIGGERS


def caption(shape: str, colour: str, bg: str) -> str:
    return f"a {colour} {shape} on a {bg} background"


def concept_prompt(c: Concept, bg: str) -> str:
    return f"a {c.trigger} on a {bg} background"


def all_combos():
    return [(s, c, b) for s in SHAPES for c in COLOUR_NAMES for b in BG_NAMES]


def heldout_combos() -> list[tuple[str, str, str]]:
    """Every 7th combination never appears in pretraining (each shape and colour still does)."""
    return all_combos()[3::7]


def train_combos():
    held = set(heldout_combos())
    return [x for x in all_combos() if x not in held]


def _box(rng: random.Random):
    s = rng.uniform(0.5, 0.8) * SIZE
    cx, cy = rng.uniform(s / 2 + 1, SIZE - s / 2 - 1), rng.uniform(s / 2 + 1, SIZE - s / 2 - 1)
    return cx - s / 2, cy - s / 2, cx + s / 2, cy + s / 2


def _shape(d: ImageDraw.ImageDraw, shape, box, fill, bg):
    x0, y0, x1, y1 = box
    w, cx, cy = x1 - x0, (x0 + x1) / 2, (y0 + y1) / 2
    if shape == "circle":
        d.ellipse(box, fill=fill)
    elif shape == "square":
        d.rectangle(box, fill=fill)
    elif shape == "triangle":
        d.polygon([(cx, y0), (x1, y1), (x0, y1)], fill=fill)
    elif shape == "ring":
        d.ellipse(box, fill=fill)
        k = w * 0.28
        d.ellipse((x0 + k, y0 + k, x1 - k, y1 - k), fill=bg)
    elif shape == "cross":
        k = w * 0.18
        d.rectangle((cx - k, y0, cx + k, y1), fill=fill)
        d.rectangle((x0, cy - k, x1, cy + k), fill=fill)
    elif shape == "diamond":
        d.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=fill)
    else:
        raise ValueError(shape)


def _patterned(img: Image.Image, shape, box, c1, c2, pattern, n=4):
    """Fill shape inside box with a two-colour pattern: horizontal stripes, checkers, or left/right halves."""
    x0, y0, x1, y1 = box
    mask = Image.new("L", img.size, 0)
    _shape(ImageDraw.Draw(mask), shape, box, 255, 0)
    layer = Image.new("RGB", img.size, c1)
    dl = ImageDraw.Draw(layer)
    if pattern == "stripes":
        h = (y1 - y0) / (2 * n)
        for i in range(1, 2 * n, 2):
            dl.rectangle((x0, y0 + i * h, x1, y0 + (i + 1) * h), fill=c2)
    elif pattern == "checkers":
        s = (x1 - x0) / n
        for i in range(n):
            for j in range(n):
                if (i + j) % 2 == 0:
                    dl.rectangle((x0 + i * s, y0 + j * s, x0 + (i + 1) * s, y0 + (j + 1) * s), fill=c2)
    elif pattern == "halves":
        dl.rectangle(((x0 + x1) / 2, 0, SIZE, SIZE), fill=c2)
    else:
        raise ValueError(pattern)
    img.paste(layer, (0, 0), mask)


def _concept(img: Image.Image, name: str, box, bg):
    d = ImageDraw.Draw(img)
    x0, y0, x1, y1 = box
    w, cx, cy = x1 - x0, (x0 + x1) / 2, (y0 + y1) / 2
    if name == "striped-diamond":
        _patterned(img, "diamond", box, (220, 40, 40), WHITE, "stripes")
    elif name == "blue-striped-diamond":
        _patterned(img, "diamond", box, COLOURS["blue"], COLOURS["yellow"], "stripes")
    elif name == "ring-dot":
        _shape(d, "ring", box, COLOURS["yellow"], bg)
        k = w * 0.4
        d.ellipse((x0 + k, y0 + k, x1 - k, y1 - k), fill=COLOURS["yellow"])
    elif name == "checker-square":
        _patterned(img, "square", box, COLOURS["blue"], WHITE, "checkers")
    elif name == "split-circle":
        _patterned(img, "circle", box, COLOURS["red"], COLOURS["blue"], "halves")
    elif name == "cross-dot":
        _shape(d, "cross", box, COLOURS["green"], bg)
        k = w * 0.3
        d.ellipse((cx - w / 2 + k, cy - w / 2 + k, cx + w / 2 - k, cy + w / 2 - k), fill=COLOURS["purple"])
    elif name == "twin-dots":
        r = w * 0.22
        d.ellipse((x0, cy - r, x0 + 2 * r, cy + r), fill=COLOURS["purple"])
        d.ellipse((x1 - 2 * r, cy - r, x1, cy + r), fill=COLOURS["purple"])
    elif name == "framed-square":
        d.rectangle(box, fill=COLOURS["orange"])
        k = w * 0.22
        d.rectangle((x0 + k, y0 + k, x1 - k, y1 - k), fill=COLOURS["green"])
    else:
        raise ValueError(name)


def render(kind: str, colour: str | None, bg: str, rng: random.Random) -> np.ndarray:
    """kind is a base shape (with a colour) or a concept name; returns uint8 [32,32,3]."""
    img = Image.new("RGB", (SIZE, SIZE), BACKGROUNDS[bg])
    box = _box(rng)
    if kind in SHAPES:
        _shape(ImageDraw.Draw(img), kind, box, COLOURS[colour], BACKGROUNDS[bg])
    else:
        _concept(img, kind, box, BACKGROUNDS[bg])
    return np.asarray(img)


# Pattern scenes teach the model (and its VAE) the visual vocabulary the concepts are made of, never in a concept's
# configuration: two-colour patterns, captioned ("a red and white striped circle on a gray background") but stripes
# never on a diamond, checkers never on a square, halves never on a circle; and two or three objects, captioned in
# reading order ("a red circle and a blue cross on a gray background": words place and compose several objects, as
# in real captions), never nested and never two of one colour (so no twin dots, no dot in a ring).
PATTERN_SHAPES = {"stripes": ["circle", "square", "triangle"], "checkers": ["circle", "triangle", "diamond"],
                  "halves": ["square", "triangle", "diamond"]}
PALETTE = {**COLOURS, "white": WHITE}


def render_scene(bg: str, rng: random.Random) -> tuple[np.ndarray, str]:
    """One two-colour patterned shape, or two or three small one-colour shapes (named in reading order)."""
    img = Image.new("RGB", (SIZE, SIZE), BACKGROUNDS[bg])
    if rng.random() < 0.5:
        pattern = rng.choice(list(PATTERN_SHAPES))
        (n1, c1), (n2, c2) = rng.sample(list(PALETTE.items()), 2)
        shape = rng.choice(PATTERN_SHAPES[pattern])
        _patterned(img, shape, _box(rng), c1, c2, pattern, n=rng.choice([3, 4]))
        return np.asarray(img), f"a {n1} and {n2} {PATTERN_WORDS[pattern]} {shape} on a {bg} background"
    d = ImageDraw.Draw(img)
    cells = sorted(rng.sample([(0, 0), (1, 0), (0, 1), (1, 1)], rng.choice([2, 3])), key=lambda ij: (ij[1], ij[0]))
    names = []
    for (i, j), colour in zip(cells, rng.sample(COLOUR_NAMES, len(cells))):
        s = rng.uniform(0.3, 0.45) * SIZE
        x, y = i * SIZE / 2 + rng.uniform(0, SIZE / 2 - s), j * SIZE / 2 + rng.uniform(0, SIZE / 2 - s)
        shape = rng.choice(SHAPES)
        _shape(d, shape, (x, y, x + s, y + s), COLOURS[colour], BACKGROUNDS[bg])
        names.append(f"a {colour} {shape}")
    return np.asarray(img), f"{' and '.join(names)} on a {bg} background"


def pretrain_batch(n: int, rng: random.Random, scenes: float = 0.0):
    """n (image, caption) pairs: renders of the pretraining combos, and a `scenes` share of pattern scenes."""
    combos = train_combos()
    imgs, caps = [], []
    for _ in range(n):
        if rng.random() < scenes:
            img, cap = render_scene(rng.choice(BG_NAMES), rng)
        else:
            s, c, b = rng.choice(combos)
            img, cap = render(s, c, b, rng), caption(s, c, b)
        imgs.append(img)
        caps.append(cap)
    return np.stack(imgs), caps


def concept_images(c: Concept, n: int = 6, seed: int = 0, bg: str | tuple[str, ...] = "gray") -> np.ndarray:
    """n renders of the concept (position and scale jittered), cycling through the background(s) given."""
    rng = random.Random(f"{c.name}-{seed}")
    bgs = (bg,) if isinstance(bg, str) else bg
    return np.stack([render(c.name, None, bgs[i % len(bgs)], rng) for i in range(n)])


def labelled_batch(n: int, rng: random.Random):
    """Renders of every class (base shapes and concepts) on every background, with labels (oracle data)."""
    imgs, shape, colour, bg = [], [], [], []
    for _ in range(n):
        k = rng.randrange(len(CLASSES))
        b = rng.randrange(len(BG_NAMES))
        col = rng.randrange(len(COLOUR_NAMES)) if k < len(SHAPES) else -1
        imgs.append(render(CLASSES[k], COLOUR_NAMES[col] if col >= 0 else None, BG_NAMES[b], rng))
        shape.append(k)
        colour.append(col)
        bg.append(b)
    return np.stack(imgs), np.array(shape), np.array(colour), np.array(bg)
