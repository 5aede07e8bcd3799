"""The public surface: what `__all__` promises, and that importing it stays light."""

from __future__ import annotations

import subprocess
import sys

import memori_core
from memori_core import errors


def test_all_names_resolve() -> None:
    for name in memori_core.__all__:
        assert getattr(memori_core, name) is not None
    assert sorted(memori_core.__all__) == sorted(set(memori_core.__all__))


def test_error_tree() -> None:
    assert issubclass(errors.InvalidScopeError, ValueError)
    assert issubclass(errors.InvalidScopeError, errors.UsageError)
    assert issubclass(errors.ScopeError, errors.MemoriError)
    assert issubclass(errors.StorageError, errors.MemoriError)
    assert not issubclass(errors.StorageError, errors.UsageError)
    for name in errors.__all__:
        assert issubclass(getattr(errors, name), errors.MemoriError)


def test_import_loads_no_framework_sdk_or_runtime() -> None:
    code = (
        "import sys, memori_core\n"
        "heavy = ['openai', 'langchain_core', 'llama_index', 'pydantic_ai', 'chromadb',\n"
        "         'onnxruntime', 'tokenizers', 'sqlalchemy', 'numpy', 'httpx', 'httpx2']\n"
        "print([m for m in heavy if m in sys.modules])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_core_never_imports_a_framework() -> None:
    code = (
        "import sys\n"
        "from memori_core import Memori\n"
        "import memori_core.llm, memori_core.cli, memori_core.demo\n"
        "m = Memori('sqlite://', embedder=None).attribution('u')\n"
        "m.record([{'role': 'user', 'content': 'hi'}]); m.recall('hi')\n"
        "bad = ['openai', 'langchain_core', 'llama_index', 'pydantic_ai', 'chromadb']\n"
        "print([x for x in bad if x in sys.modules])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
