"""bench/toyworld/layout.py: the layout readings on renders whose layout is known, and the tool end to end at 2
steps on the shipped toy model."""
import json
import random

import numpy as np
import torch

from continual_concepts.bench.toyworld import layout
from continual_concepts.bench.toyworld.oracle import load_oracle
from continual_concepts.bench.toyworld.world import render


def renders(kind, colour=None, n=12, bg="teal"):
    rng = random.Random(kind)
    return torch.tensor(np.stack([render(kind, colour, bg, rng) for _ in range(n)])).float() / 255


def test_twin_dots_read_level_and_turned_on_end_not_level():
    twins = renders("twin-dots")
    assert layout.read_layout(None, "twin-dots", twins).get("level", 0) >= 11
    assert layout.read_layout(None, "twin-dots", twins.transpose(1, 2)).get("not level", 0) >= 11
    assert layout.read_layout(None, "twin-dots", renders("circle", "purple")) == {"1 dot": 12}
    joined = torch.zeros(1, 32, 32, 3) + torch.tensor([20, 120, 120]) / 255
    joined[0, 12:20, 6:26] = torch.tensor([150, 60, 200]) / 255  # two dots run together: one wide blob
    assert layout.read_layout(None, "twin-dots", joined) == {"level": 1}
    assert layout.read_layout(None, "twin-dots", joined.transpose(1, 2)) == {"not level": 1}
    assert layout.read_layout(None, "twin-dots", renders("circle", "red")) == {"0 blobs": 12}


def test_split_circle_read_right_and_with_its_halves_swapped_mirrored():
    oracle, split = load_oracle(), renders("split-circle")
    assert layout.read_layout(oracle, "split-circle", split) == {"right": 12}
    assert layout.read_layout(oracle, "split-circle", split.flip(2)) == {"mirrored": 12}
    assert layout.read_layout(oracle, "split-circle", renders("circle", "blue")) == {"other": 12}


def test_layout_tool_reads_each_learner_s_generations(tmp_path, capsys):
    assert layout.main(["--concepts", "twin-dots", "--set", "steps:2,n_draws:1", "--out", str(tmp_path)]) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [(r["learner"], r["seed"]) for r in last["rows"]] == [("default", 0), ("ceiling", 0)]
    for r in last["rows"]:
        assert sum(r["layout"].values()) == r["samples"] == 24
    assert json.loads((tmp_path / "layout.json").read_text()) == last["rows"]
    assert (tmp_path / "layout.png").stat().st_size > 0
