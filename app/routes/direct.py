"""`DirectRoute`: a route served without FastAPI's per-request machinery, for the hot paths.

FastAPI resolves each route's dependencies, wraps its call in an exit stack and an exception
layer, and serialises its answer on every request; on a route whose own work is a few hundred
microseconds, that machinery cost more than the work (`docs/benchmarks.md`, "Open Inference
Protocol"). A direct route is still an `APIRoute`: matched, documented and wrapped by every
middleware like the others, its errors rendered by the app's exception handlers. Its endpoint
takes the request and the path's parameters, and returns the response; no dependency runs (the
router's are documentation only), so the endpoint starts its own deadline.
"""

from __future__ import annotations

import inspect
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute
from starlette.types import Receive, Scope, Send


class DirectRoute(APIRoute):
    """An `APIRoute` whose endpoint is called as `endpoint(request, **path_params)`."""

    def __init__(self, path: str, endpoint: Any, **kwargs: Any) -> None:
        super().__init__(path, endpoint, **kwargs)
        first, *rest = inspect.signature(endpoint).parameters.values()
        path_params = self.param_convertors
        unfilled = [p.name for p in rest if p.name not in path_params and p.default is p.empty]
        if first.name != "request" or unfilled:
            raise TypeError(
                f"{endpoint.__name__}: a direct route's endpoint takes `request`, then the path's "
                f"parameters {sorted(self.param_convertors)} (others need a default)"
            )

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.methods and scope["method"] not in self.methods:
            await super().handle(scope, receive, send)  # FastAPI's own 405
            return
        response: Response = await self.endpoint(
            Request(scope, receive, send), **scope.get("path_params", {})
        )
        await response(scope, receive, send)
