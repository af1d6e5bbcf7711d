"""The OpenAPI description comes from the models that validate requests and shape answers
(`receiver.contract`), documents every `/v1` route both ways, and shows each configured
provider's callback bodies; the models' refusals name the field and what it must be."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any, get_args

import pytest

from receiver import contract
from receiver.app import create_app
from receiver.contract import validated
from receiver.errors import MalformedBody, Unprocessable
from schemas.states import State
from schemas.store import Task
from schemas.store.keys import KeyScope
from schemas.wire.examples import callback_states
from schemas.wire.formats import scheme_of
from tests.support.service import settings_for

WRITES = {"post", "patch", "put"}
# Writes that take no body: what they act on is in the path or the query.
WITHOUT_BODY = {
    ("post", "/v1/endpoints/{id}/recover"),
    ("post", "/v1/messages/{msg_id}/retry"),
}


@pytest.fixture
def described(tmp_path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    settings = settings_for(f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}")
    kinds = {name: provider.kind for name, provider in settings.providers.items()}
    return create_app(settings).state.openapi, kinds


def v1_operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method, path, operation)
        for path, item in document["paths"].items()
        if path.startswith("/v1/")
        for method, operation in item.items()
    ]


def test_components_are_the_contracts_types(described: tuple[dict[str, Any], Any]) -> None:
    document, _ = described
    assert document["components"]["schemas"] == contract.component_schemas()
    for kind in (*contract.REQUESTS, *contract.ANSWERS):
        assert kind.__name__ in document["components"]["schemas"]


def test_every_v1_route_documents_its_request_and_its_answer(
    described: tuple[dict[str, Any], Any],
) -> None:
    document, _ = described
    operations = v1_operations(document)
    assert len(operations) >= 20
    for method, path, operation in operations:
        if method in WRITES and (method, path) not in WITHOUT_BODY:
            body = operation["requestBody"]["content"]["application/json"]["schema"]
            assert body["$ref"].startswith("#/components/schemas/"), (method, path)
        success = [code for code in operation["responses"] if code in {"200", "201"}]
        assert success or "204" in operation["responses"], (method, path)
        for code in success:
            content = operation["responses"][code]["content"]
            assert all("schema" in media or media == {} for media in content.values()), path


def test_every_provider_shows_its_callback_bodies_where_they_arrive(
    described: tuple[dict[str, Any], dict[str, Any]],
) -> None:
    document, kinds = described
    routes = {
        "standard-webhooks": document["paths"]["/webhooks/{source}"]["post"],
        "url-token": document["paths"]["/callbacks/{provider}/{token}"]["post"],
    }
    for name, kind in kinds.items():
        operation = routes.get(scheme_of(kind), routes["url-token"])
        examples = operation["requestBody"]["content"]["application/json"]["examples"]
        for state in (State.SUCCEEDED, State.FAILED):
            if state in callback_states(kind):
                example = examples[f"{name}-{state.value}"]
                assert isinstance(example["value"], dict), name
                assert example["value"], name
        enum = operation["parameters"][0]["schema"]["enum"]
        assert name in enum


def test_the_task_answer_shows_every_column_but_the_lease_and_authority() -> None:
    hidden = {"authority", "lease_owner", "lease_until"}
    columns = [f.name for f in fields(Task) if f.name not in hidden]
    assert list(contract.Task.__annotations__) == [*columns, "callback_url"]


def test_key_scopes_are_the_stores() -> None:
    assert set(get_args(contract.Scope)) == {scope.value for scope in KeyScope}


def test_an_unknown_field_is_400_naming_the_allowed_ones() -> None:
    with pytest.raises(MalformedBody) as refused:
        validated(contract.NewTask, {"provider": "apidot", "colour": "red"})
    assert "'colour'" in str(refused.value)
    assert "allowed: provider, owner, model, request, provider_task_id, submit" in str(
        refused.value
    )


@pytest.mark.parametrize(
    ("model", "body", "says"),
    [
        (contract.NewTask, {}, "provider is required"),
        (contract.NewTask, {"provider": "apidot", "submit": "yes"}, "submit must be true or"),
        (contract.NewTask, {"provider": "apidot", "owner": "x" * 201}, "owner must be a string"),
        (contract.NewTask, {"provider": "apidot", "owner": "a\x00b"}, "no NUL"),
        (contract.NewTask, {"provider": "apidot", "request": [1]}, "request must be a JSON"),
        (contract.NewKey, {"name": "ci", "scope": "root"}, "scope must be one of: read, write"),
        (contract.EndpointChanges, {}, "name at least one field to change: url"),
        (contract.Rotation, {"grace_seconds": -1}, "grace_seconds must be a number from 0"),
        (contract.NewEndpoint, {"url": "https://x.example", "owners": []}, "owners must be null"),
    ],
)
def test_a_wrong_value_is_422_naming_the_field(
    model: type[contract.NewTask], body: dict[str, Any], says: str
) -> None:
    with pytest.raises(Unprocessable) as refused:
        validated(model, body)
    assert says in str(refused.value)


def test_json_types_are_strict() -> None:
    """A string is no number and 1 no boolean: what a client sent is what it meant."""
    with pytest.raises(Unprocessable):
        validated(contract.Rotation, {"grace_seconds": "60"})
    with pytest.raises(Unprocessable):
        validated(contract.NewEndpoint, {"url": "https://x.example", "enabled": 1})
    assert validated(contract.Rotation, {"grace_seconds": 60}).grace_seconds == 60
