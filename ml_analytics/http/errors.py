"""Errors as JSON `{"detail": "..."}` naming the problem: request validation (FastAPI's
default is a list of error objects), and the services' domain errors mapped to status
codes here, not in the services."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from ml_analytics.events import describe_errors
from ml_analytics.services.predictions import (
    BadRequest,
    Busy,
    FitTimedOut,
    ModelFailed,
    PredictionError,
    UnknownProduct,
)

STATUS_CODES: dict[type[PredictionError], int] = {
    BadRequest: 400,
    UnknownProduct: 404,
    ModelFailed: 500,
    Busy: 503,
    FitTimedOut: 504,
}


def add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        status, detail = describe_request_errors(error, request.headers.get("content-type"))
        return JSONResponse(status_code=status, content={"detail": detail})

    @app.exception_handler(PredictionError)
    async def _prediction_error(request: Request, error: PredictionError) -> JSONResponse:
        status = next((code for kind, code in STATUS_CODES.items() if isinstance(error, kind)), 400)
        return JSONResponse(
            status_code=status, content={"detail": error.detail}, headers=error.headers
        )


def describe_request_errors(
    error: RequestValidationError, content_type: str | None
) -> tuple[int, str]:
    """The status and `detail` for a request that failed validation: 415 for a body
    that was not sent as JSON (FastAPI then hands the model the raw bytes), 422 naming
    each field otherwise."""
    items = error.errors()
    whole_body = [item for item in items if tuple(item["loc"]) == ("body",)]
    if any(item["type"] == "missing" for item in whole_body):
        return 422, "request body is required: a JSON object"
    if any(item["type"] in {"model_attributes_type", "dict_type"} for item in whole_body) and (
        isinstance(whole_body[0].get("input"), bytes | str)
    ):
        sent = f"got {content_type!r}" if content_type else "none was sent"
        return 415, f"Content-Type must be application/json ({sent})"
    return 422, describe_errors(items, skip=("body", "query", "path"))
