"""The JSON shapes of the HTTP API (they make the OpenAPI schema at ``/openapi.json``)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

__all__ = [
    "ERROR_RESPONSES",
    "ClassifyResponse",
    "DetectBox",
    "DetectResponse",
    "DetectedObject",
    "EnrollResponse",
    "ErrorResponse",
    "FaceBox",
    "ForgetResponse",
    "Health",
    "IdentifiedFace",
    "IdentifyResponse",
    "PeopleResponse",
    "PersonSummary",
    "SearchHit",
    "SearchResponse",
    "TopClass",
]


class ErrorDetail(BaseModel):
    status: int = Field(description="The HTTP status again.")
    code: str = Field(description="Short snake_case code, e.g. `bad_image`, `too_large`.")
    message: str = Field(description="One line for people.")


class ErrorResponse(BaseModel):
    error: ErrorDetail


class Health(BaseModel):
    status: str = Field(description="`ok`, or `degraded` when a configured component is gone.")
    model: str | None = None
    index: str | None = None
    gallery: str | None = None
    detector: str | None = None
    version: str


class TopClass(BaseModel):
    label: str
    probability: float


class ClassifyResponse(BaseModel):
    label: str
    confidence: float
    top: list[TopClass]
    model: str
    backend: str = Field(description="The inference backend that ran (eager, onnx, bf16...).")


class SearchHit(BaseModel):
    rank: int
    id: int = Field(description="Item id: `GET /v1/search/items/{id}/thumbnail` shows it.")
    name: str = Field(description="File name of the indexed photo (no folder).")
    label: str | None = Field(description="Its folder when indexed, or null.")
    similarity: float | None
    distance: float


class SearchResponse(BaseModel):
    hits: list[SearchHit]
    model: str


class FaceBox(BaseModel):
    left: int
    top: int
    right: int
    bottom: int


class IdentifiedFace(BaseModel):
    box: FaceBox
    detector: str = Field(
        default="", description='What found the face: "hog", "cnn" or a cascade stage.'
    )
    name: str = Field(description='The person, or "unknown".')
    distance: float | None = Field(description="Distance to the nearest enrolled person.")
    threshold: float
    calibrated: bool


class IdentifyResponse(BaseModel):
    faces: list[IdentifiedFace]
    threshold_source: str


class DetectBox(BaseModel):
    left: float
    top: float
    right: float = Field(description="Exclusive, like bottom: the box is right - left wide.")
    bottom: float


class DetectedObject(BaseModel):
    label: str
    class_index: int
    score: float
    box: DetectBox = Field(description="In the uploaded photo's own pixels.")


class DetectResponse(BaseModel):
    boxes: list[DetectedObject] = Field(description="Best score first.")
    width: int = Field(description="The photo's width, as displayed (EXIF rotation applied).")
    height: int
    min_score: float = Field(description="The floor applied to the scores.")
    detector: str
    backend: str
    flip: bool = Field(
        description="Whether the photo was also looked at mirrored and the answers fused "
        "(`vitrina serve --flip`)."
    )
    scales: list[float] = Field(
        description="The multiples of the detector's input size the photo was looked at, "
        "the answers fused (`vitrina serve --scales`; [1.0]: its own size only)."
    )


class EnrollResponse(BaseModel):
    name: str
    added: int = Field(description="Templates added (0 or 1: one face per photo).")
    already: int = Field(description="1 when this photo was enrolled before (to anyone).")
    new_person: bool


class PersonSummary(BaseModel):
    name: str
    templates: int


class PeopleResponse(BaseModel):
    people: list[PersonSummary]


class ForgetResponse(BaseModel):
    name: str
    templates: int = Field(description="Templates removed.")


def _err(description: str) -> dict[str, Any]:
    return {"model": ErrorResponse, "description": description}


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: _err("Not a readable image, or a bad name."),
    401: _err("Missing or wrong bearer token."),
    403: _err("The token may not do this."),
    404: _err("Not configured, or no such item."),
    409: _err("The gallery refuses the change (e.g. a name differing only by case)."),
    413: _err("Upload over the size limit."),
    422: _err("Invalid request, or (enroll) no face in the photo."),
    503: _err("A configured component (the gallery) became unavailable."),
    507: _err("(enroll, forget) No space left on the gallery's disk: nothing saved, retry."),
}
