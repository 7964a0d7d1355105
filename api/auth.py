"""Passwords (argon2id), short-lived bearer tokens (JWT) and the current user."""

from __future__ import annotations

import time
from dataclasses import dataclass

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from api.store import Principal

_hasher = PasswordHasher()  # argon2id with the library's current recommended parameters
# Verified when the user does not exist, so a missing account takes as long as a wrong password.
_DUMMY_HASH = _hasher.hash("no such user")


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    try:
        return _hasher.verify(password_hash or _DUMMY_HASH, password) and password_hash is not None
    except (VerificationError, InvalidHashError):
        return False


class TokenError(ValueError):
    """A bearer token that is missing, malformed, expired or forged."""


@dataclass(frozen=True, slots=True)
class Tokens:
    secret: str
    ttl_s: int

    def issue(self, p: Principal, now: float | None = None) -> str:
        now = time.time() if now is None else now
        return jwt.encode({"sub": str(p.id), "role": p.role, "iat": int(now),
                           "exp": int(now + self.ttl_s)}, self.secret, algorithm="HS256")

    def user_id(self, token: str) -> int:
        try:
            claims = jwt.decode(token, self.secret, algorithms=["HS256"],
                                options={"require": ["sub", "exp"]})
            return int(claims["sub"])
        except (jwt.PyJWTError, ValueError, KeyError) as e:
            raise TokenError(str(e)) from e
