"""The README's relative links and pictures point at files in the repository."""

import re
from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_every_relative_link_and_picture_in_the_readme_exists():
    text = (ROOT / "README.md").read_text()
    targets = re.findall(r"\]\(([^)\s]+)\)", text)
    local = [t.split("#")[0] for t in targets if not re.match(r"[a-z]+://|#|mailto:", t)]
    assert len(local) > 10  # the pattern still finds the README's links
    missing = [t for t in local if t and not (ROOT / t).exists()]
    assert not missing, f"README links to missing files: {missing}"
    assert not re.search(r"\{[A-Z][A-Z0-9_]*\}", text), "README has an unfilled {PLACEHOLDER}"
