"""bench/toyworld/verdicts.py on the shipped toy model, two concepts at 2 steps: each row's accuracy is its own name's
share of the verdicts, positions follow the order given, and the file matches the last line."""
import json

from continual_concepts.bench.toyworld import verdicts


def test_verdicts_count_every_sample_in_the_order_learned(tmp_path, capsys):
    assert verdicts.main(["--concepts", "framed-square,twin-dots", "--set", "steps:2,n_draws:1",
                          "--out", str(tmp_path)]) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last == json.loads((tmp_path / "verdicts.json").read_text())
    assert [(r["concept"], r["position"]) for r in last["rows"]] == [("framed-square", 1), ("twin-dots", 2)]
    for r in last["rows"]:
        assert sum(r["verdicts"].values()) == last["samples"] == 24
        assert r["accuracy"] == r["verdicts"].get(r["concept"], 0) / 24
