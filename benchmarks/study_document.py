"""The results document's bookkeeping: one section per study between ``<!-- study:<name> ... -->``
and ``<!-- /study:<name> -->``, hand-filled ``keep`` paragraphs kept, the head rewritten
(benchmarks/study.py)."""

from __future__ import annotations

import re
from pathlib import Path

PLACEHOLDER = "PLACEHOLDER"  # a keep paragraph still holding it was not filled in by hand yet


SECTION_RE = re.compile(r"<!-- study:(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)(?P<attrs>(?: [a-z]+=\S+)*) -->\n"
                        r".*?<!-- /study:(?P=name) -->\n?", re.S)
KEEP_RE = re.compile(r"<!-- keep:(?P<key>[a-z-]+) -->\n.*?<!-- /keep:(?P=key) -->", re.S)


def sections(text: str) -> list[re.Match]:
    return list(SECTION_RE.finditer(text))


def section_attrs(match: re.Match) -> dict[str, str]:
    return dict(a.split("=", 1) for a in match["attrs"].split())


def section_block(name: str, body: str, measured: str | None = None) -> str:
    opening = f"<!-- study:{name}" + (f" measured={measured}" if measured else "") + " -->"
    return f"{opening}\n{body.strip()}\n<!-- /study:{name} -->\n"


def write_section(path: Path, name: str, body: str, measured: str | None = None) -> str:
    """Put study ``name``'s section into the document at ``path``: in place of its old one, or
    appended; every other section and the text between sections stay byte for byte; the head
    (everything before the first section) is rewritten. Returns the new text."""
    text = path.read_text() if path.is_file() else ""
    found = sections(text)
    mine = next((m for m in found if m["name"] == name), None)
    block = section_block(name, body, measured)
    if mine is not None:
        block = keep_filled(mine.group(0), block)
        rest = text[found[0].start():mine.start()] + block + text[mine.end():]
    elif found:
        rest = text[found[0].start():].rstrip("\n") + "\n\n" + block
    else:
        rest = block
    new_text = document_head(sections(rest)) + "\n" + rest
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(new_text)
    tmp.replace(path)
    return new_text


def keep_filled(old: str, new: str) -> str:
    """The hand-filled ``keep`` paragraphs of the old section (no PLACEHOLDER left) in the new one."""
    filled = {m["key"]: m.group(0) for m in KEEP_RE.finditer(old) if PLACEHOLDER not in m.group(0)}
    return KEEP_RE.sub(lambda m: filled.get(m["key"], m.group(0)), new)


def document_head(found: list[re.Match]) -> str:
    dated = sorted((section_attrs(m).get("measured", ""), m["name"]) for m in found)
    dated = [(date, name) for date, name in dated if date]
    newest = (f"Newest section: **{dated[-1][0]}** (`{dated[-1][1]}`)." if dated
              else "No study has run on this code yet.")
    listing = "; ".join(f"`{m['name']}` ({'measured ' + section_attrs(m)['measured'] if 'measured' in section_attrs(m) else 'not run yet'})"
                        for m in found)
    return f"""# Results: does CLO beat bi-level and fixed loss weights, and at what early-exit speed?

{newest} Studies: {listing}.

Each section below is one study on one task, written by `python benchmarks/study.py --preset <study>`
and rewritten only by that study: the five arms (three fixed loss weightings, bi-level, CLO), each
tuned on validation under the same training compute, then each arm's best configuration retrained
with seeds 1, 2, 3 and compared on the same test examples with paired bootstrap intervals. Each
section says what it cost, which commands made it and from which commit.
"""
