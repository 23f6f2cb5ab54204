"""Every relative link in the documentation leads to a file, and every #anchor to a heading of
that file (GitHub's heading ids)."""

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [
    REPO / "README.md",
    REPO / "CHANGELOG.md",
    REPO / "DEVELOPERS.md",
    REPO / "pretrained" / "README.md",
    *sorted((REPO / "docs").glob("*.md")),
]
FENCED = re.compile(r"^```.*?^```", re.S | re.M)
LINK = re.compile(r"\]\(([^)\s]+)\)")


def heading_ids(page: Path) -> set[str]:
    """GitHub's ids: lower case, punctuation but `-` and `_` dropped, spaces as `-`, a repeated
    heading numbered."""
    ids, seen = set(), {}
    for title in re.findall(r"^#{1,6} (.+)$", FENCED.sub("", page.read_text()), re.M):
        slug = re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        ids.add(slug if n == 0 else f"{slug}-{n}")
    return ids


def test_heading_ids_follow_github():
    page = REPO / "docs" / "results.md"
    assert "demo-make-demo-seeds3" in heading_ids(page)  # "Demo: `make demo SEEDS=3`"
    assert "sweep-on-real-photos-which-setting-helps-over-seeds" in heading_ids(page)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(page):
    broken = []
    for target in LINK.findall(FENCED.sub("", page.read_text())):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in heading_ids(dest):
            broken.append(f"{target} (no such heading)")
    assert not broken, f"{page.relative_to(REPO)}: {broken}"
