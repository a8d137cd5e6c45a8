"""The benchmark harness: forgetting arithmetic, and a full run on a tiny model with a stand-in world."""
import json

import torch

from continual_concepts.bench.continual_bench import forgetting, run_method, write_outputs
from continual_concepts.core.backends.diffusers_backend import DiffusersBackend
from continual_concepts.core.neurons import SelectConfig
from continual_concepts.core.sequence import ConceptSpec
from continual_concepts.core.tiny_model import TinyModelSpec, build_tiny_components
from continual_concepts.core.train import TrainConfig


def test_forgetting_is_best_earlier_minus_final():
    assert forgetting([[1.0]]) == 0.0
    assert forgetting([[0.8], [0.6, 0.9], [0.4, 0.7, 1.0]]) == ((0.8 - 0.4) + (0.9 - 0.7)) / 2
    assert forgetting([[0.2], [0.5, 0.3], [0.5, 0.3, 1.0]]) == 0.0  # improvement is not forgetting


class StandInWorld:
    """Measures with the DC probe instead of an oracle, so the harness runs without the toy world."""

    generic_prompt = "a photo"
    calibration_prompts = ["a red circle", "a blue square", "a cat"]

    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.concepts = [ConceptSpec(n, t, f"a {t}", torch.rand(2, 8, 8, 3, generator=g)) for n, t in
                         (("a", "sks"), ("b", "zwx"))]
        self.calls = 0

    def concept_accuracy(self, backend, spec):
        self.calls += 1
        return float(backend.token_row(spec.trigger).abs().mean())  # any deterministic model readout

    def train_context_accuracy(self, backend, spec):
        return 2 * self.concept_accuracy(backend, spec)

    def samples_per_concept(self):
        return 1

    def base_accuracy(self, backend):
        return float(backend.kv_layers()[0].weight.abs().mean())

    def concept_samples(self, backend, specs):
        return torch.rand(len(specs), 8, 8, 3)


def test_run_method_and_outputs(tmp_path):
    world = StandInWorld()
    make = lambda: DiffusersBackend(**build_tiny_components(TinyModelSpec(sample_size=8)))  # noqa: E731
    sel = SelectConfig(n_calibration=2, budget_pct=3, rho_base=0.3, n_draws=1)
    res = [run_method(m, make, world, sel, TrainConfig(steps=2, fisher_draws=1), log=lambda s: None,
                      ceilings=[0.5, 0.25]) for m in ("naive", "cns")]
    assert world.calls == 2 * (3 + 2)  # 1 concept after task 1, 2 after task 2, 2 training contexts, per method
    for r in res:
        assert [len(row) for row in r["accuracy_matrix"]] == [1, 2]
        assert r["params_pct"] > 0 and r["seconds_per_concept"] > 0
        assert r["final_train_context"] == [2 * a for a in r["final_heldout"]]
        assert r["ceiling_avg_acc"] == 0.375 and r["fraction_of_ceiling"] == r["avg_acc"] / 0.375
    assert res[0]["params_pct"] > res[1]["params_pct"]  # naive moves every K/V row, CNS a few
    out = write_outputs(res, world, tmp_path)
    assert "| naive |" in out["table"] and "| cns |" in out["table"]
    assert json.loads((tmp_path / "results.json").read_text())[1]["method"] == "cns"
    for f in ("accuracy_naive.png", "accuracy_cns.png", "samples_method_x_concept.png", "results.md"):
        assert (tmp_path / f).is_file()


def test_quick_mode_measures_each_concept_after_its_task_and_all_at_the_end():
    world = StandInWorld()
    world.concepts.append(ConceptSpec("c", "qfv", "a qfv", torch.rand(2, 8, 8, 3)))
    make = lambda: DiffusersBackend(**build_tiny_components(TinyModelSpec(sample_size=8)))  # noqa: E731
    sel = SelectConfig(n_calibration=2, budget_pct=3, rho_base=0.3, n_draws=1)
    r = run_method("cns", make, world, sel, TrainConfig(steps=1, fisher_draws=1, lam_dsc=0), log=lambda s: None,
                   full_matrix=False)
    mat = r["accuracy_matrix"]
    assert [[x == x for x in row] for row in mat] == [[True], [False, True], [True, True, True]]  # nan: not measured
    assert world.calls == 1 + 1 + 3 + 3
    assert r["avg_forgetting"] == forgetting(mat) and "ceiling_avg_acc" not in r


def test_changed_params_count_every_unet_weight_not_only_kv():
    from continual_concepts.bench.continual_bench import changed_params_pct, unet_weights

    b = DiffusersBackend(**build_tiny_components(TinyModelSpec(sample_size=8)))
    before = unet_weights(b)
    assert changed_params_pct(b, before) == 0
    q = next(m for n, m in b.unet.named_modules() if n.endswith("attn2.to_q"))
    with torch.no_grad():
        q.weight[0] += 1
    assert changed_params_pct(b, before) == 100 * q.weight.shape[1] / b.unet_param_count()
