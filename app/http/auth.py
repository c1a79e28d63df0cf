"""Bearer tokens, checked in one place: the optional API key and the admin token.

The guard (`app.http.guard`) asks `authorized` for every request but the open paths; the admin
routes add their own token through `require_admin`. `api_key_scheme` only documents the scheme in
OpenAPI, so `/docs` offers an "Authorize" button.
"""

from __future__ import annotations

import hmac

from fastapi import Request
from fastapi.security import HTTPBearer
from pydantic import SecretStr
from starlette.types import Scope

from app.errors import Unauthorized

UNAUTHORIZED = "missing or invalid API key (Authorization: Bearer <VAE_API_KEY>)"
ADMIN_UNAUTHORIZED = "missing or invalid admin token (Authorization: Bearer <token>)"
api_key_scheme = HTTPBearer(auto_error=False, description="`Authorization: Bearer <token>`")


def bearer_value(secret: SecretStr | None) -> bytes | None:
    return secret.get_secret_value().encode() if secret is not None else None


def authorized(scope: Scope, key: bytes) -> bool:
    """Whether the `Authorization` header is `Bearer <key>` (compared in constant time)."""
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.partition(b" ")
            return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), key)
    return False


async def require_admin(request: Request) -> None:
    """The admin routes are only mounted when `VAE_ADMIN_TOKEN` is set; this checks it."""
    token = bearer_value(request.app.state.settings.admin_token)
    if token is None or not authorized(request.scope, token):
        raise Unauthorized(ADMIN_UNAUTHORIZED)
