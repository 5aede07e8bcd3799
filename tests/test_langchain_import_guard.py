"""Without the framework installed, importing the adapter says which extra to install."""

from __future__ import annotations

import subprocess
import sys

import pytest

# A None entry in sys.modules makes `import name` fail as if the package were not installed.
_PROGRAM = """
import sys
for name in {missing!r}:
    sys.modules[name] = None
try:
    import {module}
except ImportError as e:
    print("ERROR:", e)
    print("CAUSE:", type(e.__cause__).__name__)
else:
    print("IMPORTED")
"""


def _import_without(module: str, missing: tuple[str, ...]) -> str:
    program = _PROGRAM.format(module=module, missing=missing)
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60, check=True
    )
    return done.stdout


def test_package_names_the_langchain_extra() -> None:
    out = _import_without("memori_langchain", ("langchain_core",))

    assert 'pip install "memori-core[langchain]"' in out
    assert "CAUSE: ModuleNotFoundError" in out


@pytest.mark.parametrize(
    ("module", "missing"),
    [
        ("memori_langchain.middleware", ("langchain", "langgraph")),
        ("memori_langchain.store", ("langgraph",)),
    ],
)
def test_langgraph_modules_name_the_langgraph_extra(module: str, missing: tuple[str, ...]) -> None:
    out = _import_without(module, missing)

    assert 'pip install "memori-core[langgraph]"' in out


def test_package_itself_does_not_need_langchain_or_langgraph() -> None:
    out = _import_without("memori_langchain", ("langchain", "langgraph"))

    assert "IMPORTED" in out
