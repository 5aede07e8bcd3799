"""Every ```python block in docs/ and README.md runs, so the documentation cannot rot.

Blocks of one page run in order in one namespace, against a fresh database
(MEMORI_DATABASE_URL points at a temporary file).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted((ROOT / "docs").glob("*.md"))
BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_page_examples_run(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEMORI_DATABASE_URL", f"sqlite:///{tmp_path / 'docs.db'}")
    blocks = BLOCK.findall(page.read_text())
    namespace: dict[str, object] = {"__name__": f"docs_{page.stem}"}
    for number, block in enumerate(blocks, start=1):
        try:
            exec(compile(block, f"{page.name}#block{number}", "exec"), namespace)
        except Exception as e:  # pragma: no cover - the message is the point
            raise AssertionError(f"{page.name} block {number} failed: {e!r}\n{block}") from e


def test_docs_have_examples() -> None:
    assert PAGES
    assert sum(len(BLOCK.findall(p.read_text())) for p in PAGES) >= 6
