"""Passwords (argon2id), short-lived bearer tokens (JWT), the login throttle and the caller's
address."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from api.store import Principal

T = TypeVar("T")
_hasher = PasswordHasher()  # argon2id with the library's current recommended parameters
# Verified when the user does not exist, so a missing account takes as long as a wrong password.
_DUMMY_HASH = _hasher.hash("no such user")
# Logins waiting for a hashing slot. Overflow rule: beyond it a login is refused at once with
# 503 + Retry-After (no hash, no thread), so a flood of logins costs a queue of bounded size.
WAITING_LIMIT = 64
HASH_NICENESS = 10  # hashing threads yield the CPU to the event loop (ingest, the API)
LOGIN_DELAY_CAP_S = 60.0  # the throttle never makes one (user, client) wait longer than this


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    try:
        return _hasher.verify(password_hash or _DUMMY_HASH, password) and password_hash is not None
    except (VerificationError, InvalidHashError):
        return False


class Busy(Exception):
    """Too many logins are waiting for a hashing slot; the caller should retry shortly."""

    status_code = 503


class Passwords:
    """argon2 off the event loop: ~0.2 s of CPU (and 64 MiB) per hash would otherwise stall
    ingest and every socket of the process. At most `concurrency` hashes run at once, in threads
    of their own at a lower CPU priority (argon2-cffi releases the GIL; on a small machine the
    event loop must still win the CPU), and at most `waiting_limit` wait."""

    def __init__(self, concurrency: int, waiting_limit: int = WAITING_LIMIT) -> None:
        self._slots = asyncio.Semaphore(concurrency)
        self._pool = ThreadPoolExecutor(concurrency, thread_name_prefix="argon2",
                                        initializer=_lower_priority)
        self._waiting, self._limit = 0, waiting_limit
        # (user name, client) pairs with a login under way: one entry per running request
        self.in_flight: set[tuple[str, str]] = set()

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        if self._waiting >= self._limit:
            raise Busy("too many logins at once; try again shortly")
        self._waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self._waiting -= 1
        # The slot is freed when the thread ends, not when the caller goes away (a client
        # disconnecting mid-hash must not let more than `concurrency` hashes run).
        job = asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)
        job.add_done_callback(lambda _: self._slots.release())
        return await asyncio.shield(job)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def verify(self, password_hash: str | None, password: str) -> bool:
        return await self._run(verify_password, password_hash, password)

    async def hash(self, password: str) -> str:
        return await self._run(hash_password, password)


def _lower_priority() -> None:
    """Linux sets niceness per thread; argon2's own lane threads inherit it."""
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), HASH_NICENESS)


def login_delay_s(failures: int, free: int, cap_s: float = LOGIN_DELAY_CAP_S) -> float:
    """How long a caller waits after its last failure: nothing for the first `free` failures
    (typos), then 2, 4, 8 ... seconds, capped. A throttle per caller, never a lock on the
    account, so a guesser elsewhere cannot keep the owner out."""
    if failures < free:
        return 0.0
    return min(cap_s, 2.0 ** min(failures - free + 1, 30))


def client_address(peer: str | None, forwarded_for: str | None,
                   trusted: Iterable[str]) -> str:
    """The caller's address: the direct peer, unless the peer is a trusted proxy, in which case
    the nearest X-Forwarded-For hop that is not itself a trusted proxy. An untrusted peer's
    header is ignored: otherwise each request could claim a new address (and a fresh throttle)."""
    nets = [ipaddress.ip_network(t, strict=False) for t in trusted]

    def is_trusted(addr: str) -> bool:
        try:
            ip = ipaddress.ip_address(addr)
        except ValueError:
            return False
        return any(ip in n for n in nets)

    client = peer or "?"
    if not forwarded_for or not is_trusted(client):
        return client
    for hop in reversed([h.strip() for h in forwarded_for.split(",")][:32]):
        try:
            ipaddress.ip_address(hop)
        except ValueError:
            return client  # a malformed hop: believe no further than the last good one
        client = hop
        if not is_trusted(hop):
            return hop
    return client


class TokenError(ValueError):
    """A bearer token that is missing, malformed, expired or forged."""


@dataclass(frozen=True, slots=True)
class Tokens:
    secret: str
    ttl_s: int

    def issue(self, p: Principal, now: float | None = None) -> str:
        now = time.time() if now is None else now
        # `iat` keeps its fraction: a session ended at a password change must not outlive it,
        # and a login a moment after the change must not fall before it.
        return jwt.encode({"sub": str(p.id), "role": p.role, "iat": now,
                           "exp": int(now + self.ttl_s)}, self.secret, algorithm="HS256")

    def session(self, token: str) -> tuple[int, float, float | None]:
        """The user id, expiry and issue time (epoch seconds) of a valid token."""
        try:
            claims = jwt.decode(token, self.secret, algorithms=["HS256"],
                                options={"require": ["sub", "exp"]})
            iat = claims.get("iat")
            return (int(claims["sub"]), float(claims["exp"]),
                    float(iat) if isinstance(iat, int | float) else None)
        except (jwt.PyJWTError, ValueError, KeyError, TypeError) as e:
            raise TokenError(str(e)) from e

    def claims(self, token: str) -> tuple[int, float]:
        """The user id and the expiry (epoch seconds) of a valid token."""
        return self.session(token)[:2]

    def user_id(self, token: str) -> int:
        return self.claims(token)[0]
