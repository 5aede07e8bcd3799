"""The store contract on the PostgreSQL server engine.

`make test` (scripts/with-postgres) starts a throw-away server on a free loopback port and sets
MEMORI_TEST_POSTGRES_URL. Without it these tests fail loudly rather than skip: a suite that
silently skips its server engine proves nothing.
"""

from __future__ import annotations

import os

import pytest
from store_contract import StoreContract

POSTGRES_URL = os.environ.get("MEMORI_TEST_POSTGRES_URL", "")

pytestmark = pytest.mark.postgres


class TestPostgresStore(StoreContract):
    @pytest.fixture
    def database_url(self) -> str:
        assert POSTGRES_URL, (
            "MEMORI_TEST_POSTGRES_URL is not set: run the suite with `make test` "
            "(or scripts/with-postgres pytest)"
        )
        return POSTGRES_URL
