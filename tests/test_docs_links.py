"""Every relative link in README.md, BENCHMARKS.md and docs/*.md points to a file that exists, and every
#anchor to a heading (or an explicit ``id``) of the file it names, with GitHub's heading slugs."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", REPO / "BENCHMARKS.md", *sorted((REPO / "docs").glob("*.md"))]

_FENCE = re.compile(r"^\s*(```|~~~)")
_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(([^()\s]+)(?:\s+\"[^\"]*\")?\)")
_CODE_SPAN = re.compile(r"`[^`]*`")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_EXPLICIT_ID = re.compile(r"""<a\s+(?:name|id)=["']([^"']+)["']""")


def prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) outside fenced code blocks: a '#' or a link in a shell example is not markdown."""
    out, fenced = [], False
    for number, line in enumerate(text.split("\n"), 1):
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            out.append((number, line))
    return out


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: the rendered text (links reduced to their text), lower-cased, every
    character that is not a letter, digit, '_', '-' or space dropped, spaces turned into '-'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every anchor a link may name in ``path``: heading slugs (repeats get -1, -2, ... as on GitHub) and
    explicit ``<a id="...">`` targets."""
    seen: dict[str, int] = {}
    out = set()
    for _, line in prose_lines(path.read_text()):
        out.update(_EXPLICIT_ID.findall(line))
        match = _HEADING.match(line)
        if match:
            base = slug(match.group(2))
            count = seen.get(base, 0)
            seen[base] = count + 1
            out.add(base if count == 0 else f"{base}-{count}")
    return out


def broken_links(page: Path) -> list[str]:
    """'page:line: target (why)' for every relative link of ``page`` that does not resolve."""
    out = []
    for number, line in prose_lines(page.read_text()):
        for target in _LINK.findall(_CODE_SPAN.sub("", line)):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto: ...
                continue
            file_part, _, anchor = target.partition("#")
            resolved = (page.parent / file_part).resolve() if file_part else page
            where = f"{page.relative_to(REPO) if page.is_relative_to(REPO) else page}:{number}: {target}"
            if not resolved.exists():
                out.append(f"{where} (no such file)")
            elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
                out.append(f"{where} (no such anchor in {resolved.name})")
    return out


def test_every_relative_link_resolves():
    broken = [problem for page in PAGES for problem in broken_links(page)]
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_docs_pages_are_all_linked_from_readme_or_docs():
    linked = set()
    for page in PAGES:
        for _, line in prose_lines(page.read_text()):
            for target in _LINK.findall(_CODE_SPAN.sub("", line)):
                if not re.match(r"^[a-z][a-z0-9+.-]*:", target) and target.partition("#")[0]:
                    linked.add((page.parent / target.partition("#")[0]).resolve())
    orphans = [p.name for p in PAGES[2:] if p.resolve() not in linked]
    assert not orphans, f"docs pages no page links to: {orphans}"


def test_the_checker_reports_a_missing_file_and_a_missing_anchor(tmp_path):
    (tmp_path / "other.md").write_text(
        "# Scaling out: several processes, GPUs\n\n## Against SASRec: `quality.py`, 3 seeds\n")
    page = tmp_path / "page.md"
    page.write_text(
        "# Top\n\n"
        "[ok](other.md#scaling-out-several-processes-gpus) [ok](other.md#against-sasrec-qualitypy-3-seeds) [ok](#top)\n"
        "[gone](missing.md) [bad anchor](other.md#scaling-out) [bad self](#nowhere) [web](https://example.com/x)\n"
        "`[in code](missing-too.md)`\n\n```\n[in a fence](missing-three.md)\n# not a heading\n```\n")
    problems = broken_links(page)
    assert [p.split(": ", 1)[1] for p in problems] == [
        "missing.md (no such file)", "other.md#scaling-out (no such anchor in other.md)",
        "#nowhere (no such anchor in page.md)"]
    assert "not-a-heading" not in anchors(page)


def test_slug_matches_github_for_headings_with_code_and_punctuation():
    assert slug("Against SASRec: `benchmarks/quality.py`, 3 seeds") == "against-sasrec-benchmarksqualitypy-3-seeds"
    assert slug('Explained: "recommend X, because …"') == "explained-recommend-x-because-"
    assert slug("`make demo` within a time budget (current, 2026-12-02)") == (
        "make-demo-within-a-time-budget-current-2026-12-02")
