"""Shapes shared by every endpoint: the base model and OpenAI's error envelope."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class OpenAIBaseModel(BaseModel):
    """Strict about unknown keys (a test that parses a response fails on a stray field)."""

    model_config = ConfigDict(extra="forbid")


class ErrorObject(OpenAIBaseModel):
    """openai-python ``ErrorObject``: all four keys are always present."""

    message: str = Field(description="Human-readable; names the parameter and the bound.")
    type: str = Field(description="invalid_request_error, server_error, requests, ...")
    param: str | None = Field(description="The offending parameter, or null.")
    code: str | None = Field(description="A machine-readable string code, or null.")


class ErrorResponse(OpenAIBaseModel):
    """The body of every non-2xx JSON response."""

    error: ErrorObject


class ErrorEvent(OpenAIBaseModel):
    """The last frame of a stream that failed after its first byte (the SDK raises on it)."""

    type: Literal["error"] = "error"
    error: ErrorObject
