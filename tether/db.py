"""The database pool and error classes every store shares (each package keeps its own SQL)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

# Errors worth waiting out (the database is down, restarting or overloaded), as opposed to bugs.
TransientError = (psycopg.OperationalError, psycopg.errors.AdminShutdown, TimeoutError)
# Errors caused by the data itself (e.g. a NUL character jsonb refuses): retrying cannot help.
DataRejected = (psycopg.DataError, psycopg.IntegrityError)


def pool(url: str, max_size: int, dict_rows: bool = False,
         configure: Callable[[psycopg.AsyncConnection], Awaitable[None]] | None = None
         ) -> AsyncConnectionPool:
    """A closed pool; open it with `await p.open(wait=False)`, so that a database down at
    start-up is waited out by the caller's retries instead of failing the start."""
    kwargs: dict[str, Any] = {"row_factory": dict_row} if dict_rows else {}
    return AsyncConnectionPool(url, min_size=1, max_size=max_size, open=False, kwargs=kwargs,
                               configure=configure, timeout=10)
