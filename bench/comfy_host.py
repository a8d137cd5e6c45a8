"""Reaching a ComfyUI checkout from the benchmarks: its own python (ComfyUI owns its torch), running a bench
script there, and importing ComfyUI inside such a script. COMFYUI_PATH, default /opt/ComfyUI, with its .venv."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

COMFYUI = Path(os.environ.get("COMFYUI_PATH", "/opt/ComfyUI"))
COMFY_PY = COMFYUI / ".venv" / "bin" / "python"


def missing() -> str | None:
    """Why the ComfyUI side cannot run here, or None when it can."""
    if not (COMFYUI / "main.py").is_file() or not COMFY_PY.is_file():
        return f"no ComfyUI checkout with a .venv at {COMFYUI} (set COMFYUI_PATH)"
    return None


def run_json(module: str, *args: str) -> dict:
    """Run `python -m module args` in ComfyUI's python; its last stdout line (one JSON object), or RuntimeError
    with the last stderr line."""
    r = subprocess.run([str(COMFY_PY), "-m", module, *args], capture_output=True, text=True, cwd=str(COMFYUI))
    if r.returncode != 0:
        raise RuntimeError((r.stderr.strip().splitlines() or ["?"])[-1])
    return json.loads(r.stdout.strip().splitlines()[-1])


def use_comfyui(cpu: bool = True) -> None:
    """Inside a script run by run_json: make ComfyUI importable (its args parser reads sys.argv on import)."""
    sys.path.insert(0, str(COMFYUI))
    sys.argv = sys.argv[:1] + (["--cpu"] if cpu else [])
    import comfy.cli_args

    comfy.cli_args.args.cpu = cpu
