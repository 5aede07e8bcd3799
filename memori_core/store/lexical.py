"""Scope-prefixed index words, so that a lexical search walks only its own scope's postings.

Every word of a memory is indexed as `<scope prefix><word>`, the prefix a 16-digit hash of the
memory's (entity, process); a search asks for its scopes' prefixed words only. FTS5 then reads
the postings of one user's words rather than every user's, and the word statistics bm25 uses
(how many memories hold a word) are counted within the scope. The prefix is all digits so that
the porter stemmer, which weighs the vowels and consonants before a suffix, stems the word as
it would without it (a digit-led prefix adds no vowel).
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Iterable

__all__ = ["scope_prefix", "scoped_text", "scoped_words"]

# The letters-and-digits runs FTS5's unicode61 tokenizer keeps as words (underscore and
# punctuation separate words there too).
WORD = re.compile(r"[^\W_]+")


@functools.lru_cache(maxsize=4096)
def scope_prefix(entity_id: str, process_id: str | None) -> str:
    """16 digits identifying (entity, process) in index words."""
    ids = json.dumps([entity_id, process_id]).encode()
    number = int.from_bytes(hashlib.blake2b(ids, digest_size=8).digest(), "big")
    return str(number % 10**16).zfill(16)


def scoped_text(prefix: str, text: str) -> str:
    """`text` as the words the index stores for a memory under `prefix`."""
    return " ".join(prefix + word for word in WORD.findall(text))


def scoped_words(prefixes: Iterable[str], words: Iterable[str]) -> list[str]:
    """Each word of `words` under each prefix, as index words to search for."""
    split = [part for word in words for part in WORD.findall(word)]
    return [prefix + part for prefix in prefixes for part in dict.fromkeys(split)]
