"""A continual memory as a text table: `python -m continual_concepts memory show` and the Concept Memory Info node."""
from __future__ import annotations


def memory_table(info: dict) -> str:
    """ContinualMemory.summary() as text: the file (with 'file' and 'bytes' when it was read from one) and its base
    model, then one line per concept."""
    def cell(v, fmt="{}"):
        return "–" if v is None else fmt.format(v)

    version = f"format version {info['format_version']}"
    head = [f"file: {info['file']} ({info['bytes'] / 1024:.1f} KiB, {version})" if "file" in info else version,
            f"base model fingerprint: {info['fingerprint'][:16]}", f"generic prompt: {info['generic_prompt']!r}",
            f"concepts: {len(info['concepts'])}"]
    cols = ["name", "trigger", "prompt", "rows", "% UNet params", "steps", "seconds", "date", "final loss",
            "EWC Fisher", "DC self-check"]
    rows = [[c["name"], c["trigger"], c["prompt"], str(c["rows"]), cell(c["params_pct"], "{:.3f}"),
             cell(c["steps"]), cell(c["seconds"], "{:.1f}"), cell(c["date"]), cell(c["final_loss"], "{:.4f}"),
             {True: "yes", False: "no"}.get(c.get("ewc_fisher"), "–"), cell(c.get("dc_self_check"), "{:.0%}")]
            for c in info["concepts"]]
    width = [max(len(x) for x in col) for col in zip(cols, *rows)]
    line = lambda r: "  ".join(x.ljust(w) for x, w in zip(r, width)).rstrip()  # noqa: E731
    return "\n".join(head + ([line(cols)] + [line(r) for r in rows] if rows else []))
