"""The continual memory: everything later concepts and exports need, in one safetensors file.

Holds the base-model fingerprint, per-concept records (trigger, prompt, selected rows, learned row deltas,
token embedding, config, metrics), the pretrained values of every row ever touched, and the online Fisher.
Metadata is JSON in the safetensors header. Never pickle.
"""
from __future__ import annotations

import copy
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .atomic_io import atomic_write
from .backends.base import Backend

FORMAT = "continual_concepts.memory"
VERSION = 1


class MemoryMismatchError(ValueError):
    """The memory was made for another base model."""


@dataclass
class ConceptRecord:
    name: str
    trigger: str
    prompt: str
    rows: dict[str, torch.Tensor]  # layer -> row indices
    delta: dict[str, torch.Tensor]  # layer -> [n_rows, in] learned change of those rows
    token: torch.Tensor | None = None  # learned trigger embedding (None: token not trained)
    config: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    thumbnail: torch.Tensor | None = None  # uint8 [h, w, 3] of the first training image (files before it: None)

    @property
    def n_rows(self) -> int:
        return sum(len(r) for r in self.rows.values())


def model_fingerprint(backend: Backend, pretrained: dict | None = None, legacy: bool = False) -> str:
    """sha256 of every K/V weight (as fp16, layer order) with rows touched by a memory put back to their
    pretrained values, so a base model and the same model with concepts merged hash alike. Zeros are hashed
    unsigned: a host that patches a whole weight adds +0.0 to untouched entries, which turns -0.0 into +0.0 (a
    full-size SD1.5 with random fp16 weights has 11 of them in its K/V layers). `legacy`: signed zeros, as
    memories written before 2026-11-29 hashed them."""
    h = hashlib.sha256()
    for layer in backend.kv_layers():
        w = layer.weight.detach().float().cpu()
        rows, vals = (pretrained or {}).get(layer.name, (None, None))
        # rows that do not fit this layer (another model's memory) are left out: the hash then differs, as it should
        if rows is not None and vals.shape[1:] == w.shape[1:] and (not len(rows) or int(rows.max()) < len(w)):
            w = w.clone()
            w[rows] = vals.float()
        h.update(layer.name.encode())
        w16 = w.half()
        h.update((w16 if legacy else w16 + 0).numpy().tobytes())
    return h.hexdigest()



def element_mean(tensors) -> torch.Tensor:
    """Mean over every element of several tensors without concatenating them (SDXL's Fisher is 1.3 GiB)."""
    tensors = list(tensors)
    return (sum(t.sum(dtype=torch.float64) for t in tensors) / max(1, sum(t.numel() for t in tensors))).float()

class ContinualMemory:
    def __init__(self, fingerprint: str, generic_prompt: str = "a photo"):
        self.fingerprint = fingerprint
        self.generic_prompt = generic_prompt
        self.concepts: list[ConceptRecord] = []
        self.pretrained: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.fisher: dict[str, torch.Tensor] = {}
        self.fisher_updates = 0
        self.format_version = VERSION  # of the file it was loaded from

    @classmethod
    def for_model(cls, backend: Backend, generic_prompt: str = "a photo") -> "ContinualMemory":
        return cls(model_fingerprint(backend), generic_prompt)

    # ----------------------------------------------------------------- queries
    def prev_rows(self) -> dict[str, torch.Tensor]:
        """Union of every earlier concept's rows, per layer."""
        out: dict[str, set] = {}
        for c in self.concepts:
            for n, r in c.rows.items():
                out.setdefault(n, set()).update(r.tolist())
        return {n: torch.tensor(sorted(s), dtype=torch.long) for n, s in out.items()}

    def candidates(self, caption: str | None = None, trigger: str | None = None) -> list[str]:
        """DC candidates: the generic 'pretrained' prompt c0, then each learned concept's prompt — or, for an image
        captioned with `trigger` in its own context, that caption with the trigger swapped for each concept's: an
        image on black judged against prompts that say gray loses to c0 whatever was learned (the context, not the
        concept, decides)."""
        word = re.compile(rf"(?<!\w){re.escape(trigger)}(?!\w)") if caption and trigger else None
        if word is None or not word.search(caption):
            return [self.generic_prompt] + [c.prompt for c in self.concepts]
        return [self.generic_prompt] + [word.sub(c.trigger, caption) for c in self.concepts]

    def tokens(self) -> dict[str, torch.Tensor]:
        """Learned trigger embeddings (the latest per trigger), for hosts that have not baked them."""
        return {c.trigger: c.token for c in self.concepts if c.token is not None}

    def check_model(self, backend: Backend, force: bool = False) -> None:
        fp = model_fingerprint(backend, self.pretrained)
        if self.fingerprint != fp and not force and self.fingerprint != model_fingerprint(backend, self.pretrained, True):
            raise MemoryMismatchError(
                f"memory was made for another base model (fingerprint {self.fingerprint[:12]} != this model's "
                f"{fp[:12]}); load it with force=True only if you know the models are compatible"
            )

    # ----------------------------------------------------------------- updates
    def record_pretrained(self, backend: Backend, rows: dict[str, torch.Tensor]) -> None:
        """Remember the pretrained value of rows about to change for the first time."""
        weights = {l.name: l.weight for l in backend.projection_layers()}
        for n, r in rows.items():
            if not len(r):
                continue
            old_rows, old_vals = self.pretrained.get(n, (torch.empty(0, dtype=torch.long), None))
            new = torch.tensor(sorted(set(r.tolist()) - set(old_rows.tolist())), dtype=torch.long)
            if not len(new):
                continue
            vals = weights[n].detach()[new.to(weights[n].device)].float().cpu()
            self.pretrained[n] = (
                torch.cat([old_rows, new]),
                vals if old_vals is None else torch.cat([old_vals, vals]),
            )

    def pretrained_rows(self, layer: str, rows: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
        """Pretrained values of `rows` of `layer`; rows never touched are still pretrained (= current)."""
        out = current.detach().float().cpu().clone()
        if layer in self.pretrained:
            prow, pval = self.pretrained[layer]
            where = {int(r): i for i, r in enumerate(prow)}
            for j, r in enumerate(rows.tolist()):
                if r in where:
                    out[j] = pval[where[r]]
        return out

    def add_concept(self, record: ConceptRecord) -> None:
        if any(c.name == record.name for c in self.concepts):
            raise ValueError(f"concept name '{record.name}' is already in this memory")
        self.concepts.append(record)

    def copy(self) -> "ContinualMemory":
        """An independent copy that shares the Fisher tensors: nothing writes them in place (update_fisher
        replaces them), and on SDXL they are 1.3 GiB that every node outputting a memory would copy."""
        return copy.deepcopy(self, memo={id(f): f for f in self.fisher.values()})

    def update_fisher(self, new: dict[str, torch.Tensor], gamma: float) -> None:
        """Online EWC: F <- gamma F + F_new / mean(F_new), in fp32. Each concept's Fisher enters with mean 1, so
        its weight does not depend on the DC temperature or the model's scale (fp16 before normalising zeroed
        5.5 % of the entries)."""
        mean = element_mean(new.values()).clamp_min(1e-30)
        for n, f in new.items():
            old = self.fisher.get(n)
            f = f.float().cpu() / mean
            self.fisher[n] = f if old is None else gamma * old.float() + f
        self.fisher_updates += 1

    # ----------------------------------------------------------------- model state
    def apply_to(self, backend: Backend, force: bool = False) -> str:
        """Bring a base model to this memory's state (all concepts merged). Returns 'applied' or 'already'.

        A model already carrying every concept is left alone; anything else is refused."""
        self.check_model(backend, force)
        if not self.concepts:
            return "already"
        weights = {l.name: l.weight for l in backend.projection_layers()}
        final = {n: vals.clone() for n, (rows, vals) in self.pretrained.items()}
        pos = {n: {int(r): i for i, r in enumerate(rows)} for n, (rows, _) in self.pretrained.items()}
        for c in self.concepts:
            for n, r in c.rows.items():
                idx = torch.tensor([pos[n][int(x)] for x in r], dtype=torch.long)
                final[n].index_add_(0, idx, c.delta[n].float())
        cur = {n: weights[n].detach()[rows.to(weights[n].device)].float().cpu() for n, (rows, _) in self.pretrained.items()}
        # pretrained first, exactly: with small relative learning rates a concept's change can be below any
        # tolerance that would also accept a merged model in fp16
        if all(torch.equal(cur[n], self.pretrained[n][1].float()) for n in cur):
            for c in self.concepts:
                for n, r in c.rows.items():
                    backend.bake_rows(n, r, c.delta[n])
            state = "applied"
        elif all(torch.allclose(cur[n], final[n], atol=1e-3, rtol=1e-3) for n in cur):
            state = "already"
        else:
            raise MemoryMismatchError("the model's trained rows match neither the base model nor the memory's merged state")
        for c in self.concepts:
            if c.token is not None:
                backend.set_token_row(c.trigger, c.token)
        return state

    def summary(self) -> dict:
        """What a person asks of a memory file: which base model, and per concept its name, trigger, prompt, rows,
        parameters and what training recorded (steps, seconds, date, final loss, % of UNet parameters)."""
        def concept(c: ConceptRecord) -> dict:
            m, train = c.metrics, c.config.get("train", {})
            return {"name": c.name, "trigger": c.trigger, "prompt": c.prompt, "rows": c.n_rows,
                    "params": sum(d.numel() for d in c.delta.values()), "params_pct": m.get("params_pct"),
                    "token": c.token is not None,
                    "thumbnail": c.thumbnail is not None, "steps": train.get("steps"), "seconds": m.get("seconds"),
                    "date": m.get("date"), "final_loss": m.get("final_loss"), "dc_self_check": m.get("dc_self_check"),
                    "ewc_fisher": m.get("ewc_fisher")}  # None: learned before it was recorded (then always on)

        return {"format_version": self.format_version, "fingerprint": self.fingerprint, "generic_prompt": self.generic_prompt,
                "fisher_updates": self.fisher_updates, "concepts": [concept(c) for c in self.concepts]}

    # ----------------------------------------------------------------- file
    def header(self) -> dict:
        return {
            "fingerprint": self.fingerprint,
            "generic_prompt": self.generic_prompt,
            "fisher_updates": self.fisher_updates,
            "concepts": [
                {"name": c.name, "trigger": c.trigger, "prompt": c.prompt, "layers": sorted(c.rows),
                 "has_token": c.token is not None, "config": c.config, "metrics": c.metrics}
                for c in self.concepts
            ],
        }

    def tensors(self) -> dict[str, torch.Tensor]:
        t: dict[str, torch.Tensor] = {}
        for n, (rows, vals) in self.pretrained.items():
            t[f"pretrained/{n}/rows"] = rows.contiguous()
            t[f"pretrained/{n}/values"] = vals.contiguous()
        for n, f in self.fisher.items():
            t[f"fisher/{n}"] = f.contiguous()
        for i, c in enumerate(self.concepts):
            for n in c.rows:
                t[f"concept/{i}/rows/{n}"] = c.rows[n].contiguous()
                t[f"concept/{i}/delta/{n}"] = c.delta[n].float().contiguous()
            if c.token is not None:
                t[f"concept/{i}/token"] = c.token.float().contiguous()
            if c.thumbnail is not None:
                t[f"concept/{i}/thumbnail"] = c.thumbnail.to(torch.uint8).contiguous()
        return t

    def save(self, path, overwrite: bool = False) -> Path:
        from safetensors.torch import save_file

        meta = {"format": FORMAT, "version": str(VERSION), "memory": json.dumps(self.header())}
        tensors = self.tensors()
        return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta), overwrite=overwrite)

    @classmethod
    def load(cls, path, backend: Backend | None = None, force: bool = False) -> "ContinualMemory":
        """Read a memory file; with a backend, refuse it unless it was made for that base model."""
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"memory file {path} does not exist")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:  # safetensors raises its own error types for truncated headers/data
            raise ValueError(f"memory file {path} is corrupt or truncated ({e})") from None
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path} is not a Continual Concepts memory file (no '{FORMAT}' header)")
        raw = str(meta.get("version", "1"))
        version = int(raw) if raw.isdigit() else 0
        if not 1 <= version <= VERSION:
            raise ValueError(f"memory file {path} has format version {meta.get('version')!r}; this Continual Concepts "
                             f"reads versions 1 to {VERSION} (update the pack to read newer files)")
        try:
            head = json.loads(meta["memory"])
            mem = cls(head["fingerprint"], head.get("generic_prompt", "a photo"))
            mem.format_version = version
            mem.fisher_updates = int(head.get("fisher_updates", 0))
            for k, v in tensors.items():
                parts = k.split("/")
                if parts[0] == "pretrained" and parts[-1] == "rows":
                    n = "/".join(parts[1:-1])
                    mem.pretrained[n] = (v.long(), tensors[f"pretrained/{n}/values"])
                elif parts[0] == "fisher":
                    mem.fisher["/".join(parts[1:])] = v
            for i, c in enumerate(head["concepts"]):
                mem.concepts.append(ConceptRecord(
                    c["name"], c["trigger"], c["prompt"],
                    rows={n: tensors[f"concept/{i}/rows/{n}"].long() for n in c["layers"]},
                    delta={n: tensors[f"concept/{i}/delta/{n}"] for n in c["layers"]},
                    token=tensors.get(f"concept/{i}/token"), thumbnail=tensors.get(f"concept/{i}/thumbnail"),
                    config=c.get("config", {}), metrics=c.get("metrics", {}),
                ))
        except (KeyError, json.JSONDecodeError, TypeError) as e:
            raise ValueError(f"memory file {path} is corrupt: missing or malformed entry {e}") from None
        if backend is not None:
            mem.check_model(backend, force)
        return mem
