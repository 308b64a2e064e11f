"""The README's (and the model history's) relative links and pictures point at files in the repository."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


@pytest.mark.parametrize("doc", ["README.md", "docs/model_history.md"])
def test_every_relative_link_and_picture_exists(doc: str):
    path = ROOT / doc
    text = path.read_text()
    targets = re.findall(r"\]\(([^)\s]+)\)", text)
    local = [t.split("#")[0] for t in targets if not re.match(r"[a-z]+://|#|mailto:", t)]
    assert len(local) > 10  # the pattern still finds the links
    missing = [t for t in local if t and not (path.parent / t).exists()]  # relative to the document
    assert not missing, f"{doc} links to missing files: {missing}"
    assert not re.search(r"\{[A-Z][A-Z0-9_]*\}", text), f"{doc} has an unfilled {{PLACEHOLDER}}"
