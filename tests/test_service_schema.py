"""Schemathesis against the running service's own OpenAPI schema: requests generated from it
for every operation (valid and invalid: odd parameters, bodies that are not images...) never
get a server error, and answers match what the schema documents for their status."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance

from conftest import make_dataset
from service_util import bearer, running_service

WRITE = "schema-write-token"
EXAMPLES = 15  # per operation: the whole file stays well under a minute on 2 cores
# No 5xx; and where the schema documents the status, the body (error JSON included) and its
# content type match it. Not checked: that a "schema-valid" body is accepted -- the schema
# cannot say that an upload must be a real photo.
CHECKS = [not_a_server_error, response_schema_conformance, content_type_conformance]


@pytest.fixture(scope="module")
def service(toy_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from vitrina.faces.gallery import Gallery
    from vitrina.faces.pipeline import FacePipeline
    from vitrina.search import Index
    from vitrina.service import ServiceConfig

    root = tmp_path_factory.mktemp("schema")
    data = make_dataset(root / "data", per_class=2)
    Index.build(data, root / "ix", model=str(toy_run), backend="eager", device="cpu").close()
    Gallery.for_pipeline(root / "g", FacePipeline())
    config = ServiceConfig(
        model=str(toy_run),
        index=str(root / "ix"),
        gallery=str(root / "g"),
        token="schema-read-token",
        write_token=WRITE,  # the tests use it: every operation, writes included, is reachable
        backend="eager",
        device="cpu",
    )
    with running_service(config) as url:
        yield url


@pytest.fixture(scope="module")
def api_schema(service: str):
    return schemathesis.openapi.from_url(f"{service}/openapi.json", headers=bearer(WRITE))


OPERATIONS = [
    ("GET", "/healthz"),
    ("POST", "/v1/classify"),
    ("POST", "/v1/search"),
    ("GET", "/v1/search/items/{id}/thumbnail"),
    ("POST", "/v1/faces/identify"),
    ("POST", "/v1/faces/enroll"),
    ("GET", "/v1/faces/people"),
    ("DELETE", "/v1/faces/people/{name}"),
    ("POST", "/v1/detect"),
    ("GET", "/metrics"),
]


def test_schema_is_valid_and_lists_every_endpoint(service: str) -> None:
    import httpx

    doc = httpx.get(f"{service}/openapi.json", headers=bearer(WRITE)).json()
    assert doc["openapi"].startswith("3.")
    listed = {(m.upper(), path) for path, item in doc["paths"].items() for m in item}
    assert listed == set(OPERATIONS)


# Operations that take no input have no invalid requests to make.
WITHOUT_INPUT = {("GET", "/healthz"), ("GET", "/v1/faces/people"), ("GET", "/metrics")}
CASES = [(m, p, GenerationMode.POSITIVE) for m, p in OPERATIONS] + [
    (m, p, GenerationMode.NEGATIVE) for m, p in OPERATIONS if (m, p) not in WITHOUT_INPUT
]


# schemathesis' own pytest integration (``@schema.parametrize`` with a lazy fixture schema)
# breaks on pytest 9; its strategies under plain hypothesis do the same work.
@pytest.mark.parametrize(("method", "path", "mode"), CASES)
def test_generated_requests_get_no_server_error(
    api_schema, method: str, path: str, mode: GenerationMode
) -> None:
    operation = api_schema[path][method]
    statuses: list[int] = []

    @given(case=operation.as_strategy(mode))
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,  # the same examples on every run: a failure is reproducible
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def check(case) -> None:
        response = case.call_and_validate(headers=bearer(WRITE), checks=CHECKS, timeout=30)
        statuses.append(response.status_code)

    check()
    # The requests got past the token check: the endpoint itself answered them.
    assert statuses and not set(statuses) <= {401, 403}, statuses
