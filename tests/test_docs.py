"""README stays a short guide, and every relative link of README and docs/ leads somewhere."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.support import REPO

#: [text](target) and ![alt](target), without the optional title.
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
DOCUMENTS = sorted([REPO / "README.md", *(REPO / "docs").rglob("*.md")])


def relative_links(document: Path) -> list[str]:
    return [
        target
        for target in LINK.findall(document.read_text(encoding="utf-8"))
        if not re.match(r"[a-z]+:", target) and not target.startswith("#")
    ]


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: str(path.relative_to(REPO)))
def test_every_relative_link_resolves(document: Path) -> None:
    missing = [
        target for target in relative_links(document) if not (document.parent / target.split("#")[0]).exists()
    ]
    assert missing == []


def test_the_checker_sees_a_broken_link(tmp_path: Path) -> None:
    document = tmp_path / "guide.md"
    document.write_text("[ok](guide.md) [gone](docs/nowhere.md) ![pic](board.png) <https://x.example>\n")
    assert relative_links(document) == ["guide.md", "docs/nowhere.md", "board.png"]


def test_readme_is_a_guide_and_links_to_every_topic_document() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 200
    topics = {path.relative_to(REPO).as_posix() for path in (REPO / "docs").glob("*.md")}
    assert topics <= set(relative_links(REPO / "README.md"))


def test_architecture_opens_with_the_map_of_every_top_level_package() -> None:
    architecture = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8")
    headings = re.findall(r"^## (.+)$", architecture, flags=re.MULTILINE)
    assert headings[0] == "The map"
    the_map = architecture.split("## The map")[1].split("\n## ")[0]
    for package in (
        "mkpi/",
        "devtools/",
        "bench/",
        "agents/runtime/",
        "agents/kafka/",
        "streams/core/",
        "streams/contracts/",
    ):
        assert f"`{package}`" in the_map, package
