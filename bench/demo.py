"""`make demo`: a 3-concept continual sequence with the default method on the shipped toy-world model,
judged by the shipped oracle; report and pictures under out/, last line one JSON object."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from .toyworld.demo import run_demo


def main() -> int:
    import torch

    torch.set_num_threads(2)  # explicit: timings on shared cores are otherwise at the mercy of the default
    out = Path("out") / time.strftime("demo-%Y%m%d-%H%M%S")
    t0 = time.perf_counter()
    summary = run_demo(out)
    summary["seconds"] = time.perf_counter() - t0
    print(f"report and pictures in {out}/", file=sys.stderr)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
