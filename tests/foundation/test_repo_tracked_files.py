"""What the repository tracks: no symlinks, and the built corpora stay untracked.

`bench/corpus_full` was once committed as a symlink to an absolute path (a `.gitignore` entry with a trailing
slash matches only directories, not a symlink). In the checkout it pointed at itself, so `make corpus` and
`make eval` could neither build nor read the synthetic corpus."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _git(*args: str) -> str:
    git = shutil.which("git")
    if git is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    return subprocess.run([git, *args], cwd=ROOT, check=True, capture_output=True, text=True).stdout


def test_no_tracked_symlink() -> None:
    links = [line.split("\t", 1)[1] for line in _git("ls-files", "-s").splitlines() if line.startswith("120000 ")]
    assert links == [], f"symlinks are tracked: {links}"


@pytest.mark.parametrize("path", ["bench/corpus_full", "bench/corpus_real_full"])
def test_built_corpora_are_ignored_as_links_too(path: str) -> None:
    # --no-index: ask the ignore rules about the path itself, whatever it is (a directory, a symlink or nothing).
    assert _git("check-ignore", "--no-index", path).strip() == path
