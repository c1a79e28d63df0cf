"""Bearer-token checks: the optional API key for the API, and the admin token for /admin."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import SecretStr

from app.errors import Unauthorized

bearer = HTTPBearer(auto_error=False, description="`Authorization: Bearer <token>`")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


def _matches(credentials: HTTPAuthorizationCredentials | None, secret: SecretStr) -> bool:
    if credentials is None or credentials.scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(credentials.credentials.encode(), secret.get_secret_value().encode())


async def require_api_key(request: Request, credentials: Credentials) -> None:
    """No-op unless `VAE_API_KEY` is set; then a missing or wrong key is a 401."""
    key = request.app.state.settings.api_key
    if key is not None and not _matches(credentials, key):
        raise Unauthorized("missing or invalid API key (Authorization: Bearer <VAE_API_KEY>)")


async def require_admin(request: Request, credentials: Credentials) -> None:
    """The admin routes are only mounted when `VAE_ADMIN_TOKEN` is set; this checks it."""
    token = request.app.state.settings.admin_token
    if token is None or not _matches(credentials, token):
        raise Unauthorized("missing or invalid admin token (Authorization: Bearer <token>)")
