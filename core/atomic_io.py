"""Write files so that a reader never sees half a file and nothing existing is ever overwritten."""
from __future__ import annotations

import os
import re
import tempfile
import uuid
from pathlib import Path


class OutputExistsError(FileExistsError):
    pass


FILE_MODE = 0o644  # what a file written by hand gets under the usual umask; temp files are private (0600)


def resolve_prefix(root: str | os.PathLike, prefix: str, default: str) -> Path:
    """root/<prefix> for a node's filename_prefix, always inside root: '/' and '\\' both separate folders,
    empty or '.' parts are dropped (an empty prefix, '.', or one ending in a separator takes `default` as its
    file name), and absolute paths, drive letters and '..' are refused with an error naming the input."""
    text = str(prefix).strip()
    if text.startswith(("/", "\\")) or ":" in text:
        raise ValueError(f"filename_prefix '{prefix}': must be a relative name inside the output folder "
                         "(no absolute path, no drive letter)")
    parts = [q for q in re.split(r"[/\\]", text) if q not in ("", ".")]
    if ".." in parts or any(q.strip(".") == "" for q in parts):
        raise ValueError(f"filename_prefix '{prefix}': '..' would leave the output folder")
    if not parts or re.search(r"[/\\]\s*\.?\s*$", text):
        parts.append(default)
    root_p = Path(root).resolve()
    out = root_p.joinpath(*parts).resolve()
    if root_p not in out.parents:
        raise ValueError(f"filename_prefix '{prefix}' leaves the output folder (through a link)")
    return out


def next_free(names: list[tuple[Path, str]]) -> int:
    """The first counter N with every base_NNNNN<suffix> free (a set of files written together, maybe in several
    folders)."""
    for i in range(1, 100000):
        if not any(b.with_name(f"{b.name}_{i:05d}{s}").exists() for b, s in names):
            return i
    raise FileExistsError(f"{names[0][0]}: no free file name left")


def atomic_write(path: str | os.PathLike, write_fn, overwrite: bool = False) -> Path:
    """write_fn(tmp_path) writes the content; then it is published under `path` in one step.

    Without overwrite the publish is os.link (fails if the name exists: no race, no clobber)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} already exists: refusing to overwrite")
    # a fresh name the writer creates itself: pre-creating it (mkstemp) made large safetensors writes ~1.5x
    # slower in make bench (d); uuid4 makes a clash with another writer practically impossible
    tmp = str(path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        write_fn(tmp)
        os.chmod(tmp, FILE_MODE)
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise OutputExistsError(f"{path} already exists: refusing to overwrite") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def atomic_write_dir(path: str | os.PathLike, write_fn) -> Path:
    """Like atomic_write for a folder: write_fn(tmp_dir), then rename; never replaces an existing folder."""
    path = Path(path)
    if path.exists():
        raise OutputExistsError(f"{path} already exists: refusing to overwrite")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        write_fn(tmp)
        os.rename(tmp, path)
    finally:
        if tmp.exists():
            import shutil

            shutil.rmtree(tmp)
    return path
