"""Bearer tokens, checked in one place: the optional API key and the admin token.

Both travel in `Authorization: Bearer`, so a path needs exactly one of them: `/admin/...` the admin
token (the stronger secret, never the API key) once `VAE_ADMIN_TOKEN` is set, every other guarded
path the API key. The guard (`app.http.guard`) asks `required_key` and `authorized` for every
request but the open paths; the admin routes check their token once more through `require_admin`.
The two `HTTPBearer` schemes only document this in OpenAPI (and give `/docs` its "Authorize").
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import SecretStr
from starlette.types import Scope

from app.errors import Unauthorized

ADMIN_PREFIX = "/admin"
UNAUTHORIZED = "missing or invalid API key (Authorization: Bearer <VAE_API_KEY>)"
ADMIN_UNAUTHORIZED = "missing or invalid admin token (Authorization: Bearer <VAE_ADMIN_TOKEN>)"
api_key_scheme = HTTPBearer(
    scheme_name="apiKey",
    auto_error=False,
    description="`Authorization: Bearer <VAE_API_KEY>`, on every route but the admin ones",
)
admin_token_scheme = HTTPBearer(
    scheme_name="adminToken",
    auto_error=False,
    description="`Authorization: Bearer <VAE_ADMIN_TOKEN>`, on the `/admin` routes only",
)


def bearer_value(secret: SecretStr | None) -> bytes | None:
    return secret.get_secret_value().encode() if secret is not None else None


def is_admin_path(path: str) -> bool:
    """Whether a path is under `/admin` (`/admin` itself included)."""
    return path == ADMIN_PREFIX or path.startswith(ADMIN_PREFIX + "/")


def required_key(
    path: str, api_key: bytes | None, admin_token: bytes | None
) -> tuple[bytes | None, str]:
    """The token `path` needs (None: none) and the 401's detail without it: the admin token
    under `/admin` when one is set, else the API key."""
    if admin_token is not None and is_admin_path(path):
        return admin_token, ADMIN_UNAUTHORIZED
    return api_key, UNAUTHORIZED


def authorized(scope: Scope, key: bytes) -> bool:
    """Whether the `Authorization` header is `Bearer <key>` (compared in constant time)."""
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.partition(b" ")
            return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), key)
    return False


async def require_admin(
    request: Request,
    _: Annotated[HTTPAuthorizationCredentials | None, Security(admin_token_scheme)],
) -> None:
    """The admin routes are only mounted when `VAE_ADMIN_TOKEN` is set; this checks it."""
    token = bearer_value(request.app.state.settings.admin_token)
    if token is None or not authorized(request.scope, token):
        raise Unauthorized(ADMIN_UNAUTHORIZED)
