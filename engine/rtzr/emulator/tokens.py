"""Access tokens for the emulator, sans-IO: issue, check, expire (time is passed in).

Times are on Trio's clock (so MockClock tests can expire a token); ``expire_at`` on the wire is
epoch seconds, obtained by adding a fixed ``epoch_offset`` captured when the emulator starts.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Mapping
from urllib.parse import parse_qsl

import msgspec
from msgspec import Struct


class AuthResponse(Struct, kw_only=True):
    access_token: str
    expire_at: int


class AuthError(Struct, kw_only=True):
    code: str
    msg: str


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenStore:
    """Issued tokens and their expiry; a bounded dict (expired ones are purged on issue)."""

    MAX_TOKENS = 100_000

    def __init__(self, *, lifetime_s: float, client_id: str | None, client_secret: str | None,
                 epoch_offset: float) -> None:
        self.lifetime_s = lifetime_s
        self.client_id = client_id
        self.client_secret = client_secret
        self.epoch_offset = epoch_offset
        self._expiry: dict[str, float] = {}

    def authenticate(self, form: Mapping[str, str], now: float) -> tuple[int, bytes]:
        """Handle the form of ``POST /v1/authenticate``: (status, JSON body)."""
        cid, secret = form.get("client_id", ""), form.get("client_secret", "")
        if not cid or not secret:
            return 400, msgspec.json.encode(AuthError(code="H0001", msg="client_id and client_secret are required"))
        if self.client_id is not None and self.client_secret is not None and (
            not secrets.compare_digest(cid.encode(), self.client_id.encode())
            or not secrets.compare_digest(secret.encode(), self.client_secret.encode())
        ):
            return 401, msgspec.json.encode(AuthError(code="H0002", msg="invalid client credentials"))
        token, expire_at = self.issue(cid, now)
        return 200, msgspec.json.encode(AuthResponse(access_token=token, expire_at=expire_at))

    def issue(self, subject: str, now: float) -> tuple[str, int]:
        if len(self._expiry) >= self.MAX_TOKENS:
            self._expiry = {t: e for t, e in self._expiry.items() if e > now}
        expires = now + self.lifetime_s
        expire_at = int(self.epoch_offset + expires)
        header = _b64(b'{"alg":"HS256","typ":"JWT"}')
        payload = _b64(msgspec.json.encode({"sub": subject[:64], "exp": expire_at, "iss": "sori-emulator",
                                            "jti": secrets.token_hex(8)}))
        token = f"{header}.{payload}.{_b64(secrets.token_bytes(32))}"
        self._expiry[token] = expires
        return token, expire_at

    def check(self, authorization: str | None, now: float) -> str | None:
        """None if the Authorization header holds a live token, else the reason for a 401."""
        if not authorization:
            return "missing Authorization header"
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return "Authorization must be 'Bearer <token>'"
        expires = self._expiry.get(token.strip())
        if expires is None:
            return "unknown token"
        if now >= expires:
            return "token expired"
        return None


def parse_form(body: bytes) -> dict[str, str]:
    """URL-encoded form body → dict (first value wins); junk yields an empty dict (a 400)."""
    try:
        return dict(reversed(parse_qsl(body.decode("utf-8"), keep_blank_values=True, max_num_fields=16)))
    except (UnicodeDecodeError, ValueError):
        return {}
