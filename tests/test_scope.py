"""Scope validation: what an id may be, and that the same rules hold everywhere."""

from __future__ import annotations

import unicodedata
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from memori_core import Scope
from memori_core.errors import InvalidScopeError


def test_ids_are_nfc_normalised() -> None:
    decomposed = "cafe\u0301"
    assert Scope(decomposed).entity_id == "caf\u00e9"
    assert Scope(decomposed, decomposed) == Scope("caf\u00e9", "caf\u00e9")


@pytest.mark.parametrize(
    "bad",
    ["", "   ", "x" * 256, "a\x00b", "tab\there", "line\nbreak", "\ud800", "del\x7f"],
)
def test_bad_ids_raise_a_value_error(bad: str) -> None:
    with pytest.raises(InvalidScopeError) as info:
        Scope(bad)
    assert isinstance(info.value, ValueError)
    with pytest.raises(InvalidScopeError):
        Scope("ok", bad)


def test_non_string_ids_are_refused() -> None:
    with pytest.raises(InvalidScopeError):
        Scope(123)  # type: ignore[arg-type]
    with pytest.raises(InvalidScopeError):
        Scope("u", session_id="not a uuid")


def test_scope_is_frozen_and_sessions_are_canonical() -> None:
    sid = uuid.uuid4()
    scope = Scope("u", "p", str(sid).upper())
    assert scope.session_id == str(sid)
    with pytest.raises(AttributeError):
        scope.entity_id = "other"  # type: ignore[misc]


def test_255_characters_is_the_limit() -> None:
    assert Scope("x" * 255).entity_id == "x" * 255


@given(st.text(min_size=1, max_size=255))
def test_any_valid_text_is_accepted_or_refused_with_the_typed_error(value: str) -> None:
    try:
        scope = Scope(value)
    except InvalidScopeError:
        return
    assert scope.entity_id == unicodedata.normalize("NFC", value)
