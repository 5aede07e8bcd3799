"""The exceptions memori-core raises, in one place.

```
MemoriError                      base of everything below
├── UsageError                   the caller did something wrong (fix the call)
│   ├── InvalidScopeError        bad entity/process/session id   (also a ValueError)
│   ├── InvalidMessageError      bad message role/content         (also a ValueError)
│   ├── InvalidVectorError       NaN, inf or wrong-dimension embedding (also a ValueError)
│   ├── ScopeError               an id that belongs to another scope (e.g. another entity's session)
│   └── ConfigurationError       a bad database URL, embedder or option (also a ValueError)
└── StorageError                 the database failed at run time (locked, unreachable, corrupt)
    └── MigrationError           the schema could not be brought up to date
```

User mistakes subclass `ValueError` where callers already catch that; runtime failures do not.
"""

from __future__ import annotations

__all__ = [
    "ConfigurationError",
    "InvalidMessageError",
    "InvalidScopeError",
    "InvalidVectorError",
    "MemoriError",
    "MigrationError",
    "ScopeError",
    "StorageError",
    "UsageError",
]


class MemoriError(Exception):
    """Base class of every error raised by memori-core."""


class UsageError(MemoriError):
    """The caller used the API wrongly; the message says how to fix it."""


class InvalidScopeError(UsageError, ValueError):
    """An entity, process or session id is empty, too long, or holds forbidden characters."""


class InvalidMessageError(UsageError, ValueError):
    """A message has an unknown role, or content that is not text."""


class InvalidVectorError(UsageError, ValueError):
    """An embedding holds NaN/inf values or has the wrong dimension."""


class ScopeError(UsageError):
    """An id was used under a scope it does not belong to (e.g. another entity's session)."""


class ConfigurationError(UsageError, ValueError):
    """A database URL, embedder or option is not usable."""


class StorageError(MemoriError):
    """The database failed while reading or writing."""


class MigrationError(StorageError):
    """A schema migration could not be applied."""
