"""The documentation stands on its own: it cites only files of the repository, and holds each section once."""

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCUMENTS = sorted((REPO / "docs").glob("*.md")) + [REPO / "README.md"]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def doc_id(path: Path) -> str:
    return path.name


@pytest.mark.parametrize("doc", DOCUMENTS, ids=doc_id)
def test_every_relative_link_names_a_file_of_the_repository(doc):
    targets = [target for target in LINK.findall(doc.read_text()) if "://" not in target]
    missing = [target for target in targets if not (doc.parent / target).exists()]
    assert not missing, missing


@pytest.mark.parametrize("doc", DOCUMENTS, ids=doc_id)
def test_no_document_cites_a_file_outside_the_repository(doc):
    assert not re.search(r"\bSPEC\b", doc.read_text())


@pytest.mark.parametrize("doc", DOCUMENTS, ids=doc_id)
def test_no_document_holds_a_section_twice(doc):
    headings = [line for line in doc.read_text().splitlines() if re.match(r"#{2,3} ", line)]
    assert len(headings) == len(set(headings)), sorted(h for h in headings if headings.count(h) > 1)
