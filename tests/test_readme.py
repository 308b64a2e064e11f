"""The README's (and the model history's) relative links and pictures point at files in the repository,
and every pointer into the history names one of its sections."""

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


def test_every_pointer_into_the_history_names_a_section():
    """README's (history, "X") and the code's, recipes' and docs' (docs/model_history.md, "X") name a
    `## ` heading of docs/model_history.md: X itself, or X before its ":" or " (" (a pointer that
    outlived a renamed heading sends a reader nowhere)."""
    headings = re.findall(r"^## (.+)$", (ROOT / "docs/model_history.md").read_text(), re.M)
    names = {h for h in headings} | {re.split(r":| \(", h)[0] for h in headings}
    files = [ROOT / "README.md", *ROOT.glob("streamer/**/*.py"), *ROOT.glob("recipes/**/*.toml"),
             *ROOT.glob("docs/**/*.py"), *ROOT.glob("docs/**/*.md")]
    found = []
    for f in files:
        text = re.sub(r"\n\s*(#\s*)?", " ", f.read_text())  # a pointer may wrap across comment lines
        found += [(f.name, x) for x in re.findall(r'(?:\(history|model_history\.md), "([^"]+)"', text)]
    assert len(found) > 30  # the pattern still finds the pointers
    dangling = sorted({(f, x) for f, x in found if x not in names})
    assert not dangling, f"pointers to no section of docs/model_history.md: {dangling}"
