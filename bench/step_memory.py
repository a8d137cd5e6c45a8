"""What one default training step keeps for its backward pass, measured exactly on the CPU at the real SD1.5
architecture (random weights): the peak of the bytes autograd holds at once during a whole step (batch 8, DSC over
c0 + 4 earlier concepts, the prior term), for each micro-batch, with checkpointing, and as auto plans it on a
device with room for 2.5 samples (micro-batches of 2, DSC one candidate at a time). A step back-propagates one term
at a time and the batch one micro-batch at a time, so its peak is its largest term's, not their sum: the numbers the
`micro_batch` default (auto) is chosen from where no GPU is at hand.

    python -m continual_concepts.bench.step_memory [--latent 32] [--micro 8,4,2,1] [--threads 2] [--small]
Last line: one JSON object."""
from __future__ import annotations

import argparse
import json
import sys
import time
import weakref

import torch


class PeakSaved:
    """Tracks the bytes of the tensors autograd holds for backward, each storage once, while they live (a storage
    leaves when the last saved tensor on it is freed, i.e. when its graph is); storages in `resident` (weights) are
    not counted."""

    def __init__(self, resident=frozenset()):
        self.resident, self.refs, self.size, self.now, self.peak = resident, {}, {}, 0, 0

    def _release(self, key):
        self.refs[key] -= 1
        if self.refs[key] == 0:
            del self.refs[key]
            self.now -= self.size.pop(key)

    def pack(self, t):
        st = t.untyped_storage()
        key = st.data_ptr()
        if key in self.resident:
            return t
        if key not in self.refs:
            self.refs[key], self.size[key] = 0, st.nbytes()
            self.now += st.nbytes()
            self.peak = max(self.peak, self.now)
        self.refs[key] += 1
        weakref.finalize(t, self._release, key)
        return t

    def __call__(self, fn):
        """Run fn() with tracking; return the peak bytes held at once."""
        with torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t):
            fn()
        return self.peak


def step_peak(backend, x0, rows, memory, prior, **cfg) -> tuple[int, float, dict]:
    """(peak bytes kept during one training step, its seconds, the step's memory plan)."""
    from ..core.checkpointing import resident_storages
    from ..core.train import TrainConfig, train_concept

    out = {}
    t0 = time.perf_counter()
    peak = PeakSaved(resident_storages(backend.networks()))(
        lambda: out.update(r=train_concept(backend, x0, "a sks dog", "sks", rows, memory, TrainConfig(steps=1, **cfg),
                                           prior_prompts=prior)))
    return peak, time.perf_counter() - t0, out["r"].checkpointing


def main(argv=None) -> int:
    from ..core.checkpointing import FREE_SHARE
    from ..core.memory import ConceptRecord, ContinualMemory
    from .gpu_sd15 import build

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--latent", type=int, default=32, help="latent side (32 = 256 px; kept bytes grow with its area)")
    ap.add_argument("--micro", default="8,4,2,1", help="micro-batches to measure, each with checkpointing off")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--small", action="store_true", help="the same code on a tiny UNet (tests)")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    b = build(a.small, "cpu", torch.float32)
    latent = b.unet.config.sample_size if a.small else a.latent
    x0 = torch.randn(9, 4, latent, latent, generator=torch.Generator().manual_seed(0))
    layers = b.layers("qkvo")
    rows = {l.name: torch.arange(8) for l in layers[: len(layers) // 4]}
    mem = ContinualMemory.for_model(b)
    for i, w in enumerate(("zwx", "plk", "mrt", "vbn")):  # 4 earlier concepts: DSC's full 5 candidates
        mem.add_concept(ConceptRecord(f"earlier{i}", w, f"a {w} cat", rows={}, delta={}))
    prior = ["a photo of a dog", "a red circle", "a cat"]
    out = {"size": "small" if a.small else "sd15", "latent": latent, "batch_size": 8, "steps": []}
    free = b.free_memory
    # checkpointing last: a backend keeps it on once enabled
    runs = [(int(m), "off", None) for m in a.micro.split(",")] + [(0, "auto", 2.5), (1, "on", None)]
    for micro, ckpt, room in runs:  # room: auto on a device that holds this many samples' activations
        if room is not None:
            per = out["steps"][0]["saved_MiB_per_sample"] * 2**20
            b.free_memory = lambda: room * per / FREE_SHARE
        peak, sec, plan = step_peak(b, x0, rows, mem, prior, batch_size=8, micro_batch=micro,
                                    gradient_checkpointing=ckpt)
        b.free_memory = free
        out["steps"].append({"micro_batch": plan["micro_batch"], "checkpointing": ckpt, "on": plan["on"],
                             "dsc_split": plan["dsc_split"], "room_samples": room,
                             "peak_saved_MiB": round(peak / 2**20, 1), "seconds": round(sec, 1),
                             "passes": plan["passes"], "saved_MiB_per_sample": plan.get("saved_mib_per_sample")})
        print(f"micro {plan['micro_batch']}, checkpointing {plan['on']}, DSC split {plan['dsc_split']}: "
              f"{peak / 2**20:.0f} MiB kept at the peak, {sec:.1f} s", file=sys.stderr)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
