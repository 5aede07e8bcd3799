"""The multi-agent demo notebooks run offline, top to bottom, with their assertions."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEMORI_DATABASE_URL", f"sqlite:///{tmp_path / 'nb.db'}")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook,
        timeout=180,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute(env=dict(os.environ))
    assert all(c.get("outputs") is not None for c in notebook.cells if c.cell_type == "code")


def test_there_is_a_notebook_per_host() -> None:
    names = " ".join(p.stem for p in NOTEBOOKS)
    for host in ("openai", "langchain", "llamaindex", "pydantic_ai"):
        assert host in names
