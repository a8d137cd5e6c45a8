"""Checks that cost nothing and so run before any model work: the prompt names its trigger (and the prior prompts do
not), and a concept's name and trigger are new to the memory (or the caller asked to replace the concept that has
them)."""
from __future__ import annotations

import re

from .memory import ConceptRecord, ContinualMemory


def check_trigger_in_prompt(prompt: str, trigger: str) -> None:
    """The trigger must stand as a word in the prompt, or its token never trains (punctuation may touch it)."""
    if not trigger.strip():
        raise ValueError("trigger: empty; give a rare word that is exactly one token (e.g. 'sks')")
    if not re.search(rf"(?<![\w]){re.escape(trigger.strip())}(?![\w])", prompt):
        raise ValueError(f"prompt: must contain the trigger word '{trigger.strip()}' (got '{prompt}')")


def prior_prompt_lines(text: str, trigger: str) -> list[str] | None:
    """The prior prompts, one per line (None: none given, use the shipped generic ones); a line that names the
    trigger would hold the concept's own word to what it drew before, so it is an error."""
    lines = [l.strip() for l in text.splitlines() if l.strip()]
    word = re.compile(rf"(?<![\w]){re.escape(trigger.strip())}(?![\w])") if trigger.strip() else None
    if word and (bad := [i + 1 for i, l in enumerate(lines) if word.search(l)]):
        raise ValueError(f"prior_prompts: line {bad[0]} contains the trigger '{trigger.strip()}'; prior prompts are "
                         "what the model should keep drawing as before, without the new concept")
    return lines or None


def concepts_to_replace(memory: ContinualMemory | None, name: str, trigger: str, replace: bool) -> list[ConceptRecord]:
    """The memory's concepts with this name or trigger: an error unless replace, else the ones to take out."""
    if not name.strip():
        raise ValueError("name: empty; give the concept a name")
    clash = [c for c in (memory.concepts if memory is not None else []) if c.name == name or c.trigger == trigger]
    if clash and not replace:
        what = "; ".join(f"'{c.name}' (trigger '{c.trigger}')" for c in clash)
        raise ValueError(f"name/trigger: the memory already has concept {what}: pick a new name and trigger, or set "
                         "replace to learn it again")
    return clash


def known_concept(memory: ContinualMemory, name: str, input_name: str = "name") -> ConceptRecord:
    """The memory's concept called `name`; an unknown name is an error listing the names it has."""
    for c in memory.concepts:
        if c.name == name:
            return c
    known = ", ".join(f"'{c.name}'" for c in memory.concepts) or "none: the memory is empty"
    raise ValueError(f"{input_name}: the memory has no concept '{name}' (it has {known})")
