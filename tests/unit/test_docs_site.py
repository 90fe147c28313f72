"""The documentation site builds in strict mode, and the README's links lead somewhere.

MkDocs in strict mode turns every warning into a failure: a link to a page
or anchor that does not exist, a page missing from the navigation's files, a
docstring the API reference cannot render. The README is read on the code
host, not built, so its relative links are checked here directly.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_docs_site_builds_in_strict_mode(tmp_path):
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    cmd = [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (tmp_path / "site" / "reference" / "python-api" / "index.html").read_text().count(
        'id="kvllama.Engine.complete"') == 1  # the API reference was generated from the docstrings


def test_every_relative_link_in_the_readme_exists():
    text = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    local = [link for link in links if "://" not in link]
    assert local, "the README links its docs pages"
    missing = [link for link in local if not (ROOT / link).exists()]
    assert not missing, missing


def test_the_readme_stays_a_front_door():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 400
