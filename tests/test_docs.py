"""The user documentation: links resolve, the README stays short, every hook has an entry.

Reads Markdown as text (no torch, no rendering): links and headings are looked for outside
fenced code blocks (links also outside inline code), and anchors follow GitHub's rules.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import vstk.hookspecs

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = [README, *sorted(DOCS.glob("*.md"))]
README_MAX_LINES = 150

_HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)(?:\s+#+)?\s*$")
_CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1")
# [text](target) or ![alt](target), with an optional "title"; the text may hold one level of brackets.
_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def outside_fences(text: str) -> list[tuple[int, str]]:
    """(line number, line) of every line of ``text`` outside fenced code blocks."""
    lines, fence = [], None
    for number, line in enumerate(text.splitlines(), 1):
        marker = line.lstrip()[:3]
        if fence is None and marker in ("```", "~~~"):
            fence = marker
        elif fence is not None:
            if marker == fence:
                fence = None
        else:
            lines.append((number, line))
    return lines


def github_anchor(heading: str) -> str:
    """GitHub's anchor of a heading: the rendered text, lowercase, punctuation except '-' and
    '_' removed, spaces to '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links -> their text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a Markdown file, repeated headings numbered as GitHub does."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    for line in _raw_heading_lines(path.read_text(encoding="utf-8")):
        base = github_anchor(line)
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def _raw_heading_lines(text: str) -> list[str]:
    """Heading texts outside fenced code, with inline code kept (it is part of the anchor)."""
    return [m.group(2) for _, line in outside_fences(text) if (m := _HEADING.match(line))]


def links(path: Path) -> list[tuple[int, str]]:
    """(line number, target) of every inline link of ``path`` outside code."""
    return [(number, match.group(1))
            for number, line in outside_fences(path.read_text(encoding="utf-8"))
            for match in _LINK.finditer(_CODE_SPAN.sub("code", line))]


def test_the_pages_exist():
    names = {p.name for p in PAGES}
    for page in ("getting-started.md", "data.md", "run.md", "predict.md", "translators.md", "pool.md",
                 "nnunet.md", "bench.md", "plugins.md", "scaling.md", "results.md", "architecture.md"):
        assert page in names, f"docs/{page} is missing"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page: Path):
    broken = []
    for number, target in links(page):
        if not target or _SCHEME.match(target):
            continue  # http(s), mailto: not checked here
        file_part, _, anchor = target.partition("#")
        where = f"{page.relative_to(ROOT)}:{number}: {target}"
        linked = (page.parent / file_part).resolve() if file_part else page
        if not linked.exists():
            broken.append(f"{where} (no such file)")
            continue
        if anchor:
            if linked.suffix != ".md" or linked.is_dir():
                broken.append(f"{where} (an anchor into a file that is not Markdown)")
            elif anchor not in anchors(linked):
                broken.append(f"{where} (no heading with anchor #{anchor} in {linked.name})")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_readme_is_short():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, (
        f"README.md has {len(lines)} lines (at most {README_MAX_LINES}): move the details into docs/")


def test_readme_starts_with_the_two_commands():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert lines[3].startswith("pip install -e . && vstk run ")
    assert lines[4].startswith('pip install -e ".[test]"') and lines[4].endswith("python -m pytest -q")


def test_every_hook_has_a_reference_entry():
    hooks = sorted(name for name, value in vars(vstk.hookspecs).items()
                   if name.startswith("vstk_") and callable(value))
    assert hooks, "no vstk_* hook specs found"
    headings = [h.replace("`", "") for h in _raw_heading_lines((DOCS / "plugins.md").read_text(encoding="utf-8"))]
    missing = [hook for hook in hooks if not any(re.match(rf"{hook}\b", h) for h in headings)]
    assert not missing, f"docs/plugins.md has no reference heading for: {', '.join(missing)}"


def test_docs_anchors_quoted_in_plugin_comments_resolve():
    """The profile comments point to their measurements as ``docs/results.md#anchor``."""
    broken = []
    for source in sorted((ROOT / "plugins").rglob("*.py")):
        for number, line in enumerate(source.read_text(encoding="utf-8").splitlines(), 1):
            for page, anchor in re.findall(r"docs/([\w-]+\.md)#([\w-]+)", line):
                if not (DOCS / page).is_file() or anchor not in anchors(DOCS / page):
                    broken.append(f"{source.relative_to(ROOT)}:{number}: docs/{page}#{anchor}")
    assert not broken, "comments point to missing docs headings:\n" + "\n".join(broken)


@pytest.mark.parametrize("heading, anchor", [
    ("Installing on a CPU machine", "installing-on-a-cpu-machine"),
    ("CPU flags: AMX or not", "cpu-flags-amx-or-not"),
    ("`vstk run` (the main job)", "vstk-run-the-main-job"),
    ("structure_intensity_texture and structure_intensity_invert",
     "structure_intensity_texture-and-structure_intensity_invert"),
    ("vstk_add_commands(cli)", "vstk_add_commandscli"),
    ("Translator training on several GPUs (or CPU processes)", "translator-training-on-several-gpus-or-cpu-processes"),
    ("nnU-Net budget on 2 CPU cores", "nnu-net-budget-on-2-cpu-cores"),
])
def test_github_anchor_rules(heading: str, anchor: str):
    assert github_anchor(heading) == anchor
