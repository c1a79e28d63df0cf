"""The bundled MNIST test digits, to try the API without drawing anything."""

from __future__ import annotations

from fastapi import APIRouter, Response

from app.routes.deps import ExamplesDep
from app.routes.openapi import PNG_RESPONSE, error, errors
from app.routes.responses import png_response
from app.schemas import Example, ExamplesResponse

router = APIRouter(tags=["examples"])


@router.get("/examples", response_model=ExamplesResponse)
async def list_examples(examples: ExamplesDep) -> ExamplesResponse:
    """Ids are `<label>-<k>`; use them as `?example=` on /encode or in /interpolate."""
    return ExamplesResponse(
        examples=[Example(id=e.id, label=e.label, url=f"/examples/{e.id}.png") for e in examples]
    )


@router.get(
    "/examples/{example_id}.png",
    response_class=Response,
    responses={**PNG_RESPONSE, **error(404), **errors(422)},
)
async def example_png(example_id: str, examples: ExamplesDep) -> Response:
    """The 28x28 original, as stored."""
    return png_response(examples.get(example_id).png)
