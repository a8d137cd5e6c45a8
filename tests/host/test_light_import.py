"""ComfyUI loading the pack (nodes.load_custom_node, as at startup) imports neither matplotlib nor diffusers, and
adds no transformers of its own: users install many packs, ours must stay quick to load. In a fresh ComfyUI
python, so sys.modules holds only what ComfyUI and the pack brought."""
import json
import subprocess
import sys
from pathlib import Path

from conftest import COMFYUI

PACK = Path(__file__).resolve().parents[2]

LOAD = """
import asyncio, json, sys
sys.path.insert(0, {comfy!r})
import comfy.cli_args
comfy.cli_args.args.cpu = True
import nodes
before = set(sys.modules)
ok = asyncio.run(nodes.load_custom_node({pack!r}))
tops = lambda mods: sorted({{m.split(".")[0] for m in mods}})
print(json.dumps({{"ok": ok, "ids": [k for k in nodes.NODE_CLASS_MAPPINGS if k.startswith("ContinualConcepts_")],
                  "new": tops(set(sys.modules) - before), "all": tops(sys.modules)}}))
"""


def test_loading_the_pack_imports_no_matplotlib_diffusers_or_transformers():
    out = subprocess.run([sys.executable, "-c", LOAD.format(comfy=str(COMFYUI), pack=str(PACK))],
                         capture_output=True, text=True, check=True, cwd=COMFYUI)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["ok"] and "ContinualConcepts_ContinualTrainStep" in r["ids"], out.stderr[-2000:]
    heavy = {"matplotlib", "diffusers"} & set(r["all"])
    assert not heavy, f"loading the pack imported {sorted(heavy)}"
    assert "transformers" not in r["new"]  # ComfyUI's own CLIP code has it loaded already; the pack adds none
