"""Command line: select, train, probe, merge, sequence, gallery, memory show / remove, queue (`python -m continual_concepts --help`).

Bad input gives a one-line message and exit code 2, with nothing written."""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from pathlib import Path

EXIT_BAD_INPUT = 2


def load_backend(spec: str, device: str = "cpu"):
    """'tiny' (random, built in code), 'toy' (the shipped toy-world model) or a diffusers-format folder."""
    from .backends.diffusers_backend import DiffusersBackend

    if spec == "tiny":
        from .tiny_model import TinyModelSpec, build_tiny_components

        return DiffusersBackend(**build_tiny_components(TinyModelSpec()), device=device)
    if spec == "toy":
        from ..bench.toyworld import MODEL_DIR

        spec = str(MODEL_DIR)
    if not Path(spec).is_dir():
        raise FileNotFoundError(f"--model: {spec} is not a folder (use a diffusers folder, 'tiny' or 'toy')")
    return DiffusersBackend.from_folder(spec, device=device)


def _cfg_args(p, cls, prefix=""):
    for f in fields(cls):
        kind = type(f.default) if f.default is not None else float
        if kind is bool:
            p.add_argument(f"--{prefix}{f.name.replace('_', '-')}", type=lambda s: s.lower() in ("1", "true", "yes"),
                           default=None)
        else:
            p.add_argument(f"--{prefix}{f.name.replace('_', '-')}", type=kind, default=None)


def _cfg(cls, args, prefix="", base: dict | None = None):
    vals = dict(base or {})
    for f in fields(cls):
        v = getattr(args, (prefix + f.name).replace("-", "_"), None)
        if v is not None:
            vals[f.name] = v
    try:
        return cls(**vals)
    except TypeError as e:
        raise ValueError(f"config: {e}") from None


def _progress():
    from tqdm import tqdm

    bar = {}

    def cb(step, total, terms):
        if "b" not in bar or bar["b"].total != total or step == 1:
            bar["b"] = tqdm(total=total, leave=False, file=sys.stderr)
        bar["b"].update(1)
        bar["b"].set_postfix(loss=f"{terms.get('total', 0):.4f}")
        if step == total:
            bar["b"].close()

    return cb


def cmd_select(a):
    import torch

    from ..report.pictures import neuron_map, save_png
    from .images import load_image_folder
    from .memory import ContinualMemory
    from .neurons import SelectConfig, select_concept_neurons
    from .row_delta import row_counts

    b = load_backend(a.model)
    images = load_image_folder(a.images, a.size, a.fit)
    mem = ContinualMemory.load(a.memory, b, a.force) if a.memory else None
    if mem:
        mem.apply_to(b, a.force)
    b.trigger_token_id(a.trigger)
    out = Path(a.out)
    if out.exists():
        raise FileExistsError(f"--out: {out} already exists: refusing to overwrite")
    cfg = _cfg(SelectConfig, a)
    sel = select_concept_neurons(b, b.encode_images(images), a.prompt, cfg, prev_rows=mem.prev_rows() if mem else None)
    from safetensors.torch import save_file

    from .atomic_io import atomic_write

    t = {n: r.contiguous() for n, r in sel.rows.items() if len(r)}
    atomic_write(out, lambda tmp: save_file(t, tmp, metadata={"report": json.dumps(sel.report)}))
    save_png(out.with_suffix(".png"), neuron_map(sel.rows, row_counts(b, cfg.parts)))
    print(json.dumps({k: v for k, v in sel.report.items() if k not in ("per_layer", "calibration_prompts")}))
    del torch


def cmd_train(a):
    import torch
    from safetensors.torch import load_file

    from ..report.pictures import loss_curve, save_png
    from .continual import learn_concept
    from .images import load_image_folder
    from .memory import ContinualMemory
    from .neurons import SelectConfig
    from .train import TrainConfig
    from .validate import prior_prompt_lines

    prior = prior_prompt_lines("\n".join(a.prior_prompt or []), a.trigger)
    b = load_backend(a.model)
    images = load_image_folder(a.images, a.size, a.fit)
    b.trigger_token_id(a.trigger)
    out = Path(a.out_memory)
    if out.exists():
        raise FileExistsError(f"--out-memory: {out} already exists: refusing to overwrite")
    mem = ContinualMemory.load(a.memory, b, a.force) if a.memory else ContinualMemory.for_model(b, a.generic_prompt)
    mem.apply_to(b, a.force)
    rows = None
    if a.neurons:
        try:
            rows = {k: v.long() for k, v in load_file(a.neurons).items()}
        except Exception as e:
            raise ValueError(f"--neurons: cannot read {a.neurons} ({e})") from None
    o = learn_concept(b, mem, images, a.name or a.trigger, a.trigger, a.prompt, _cfg(SelectConfig, a, "select-"),
                      _cfg(TrainConfig, a), prior, callback=_progress(), rows=rows)
    mem.save(out)
    save_png(out.with_suffix(".loss.png"), loss_curve(o.result.history))
    print(json.dumps({"concept": o.record.name, "rows": o.record.n_rows, "seconds": round(o.result.seconds, 2),
                      "final": o.result.history[-1], "memory": str(out)}))
    del torch


def cmd_probe(a):
    from ..report.pictures import dc_chart, save_png
    from .dc_scores import dc_scores
    from .images import load_image_folder
    from .memory import ContinualMemory

    b = load_backend(a.model)
    images = load_image_folder(a.images, a.size, a.fit)
    cands = []
    if a.memory:
        mem = ContinualMemory.load(a.memory, b, a.force)
        mem.apply_to(b, a.force)
        cands += mem.candidates()
    cands += [p for p in (a.prompt or []) if p.strip()]
    if not cands:
        raise ValueError("candidates: give --memory and/or --prompt (the candidate list is empty)")
    r = dc_scores(b, b.encode_images(images), b.encode_text(cands), n_timesteps=a.timesteps, seed=a.seed,
                  temperature=a.temperature)
    if a.chart:
        save_png(a.chart, dc_chart(r.probs, cands))
    print(json.dumps({"candidates": cands, "errors": r.errors.tolist(), "probs": r.probs.tolist(),
                      "predicted": [cands[i] for i in r.predicted.tolist()]}))


def cmd_merge(a):
    from .export import save_concept_delta, save_diffusers_model, save_embedding
    from .memory import ContinualMemory

    b = load_backend(a.model)
    mem = ContinualMemory.load(a.memory, b, a.force)
    out = Path(a.out)
    if out.exists():
        raise FileExistsError(f"--out: {out} already exists: refusing to overwrite")
    mem.apply_to(b, a.force)
    save_diffusers_model(b, out / "model", mem)
    for c in mem.concepts:
        save_concept_delta(out / "deltas" / f"{c.name}.safetensors", c)
        if c.token is not None:
            save_embedding(out / "embeddings" / f"{c.trigger}.safetensors", c.trigger, c.token)
    print(json.dumps({"model": str(out / "model"), "concepts": [c.name for c in mem.concepts]}))


def cmd_sequence(a):
    import yaml

    from ..report.sequence import run_sequence
    from .images import load_image_folder
    from .neurons import SelectConfig
    from .sequence import ConceptSpec
    from .train import TrainConfig
    from .validate import prior_prompt_lines

    path = Path(a.config)
    if not path.is_file():
        raise FileNotFoundError(f"config: {path} does not exist")
    try:
        cfg = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ValueError(f"config: {path} is not valid JSON/YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(cfg, dict) or not cfg.get("concepts"):
        raise ValueError(f"config: {path} needs a non-empty 'concepts' list")
    cal = cfg.get("calibration_prompts")
    if cal is not None and (not isinstance(cal, list) or not all(isinstance(p, str) for p in cal)):
        raise ValueError("config: 'calibration_prompts' must be a list of prompts")
    for c in cfg["concepts"]:
        if isinstance(c, dict) and isinstance(c.get("trigger"), str):
            prior_prompt_lines("\n".join(cal or []), c["trigger"])
    out = Path(a.out)
    if out.exists():
        raise FileExistsError(f"--out: {out} already exists: refusing to overwrite")
    b = load_backend(a.model or cfg.get("model", "tiny"))
    specs = []
    for i, c in enumerate(cfg["concepts"]):
        for key in ("trigger", "prompt", "images"):
            if key not in c:
                raise ValueError(f"config: concept #{i + 1} has no '{key}'")
        images = load_image_folder(path.parent / c["images"], cfg.get("size"))
        captions = c.get("captions")
        if captions is not None and (not isinstance(captions, list) or len(captions) != len(images)):
            raise ValueError(f"config: concept #{i + 1} 'captions' must list one caption per image, in file-name "
                             f"order ({len(images)} images)")
        specs.append(ConceptSpec(c.get("name", c["trigger"]), c["trigger"], c["prompt"], images,
                                 c.get("eval_prompts", []), captions=captions))
    sel = _cfg(SelectConfig, a, "select-", base=cfg.get("select"))
    tr = _cfg(TrainConfig, a, base=cfg.get("train"))
    from .atomic_io import atomic_write_dir

    rep = {}
    atomic_write_dir(out, lambda tmp: rep.update(run_sequence(
        b, specs, tmp, sel, tr, cfg.get("generic_prompt", "a photo"), cfg.get("calibration_prompts"),
        progress=_progress(), log=lambda s: print(s, file=sys.stderr))))
    print(json.dumps(rep["summary"]))


def cmd_gallery(a):
    from ..report.gallery import gallery_picture
    from .atomic_io import atomic_write
    from .gallery import check_gallery, concept_gallery, with_self_check
    from .memory import ContinualMemory
    from ..report.pictures import save_png

    out = Path(a.out)
    out_json = out.with_suffix(".json")
    for flag, p in (("--out", out), ("--out", out_json), ("--out-memory", a.out_memory and Path(a.out_memory))):
        if p and p.exists():
            raise FileExistsError(f"{flag}: {p} already exists: refusing to overwrite")
    mem = ContinualMemory.load(a.memory)
    check_gallery(mem, a.samples, a.size, a.steps)
    b = load_backend(a.model)
    mem.apply_to(b, a.force)
    g = concept_gallery(b, mem, seed=a.seed, samples=a.samples, size=a.size, steps=a.steps, cfg=a.cfg)
    check = g.self_check()
    js = json.dumps(check)
    picture = gallery_picture(g)
    atomic_write(out_json, lambda tmp: Path(tmp).write_text(js))
    save_png(out, picture)
    if a.out_memory:
        with_self_check(mem, check).save(a.out_memory)
    print(js)


def cmd_queue(a):
    from .queue_client import main as queue_main

    return queue_main([a.workflow, "--server", a.server, "--http-timeout", str(a.http_timeout),
                       *(["--timeout", str(a.timeout)] if a.timeout else [])])


def cmd_memory_show(a):
    from ..report.tables import memory_table
    from .memory import ContinualMemory

    summary = ContinualMemory.load(a.file).summary()
    info = {"file": str(a.file), "bytes": Path(a.file).stat().st_size, **summary}
    print(json.dumps(info) if a.json else memory_table(info))


def cmd_memory_remove(a):
    from .memory import ContinualMemory
    from .remove import memory_without_concept

    out = Path(a.out)
    if out.exists():
        raise FileExistsError(f"--out: {out} already exists: refusing to overwrite")
    new, _, report = memory_without_concept(ContinualMemory.load(a.file), a.name, "--name")
    new.save(out)
    print(json.dumps({**report, "memory": str(out)}))


def build_parser():
    from .gallery import DEFAULT_CFG
    from .images import FITS
    from .neurons import SelectConfig
    from .train import TrainConfig

    p = argparse.ArgumentParser(prog="python -m continual_concepts", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)

    def common(sp, images=True):
        sp.add_argument("--model", default="tiny", help="diffusers folder, 'tiny' or 'toy'")
        if images:
            sp.add_argument("--images", required=True, help="folder of concept images")
            sp.add_argument("--size", type=int, default=None, help="bring images to SIZE×SIZE (see --fit)")
            sp.add_argument("--fit", choices=FITS, default="crop",
                            help="crop: short side to SIZE, centre cut (default); pad: long side, on white; stretch")
        sp.add_argument("--memory", default=None, help="continual memory (.safetensors)")
        sp.add_argument("--force", action="store_true", help="accept a memory made for another base model")

    s = sub.add_parser("select", help="select concept neurons")
    common(s)
    s.add_argument("--prompt", required=True)
    s.add_argument("--trigger", required=True)
    s.add_argument("--out", required=True, help="neurons .safetensors (a .png map is written beside it)")
    _cfg_args(s, SelectConfig)
    s.set_defaults(fn=cmd_select)

    t = sub.add_parser("train", help="learn one concept into the model's memory")
    common(t)
    t.add_argument("--prompt", required=True)
    t.add_argument("--trigger", required=True)
    t.add_argument("--name", default=None)
    t.add_argument("--neurons", default=None, help="rows from `select` (default: select now)")
    t.add_argument("--generic-prompt", default="a photo")
    t.add_argument("--prior-prompt", action="append", help="a prompt the model should keep drawing as before "
                   "(lam_prior's, and CNS's calibration prompts; repeatable; default: 100 shipped generic prompts)")
    t.add_argument("--out-memory", required=True)
    _cfg_args(t, SelectConfig, "select-")
    _cfg_args(t, TrainConfig)
    t.set_defaults(fn=cmd_train)

    r = sub.add_parser("probe", help="DC scores of images against learned concepts / prompts")
    common(r)
    r.add_argument("--prompt", action="append", help="candidate prompt (repeatable)")
    r.add_argument("--timesteps", type=int, default=16)
    r.add_argument("--temperature", type=float, default=1.0)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--chart", default=None, help="write the DC chart PNG here")
    r.set_defaults(fn=cmd_probe)

    m = sub.add_parser("merge", help="write the merged model, per-concept deltas and embeddings")
    common(m, images=False)
    m.add_argument("--out", required=True)
    m.set_defaults(fn=cmd_merge)

    q = sub.add_parser("sequence", help="learn a JSON/YAML list of concepts one after another")
    q.add_argument("config")
    q.add_argument("--out", required=True)
    q.add_argument("--model", default=None)
    _cfg_args(q, SelectConfig, "select-")
    _cfg_args(q, TrainConfig)
    q.set_defaults(fn=cmd_sequence)

    mm = sub.add_parser("memory", help="look into a continual memory file").add_subparsers(dest="what", required=True)
    ms = mm.add_parser("show", help="base model and every concept: trigger, prompt, rows, steps, date, loss")
    ms.add_argument("file")
    ms.add_argument("--json", action="store_true", help="one JSON object instead of the table")
    ms.set_defaults(fn=cmd_memory_show)
    mr = mm.add_parser("remove", help="write a copy of the memory without one concept (see the report for rows it "
                                      "shared with later concepts)")
    mr.add_argument("file")
    mr.add_argument("--name", required=True, help="the concept to take out")
    mr.add_argument("--out", required=True, help="the new memory file (never overwritten)")
    mr.set_defaults(fn=cmd_memory_remove)

    g = sub.add_parser("gallery", help="every learned concept and the generic prompt sampled in one grid, with a "
                                       "DC self-check")
    g.add_argument("--model", default="tiny", help="the memory's base model: diffusers folder, 'tiny' or 'toy'")
    g.add_argument("--memory", required=True, help="continual memory (.safetensors)")
    g.add_argument("--force", action="store_true", help="accept a memory made for another base model")
    g.add_argument("--out", required=True, help="grid PNG (the self-check JSON is written beside it, .json)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--samples", type=int, default=4, help="images per concept")
    g.add_argument("--size", type=int, default=None, help="sample size in px (default: the model's own)")
    g.add_argument("--steps", type=int, default=20)
    g.add_argument("--cfg", type=float, default=DEFAULT_CFG, help="classifier-free guidance scale")
    g.add_argument("--out-memory", default=None, help="also write the memory with the self-check recorded "
                                                      "(`memory show` lists it)")
    g.set_defaults(fn=cmd_gallery)

    w = sub.add_parser("queue", help="queue an API-format workflow on a running ComfyUI")
    w.add_argument("workflow")
    w.add_argument("--server", default="http://127.0.0.1:8188")
    w.add_argument("--timeout", type=float, default=None, help="seconds for the whole prompt (default: no limit)")
    w.add_argument("--http-timeout", type=float, default=30.0, help="seconds per HTTP request before a retry")
    w.set_defaults(fn=cmd_queue)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from .atomic_io import OutputExistsError
    from .backends.base import UnsupportedModelError

    try:
        rc = args.fn(args)
    except (ValueError, FileNotFoundError, FileExistsError, OutputExistsError, UnsupportedModelError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return int(rc or 0)
