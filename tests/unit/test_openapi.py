"""The OpenAPI document (wcs/rest/openapi.json): valid OpenAPI 3.1, every path and method of the
server's resource tree documented and nothing else, every example fitting its schema, and served
at /rest-api/openapi.json."""

from __future__ import annotations

import dataclasses
import json
from typing import Any, cast

import jsonschema
import pytest
from openapi_spec_validator import validate as validate_spec
from twisted.web.resource import Resource

from tests.unit.fakes import FakeConnector
from tests.unit.openapi_doc import (
    document,
    exchanges,
    operations,
    request_examples,
    resolve,
    response_examples,
    validate,
)
from tests.unit.rest_client import Api
from wcs.config import Settings
from wcs.rest.resources import JsonEndpoint, build_site
from wcs.rtsp.pull import PullManager
from wcs.snapshot.service import SnapshotService

DOC = document()


def served_paths(resource: Resource, prefix: str = "") -> dict[str, set[str]]:
    """Path -> methods of every JsonEndpoint under `resource` (the demo pages are not the API)."""
    found: dict[str, set[str]] = {}
    for segment, child in resource.children.items():
        path = f"{prefix}/{segment.decode()}"
        if path == "/demo":
            continue
        if isinstance(child, JsonEndpoint):
            found[path] = set(child.methods)
        else:
            found.update(served_paths(child, path))
    return found


def full_site() -> Any:
    api = Api()
    pulls = PullManager(api.hub, api.clock, connector=FakeConnector())
    return build_site(
        api.settings, api.hub, cast(SnapshotService, api.snapshots), api.clock, pulls=pulls
    )


def test_the_document_is_valid_openapi_3_1() -> None:
    assert DOC["openapi"].startswith("3.1.")
    validate_spec(DOC)


def test_every_served_path_and_method_is_documented_and_nothing_else() -> None:
    served = served_paths(full_site().resource)
    documented: dict[str, set[str]] = {}
    for path, method, _ in operations(DOC):
        documented.setdefault(path, set()).add(method)
    assert documented == served
    assert "/rest-api/rtsp/startup" in served and "/api/frame.jpeg" in served


def test_every_operation_has_an_id_examples_and_its_errors() -> None:
    ids = [op["operationId"] for _, _, op in operations(DOC)]
    assert len(ids) == len(set(ids))
    for path, method, op in operations(DOC):
        statuses = {int(s) for s in op["responses"]}
        assert any(200 <= s < 300 for s in statuses), (method, path)
        assert list(response_examples(DOC, op)), f"{method} {path} has no example"
        if path != "/rest-api/openapi.json":
            assert 401 in statuses, (method, path)
        if op.get("parameters") or "requestBody" in op:
            assert 400 in statuses and request_examples(DOC, op), (method, path)
        for status, response in op["responses"].items():
            if int(status) >= 400:
                schema = resolve(DOC, response)["content"]["application/json"]["schema"]
                assert resolve(DOC, schema) in (
                    DOC["components"]["schemas"]["Error"],
                    DOC["components"]["schemas"]["SnapshotError"],
                ), (method, path, status)


def test_every_response_example_fits_its_schema() -> None:
    checked = 0
    for path, method, op in operations(DOC):
        for status, name, _, schema, value in response_examples(DOC, op):
            if value is None:  # an image, described by its summary
                continue
            try:
                validate(DOC, schema, value)
            except Exception as err:
                raise AssertionError(f"{method} {path} {status} {name}: {err}") from err
            checked += 1
    assert checked > 30


def test_every_request_body_example_fits_its_schema_unless_it_shows_a_400() -> None:
    for path, method, op in operations(DOC):
        body = op.get("requestBody")
        if body is None:
            continue
        schema = body["content"]["application/json"]["schema"]
        for name, example in body["content"]["application/json"]["examples"].items():
            status = exchanges(DOC)[(method, path, name)].status
            rooted = {**schema, "components": DOC["components"]}
            errors = list(jsonschema.Draft202012Validator(rooted).iter_errors(example["value"]))
            if status == 400:
                assert errors, f"{method} {path} {name}: a 400 example the schema accepts"
            else:
                assert not errors, f"{method} {path} {name}: {errors[0].message}"


def test_the_error_schema_is_what_the_server_sends() -> None:
    api = Api()
    response = api.call("POST", "/rest-api/stream/find", {"name": "nosuch"})
    assert response.status == 404
    validate(DOC, {"$ref": "#/components/schemas/Error"}, json.loads(response.body))


@pytest.mark.parametrize("auth", [False, True])
def test_the_document_is_served_without_credentials(auth: bool) -> None:
    settings = Settings()
    if auth:
        settings = dataclasses.replace(settings, disable_rest_auth=False, rest_auth_password="pw")
    api = Api(settings)
    response = api.call("GET", "/rest-api/openapi.json")
    assert response.status == 200
    assert response.header("Content-Type") == "application/json"
    assert response.header("Access-Control-Allow-Origin") == "*"
    assert json.loads(response.body) == DOC
    # ...and the API itself still asks for them.
    assert api.call("GET", "/rest-api/stream/find_all").status == (401 if auth else 404)


def test_the_document_answers_get_only() -> None:
    response = Api().call("POST", "/rest-api/openapi.json", {})
    assert response.status == 405
    assert response.header("Allow") == "GET"
