"""Write a full-size SD1.5 or SDXL checkpoint with random weights, in ComfyUI's python and in a process of its own
(so its memory is returned before a server loads the file): `make test-host-full` builds its models this way.

    python -m continual_concepts.bench.full_checkpoint sd15|sdxl PATH
Last line: one JSON object (seconds, file size, the builder's peak RSS)."""
from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

from .comfy_host import use_comfyui


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("family", choices=("sd15", "sdxl"))
    ap.add_argument("path")
    a = ap.parse_args(argv)
    if Path(a.path).exists():
        raise SystemExit(f"path: {a.path} already exists: refusing to overwrite")
    use_comfyui()
    from .comfy_sd15_checkpoint import build_checkpoint
    from .comfy_sdxl_checkpoint import build_sdxl_checkpoint

    t0 = time.perf_counter()
    build_sdxl_checkpoint(a.path) if a.family == "sdxl" else build_checkpoint(a.path, full=True)
    print(json.dumps({"family": a.family, "seconds": round(time.perf_counter() - t0, 1),
                      "file_gib": round(Path(a.path).stat().st_size / 2**30, 2),
                      "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}))


if __name__ == "__main__":
    main()
