"""The OpenAPI document as the tests read it: its operations, JSON Schema validation of a value
against one of its schemas, and its named examples (a request example and the response example
of the same name make one exchange)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import jsonschema

from wcs.rest.resources import openapi_document

METHODS = ("get", "post", "put", "delete", "patch", "head", "options")


def document() -> dict[str, Any]:
    return openapi_document()


def operations(doc: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(path, METHOD, operation) of every operation."""
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if method in METHODS:
                yield path, method.upper(), op


def resolve(doc: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    """`node`, or what its local $ref names."""
    while "$ref" in node and len(node) == 1:
        ref = node["$ref"]
        assert ref.startswith("#/"), ref
        target: Any = doc
        for part in ref[2:].split("/"):
            target = target[part]
        node = target
    return node


def validate(doc: dict[str, Any], schema: dict[str, Any], value: object) -> None:
    """Raise jsonschema.ValidationError unless `value` fits `schema` (a schema of `doc`, whose
    $refs resolve against the document's components)."""
    rooted = {**schema, "components": doc["components"]}
    jsonschema.Draft202012Validator(rooted).validate(value)


@dataclass
class Exchange:
    """One named example of an operation: what to send, and which documented status answers."""

    path: str
    method: str
    name: str
    status: int
    query: dict[str, object] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    body: object = None


def response_examples(
    doc: dict[str, Any], op: dict[str, Any]
) -> Iterator[tuple[int, str, str, dict[str, Any], object]]:
    """(status, name, media type, schema, value) of every response example of `op` (value None:
    an example described by its summary only, e.g. an image)."""
    for status, response in op["responses"].items():
        response = resolve(doc, response)
        for media_type, media in response.get("content", {}).items():
            for name, example in media.get("examples", {}).items():
                yield int(status), name, media_type, media["schema"], example.get("value")


def request_examples(doc: dict[str, Any], op: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Name -> {"query": ..., "headers": ..., "body": ...} of the request examples of `op`."""
    named: dict[str, dict[str, Any]] = {}
    for param in op.get("parameters", []):
        param = resolve(doc, param)
        where = {"query": "query", "header": "headers"}[param["in"]]
        for name, example in param.get("examples", {}).items():
            named.setdefault(name, {}).setdefault(where, {})[param["name"]] = example["value"]
    body = op.get("requestBody")
    if body is not None:
        for media in body["content"].values():
            for name, example in media.get("examples", {}).items():
                named.setdefault(name, {})["body"] = example["value"]
    return named


def exchanges(doc: dict[str, Any]) -> dict[tuple[str, str, str], Exchange]:
    """(METHOD, path, name) -> Exchange, for every request example (its status: the response
    with an example of the same name) and every operation without inputs (one per response
    example name)."""
    out: dict[tuple[str, str, str], Exchange] = {}
    for path, method, op in operations(doc):
        statuses: dict[str, int] = {}
        for status, name, _, _, _ in response_examples(doc, op):
            assert statuses.setdefault(name, status) == status, (path, method, name)
        requests = request_examples(doc, op)
        has_inputs = bool(op.get("parameters")) or "requestBody" in op
        for name, request in requests.items():
            assert name in statuses, f"{method} {path}: request example {name!r} has no response"
            out[(method, path, name)] = Exchange(
                path,
                method,
                name,
                statuses[name],
                request.get("query", {}),
                request.get("headers", {}),
                request.get("body"),
            )
        if not has_inputs:
            for name, status in statuses.items():
                out[(method, path, name)] = Exchange(path, method, name, status)
    return out
