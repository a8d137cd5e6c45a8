"""The ComfyUI pack stays light to load: the package itself and every core/report module its nodes import pull
in neither matplotlib nor diffusers nor transformers (a node that draws or builds a model imports them when it
runs). Checked in a fresh interpreter, where sys.modules holds only what these imports brought."""
import ast
import json
import subprocess
import sys
from pathlib import Path

PACK = Path(__file__).resolve().parents[1]
HEAVY = ("matplotlib", "diffusers", "transformers")


def node_dependencies() -> list[str]:
    """continual_concepts.<core|report>.… modules that nodes/*.py import (read from their source, so a new
    import in a node is covered without touching this test)."""
    mods = set()
    for f in (PACK / "nodes").glob("*.py"):
        for n in ast.walk(ast.parse(f.read_text())):
            if isinstance(n, ast.ImportFrom) and n.level == 2 and n.module.split(".")[0] in ("core", "report"):
                mods.add(f"continual_concepts.{n.module}")
    return sorted(mods)


def heavy_after_import(modules: list[str]) -> list[str]:
    code = ("import importlib, json, sys\n"
            f"for m in {modules!r}: importlib.import_module(m)\n"
            f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r}))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_nodes_core_and_report_imports_pull_in_no_heavy_library():
    mods = node_dependencies()
    assert "continual_concepts.report.pictures" in mods and "continual_concepts.core.memory" in mods
    assert heavy_after_import(["continual_concepts", *mods]) == []


def test_the_check_sees_a_heavy_import():
    """The same check on a module that does import one (the tiny model's tokenizer): it must not pass by looking
    at nothing."""
    assert heavy_after_import(["continual_concepts.core.word_tokenizer"]) == ["transformers"]
