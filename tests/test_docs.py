"""The documentation stays self-contained: no pointers outside the repository, no broken links.

Cheap checks (no model is built):

- no file of the repository (tracked, or new and not ignored) refers to a working document
  that lives outside it: the lead's spec file or the ``shared`` folder beside the checkout;
- every relative link of the user documentation points at a file that exists, and every
  ``#anchor`` into a markdown file names one of its headings (GitHub's heading ids);
- every ``docs/<page>.md#anchor`` written in code, configs or docs names a heading of that page.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Dict, Iterable, List, Set

import pytest

REPO = Path(__file__).resolve().parents[1]

# Built from pieces so that this file does not match its own patterns.
_SPEC = "SP" + "EC"
OUTSIDE_REFERENCES = [
    re.compile(r"\b" + _SPEC + r"\.md\b"),
    re.compile(r"\b" + _SPEC + r"\s+(?:section|sections|\d)"),
    re.compile(re.escape(".." + "/shared")),
    re.compile(re.escape("/work/" + "shared")),
]

USER_DOCS = ["README.md", "GETTING_STARTED.md", "INSTALL.md", "MODEL_ZOO.md"]
EXTRA_DOCS = ["datasets/README.md", "projects/demo/README.md"]


def _repo_files() -> List[Path]:
    """Tracked files plus new files git does not ignore (what the next commit would hold)."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=REPO,
            capture_output=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the file list comes from git ls-files")
    names = sorted({n for n in out.decode("utf-8", "replace").split("\0") if n})
    return [REPO / n for n in names if (REPO / n).is_file()]


def _text(path: Path) -> str | None:
    data = path.read_bytes()
    if b"\0" in data[:8192]:
        return None  # binary (checkpoints, images)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _doc_pages() -> List[Path]:
    pages = [REPO / n for n in USER_DOCS + EXTRA_DOCS]
    pages += sorted((REPO / "docs").glob("*.md"))
    return [p for p in pages if p.is_file()]


def _without_code_blocks(text: str) -> Iterable[str]:
    """The lines of a markdown text outside fenced code blocks."""
    fence = None
    for line in text.splitlines():
        stripped = line.lstrip()
        if fence is None and stripped.startswith(("```", "~~~")):
            fence = stripped[:3]
            continue
        if fence is not None:
            if stripped.startswith(fence):
                fence = None
            continue
        yield line


def github_slug(heading: str) -> str:
    """The id GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link counts by its text
    text = text.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> Set[str]:
    """The heading ids of a markdown file, numbered as GitHub numbers repeated headings."""
    seen: Dict[str, int] = {}
    ids = set()
    for line in _without_code_blocks(path.read_text(encoding="utf-8")):
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        slug = github_slug(m.group(1))
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        ids.add(slug if n == 0 else f"{slug}-{n}")
    return ids


LINK = re.compile(r"\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REF_DEF = re.compile(r"^\s*\[[^\]]+\]:\s*(\S+)")


def links(path: Path) -> List[str]:
    out = []
    for line in _without_code_blocks(path.read_text(encoding="utf-8")):
        line = re.sub(r"`[^`]*`", "", line)  # inline code is not a link
        out += LINK.findall(line)
        m = REF_DEF.match(line)
        if m:
            out.append(m.group(1))
    return out


def test_no_reference_to_documents_outside_the_repository():
    found = []
    for path in _repo_files():
        text = _text(path)
        if text is None:
            continue
        for lineno, line in enumerate(text.splitlines(), 1):
            for pattern in OUTSIDE_REFERENCES:
                if pattern.search(line):
                    found.append(f"{path.relative_to(REPO)}:{lineno}: {line.strip()[:120]}")
    assert not found, (
        "these lines point at a document outside the repository; refer to docs/model.md (or "
        "another page in the repository) instead:\n" + "\n".join(found)
    )


def test_user_docs_and_license_exist():
    pages = USER_DOCS + ["docs/model.md", "docs/ops.md", "docs/performance.md", "LICENSE"]
    missing = [n for n in pages if not (REPO / n).is_file()]
    assert not missing, f"missing documentation pages: {missing}"


def test_relative_links_point_at_existing_files_and_headings():
    broken = []
    for page in _doc_pages():
        for target in links(page):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:
                continue
            file_part, _, anchor = target.partition("#")
            dest = (page.parent / file_part).resolve() if file_part else page
            where = f"{page.relative_to(REPO)}: ({target})"
            if not dest.exists():
                broken.append(f"{where}: no such file")
                continue
            try:
                dest.relative_to(REPO)
            except ValueError:
                broken.append(f"{where}: points outside the repository")
                continue
            if anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                broken.append(f"{where}: no heading #{anchor} in {dest.relative_to(REPO)}")
    assert not broken, "broken links:\n" + "\n".join(broken)


DOC_ANCHOR = re.compile(r"(?<![\w/.-])(docs/[\w-]+\.md)#([\w-]+)")


def test_docs_anchors_named_anywhere_exist():
    broken = []
    for path in _repo_files():
        text = _text(path)
        if text is None:
            continue
        for lineno, line in enumerate(text.splitlines(), 1):
            for page, anchor in DOC_ANCHOR.findall(line):
                dest = REPO / page
                if not dest.is_file():
                    broken.append(f"{path.relative_to(REPO)}:{lineno}: {page} does not exist")
                elif anchor not in anchors(dest):
                    broken.append(
                        f"{path.relative_to(REPO)}:{lineno}: no heading #{anchor} in {page}"
                    )
    assert not broken, "references to missing doc sections:\n" + "\n".join(broken)


def test_github_slug():
    assert github_slug("`make demo`: PlainMamba-L1 on an image, then a small detector") == (
        "make-demo-plainmamba-l1-on-an-image-then-a-small-detector"
    )
    assert github_slug("COCO 1x") == "coco-1x"
    assert github_slug("Demo: draw predictions") == "demo-draw-predictions"
