"""Schemathesis against a real server's /v1/openapi.json: every route, linked steps, and the one error body.

Two keys (an admin key and an agent key bound to one workspace) send schema-valid and schema-breaking
requests to every operation; a state machine follows OpenAPI links (lock -> renew / unlock / write,
create workspace -> use it, write file -> read it ...) so later steps carry real tokens, ids and versions.
Every answer must conform to the document, never be a 5xx, and every 4xx must be the one error body
with a code from the error table. The budget is fixed (examples, steps, a seed) so CI is deterministic.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import Case, CheckContext, HookContext, Response
from starlette.testclient import TestClient

from mcp_locks import ERROR_TABLE, Settings, build_app
from mcp_locks.core.keys import new_key
from mcp_locks.core.names import WORKSPACE_PATTERN

from .helpers import STEP
from .servers import serve_in_thread

pytestmark = pytest.mark.slow

#: Schema-valid and schema-breaking examples per operation and key (coverage-phase cases come on top).
EXAMPLES = 15
#: Scenarios of the state machine, and the most steps in one.
SCENARIOS = 40
STEPS = 12
SEED = 20_240_607


@dataclass(frozen=True)
class Fuzzed:
    """The server under fuzz and its keys."""

    url: str
    keys: dict[str, str]  # "admin" / "agent" -> key

    @property
    def sink(self) -> str:
        """Where fuzzed webhooks point: this server (loopback), never an address a fuzzer made up."""
        return f"{self.url}/healthz"


@contextmanager
def fuzz_server(data_dir: Path) -> Iterator[Fuzzed]:
    """A fresh server on a memory store, with a workspace 'team' and an agent key bound to 'default'."""
    admin, _ = new_key("fuzz", (), "admin", 0)
    # Loopback webhook receivers are allowed so fuzzed webhooks can point at this server and nowhere else.
    settings = Settings(store="memory", data_dir=data_dir, admin_key=admin, max_wait=1, webhooks_allow_private=True)
    with serve_in_thread(build_app(settings)) as url:
        headers = {"Authorization": f"Bearer {admin}"}
        assert httpx.post(f"{url}/v1/workspaces", json={"workspace_id": "team"}, headers=headers).status_code == 201
        made = httpx.post(f"{url}/v1/admin/keys", json={"agent": "fuzzy", "workspaces": ["default"]}, headers=headers)
        yield Fuzzed(url, {"admin": admin, "agent": made.json()["key"]})


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzzed]:
    with fuzz_server(tmp_path_factory.mktemp("fuzz")) as server:
        yield server


# ---------------------------------------------------------------------- the document, with links


def _document() -> dict[str, Any]:
    """The served OpenAPI document, built by the same code without serving it."""
    app = build_app(Settings(store="memory", insecure_no_auth=True))
    doc: dict[str, Any] = TestClient(app, base_url="http://127.0.0.1").get("/v1/openapi.json").json()
    return doc


def _body(pointer: str) -> str:
    return f"$response.body#/{pointer}"


_GRANT = {"workspace_id": _body("workspace_id"), "node_id": _body("node_id")}
_FILE = {"workspace_id": _body("file/workspace_id"), "node_id": _body("file/node_id")}
_WS = {"workspace_id": _body("workspace_id")}
_FIRST_WS = {"workspace_id": _body("workspaces/0/workspace_id")}
_UPLOAD = {**_WS, "upload_id": _body("upload_id")}
_TOKEN_HEADER = {"header.Lock-Token": _body("token")}

#: (source operationId, status) -> {link name: (target operationId, parameters, request body or None)}.
LINKS: dict[tuple[str, str], dict[str, tuple[str, dict[str, str], Any]]] = {
    ("lock", "200"): {
        "Renew": ("renew", _GRANT, {"token": _body("token")}),
        "UnlockByPath": ("unlock", {**_GRANT, "token": _body("token")}, None),
        "UnlockByHeader": ("unlock_header", {**_GRANT, **_TOKEN_HEADER}, None),
        "StillMine": ("status", {**_GRANT, **_TOKEN_HEADER}, None),
        "Relock": ("lock", _GRANT, {"token": _body("token")}),
        "ForceUnlock": ("force_unlock", {**_WS, "lock_id": _body("lock_id")}, None),
        "UnlockMany": ("unlock_files", _WS, {"tokens": [_body("token")]}),
        "Write": ("write_file", {**_GRANT, **_TOKEN_HEADER}, None),
        "Read": ("read_file", {**_GRANT, **_TOKEN_HEADER}, None),
        "Delete": ("delete_file", {**_GRANT, **_TOKEN_HEADER}, None),
        "Info": ("file_info", _GRANT, None),
        "Locks": ("list_locks", _WS, None),
    },
    ("lock_storage", "200"): {
        "Renew": ("renew_storage", {"node_id": _body("node_id")}, {"token": _body("token")}),
        "UnlockByPath": ("unlock_storage", {"node_id": _body("node_id"), "token": _body("token")}, None),
        "UnlockByHeader": ("unlock_header_storage", {"node_id": _body("node_id"), **_TOKEN_HEADER}, None),
        "StillMine": ("status_storage", {"node_id": _body("node_id"), **_TOKEN_HEADER}, None),
        "Write": ("write_file", {**_GRANT, **_TOKEN_HEADER}, None),
    },
    ("lock_files", "200"): {
        "UnlockMany": ("unlock_files", _WS, {"tokens": [_body("locks/0/token")]}),
        "Renew": ("renew", {**_WS, "node_id": _body("locks/0/node_id")}, {"token": _body("locks/0/token")}),
    },
    ("create_workspace", "201"): {
        "Lock": ("lock", _WS, None),
        "LockMany": ("lock_files", _WS, None),
        "Write": ("write_file", _WS, None),
        "Locks": ("list_locks", _WS, None),
        "Files": ("list_files", _WS, None),
        "Upload": ("create_upload", _WS, None),
        "Overview": ("overview", _WS, None),
        "Audit": ("get_audit_log", _WS, None),
        "Webhook": ("create_webhook", _WS, None),
        "Key": ("create_key", {}, {"workspaces": [_body("workspace_id")]}),
        "Delete": ("delete_workspace", _WS, None),
    },
    ("write_file", "200"): {
        "Read": ("read_file", _FILE, None),
        "WriteAgain": ("write_file", {**_FILE, "header.If-Match": "$response.header.ETag"}, None),
        "Delete": ("delete_file", {**_FILE, "query.if_version": _body("file/version")}, None),
        "Info": ("file_info", _FILE, None),
        "Lock": ("lock", _FILE, None),
    },
    ("create_upload", "201"): {
        "Chunk": ("put_chunk", _UPLOAD, None),
        "Status": ("upload_status", _UPLOAD, None),
        "Complete": ("complete_upload", _UPLOAD, None),
        "Abort": ("abort_upload", _UPLOAD, None),
    },
    ("put_chunk", "200"): {
        "Complete": ("complete_upload", _UPLOAD, None),
        "Status": ("upload_status", _UPLOAD, None),
    },
    ("list_workspaces", "200"): {
        "Lock": ("lock", _FIRST_WS, None),
        "LockMany": ("lock_files", _FIRST_WS, None),
        "Write": ("write_file", _FIRST_WS, None),
        "Upload": ("create_upload", _FIRST_WS, None),
        "Files": ("list_files", _FIRST_WS, None),
        "Locks": ("list_locks", _FIRST_WS, None),
        "Audit": ("get_audit_log", _FIRST_WS, None),
    },
    ("create_key", "201"): {"Revoke": ("revoke_key", {"key_id": _body("key_id")}, None)},
    ("create_webhook", "201"): {"Delete": ("delete_webhook", {**_WS, "webhook_id": _body("webhook_id")}, None)},
}
LINKS[("write_file", "201")] = LINKS[("write_file", "200")]


def with_links(doc: dict[str, Any]) -> dict[str, Any]:
    """``doc`` with the OpenAPI links of :data:`LINKS` added to its responses."""
    doc = copy.deepcopy(doc)
    by_id = {op["operationId"]: op for methods in doc["paths"].values() for op in methods.values()}
    for (source, status), links in LINKS.items():
        response = by_id[source]["responses"][status]
        response["links"] = {
            name: {"operationId": target, "parameters": params, **({"requestBody": body} if body else {})}
            for name, (target, params, body) in links.items()
        }
    return doc


# ---------------------------------------------------------------------- checks


def error_body(ctx: CheckContext, response: Response, case: Case) -> bool | None:
    """No traceback ever; every 4xx/5xx is the one error body, with a code from the table and its status."""
    assert "Traceback" not in response.text, response.text[:500]
    assert 'File "' not in response.text, response.text[:500]
    if response.status_code < 400:
        return None
    err = response.json()["error"]
    assert err["code"] in ERROR_TABLE, err
    assert ERROR_TABLE[err["code"]].http_status == response.status_code, err
    assert isinstance(err["message"], str), err
    assert err["message"], err
    assert isinstance(err["hint"], str), err
    assert isinstance(err["details"], dict), err
    return None


def _config(examples: int) -> schemathesis.Config:
    return schemathesis.Config.from_dict(
        {
            "seed": SEED,
            "request-timeout": STEP,
            # The key is sent by the tests (admin or agent); test_auth.py covers missing and bad keys.
            "generation": {
                "max-examples": examples,
                "deterministic": True,
                "database": "none",
                "with-security-parameters": False,
            },
            "checks": {
                # The request schemas do not carry the service's configurable bounds (lease and wait
                # limits, name rules), so a schema-valid body may get INVALID_ARGUMENT naming the field;
                # error_body checks that answer instead.
                "positive_data_acceptance": {"enabled": False},
            },
            "phases": {"stateful": {"max-steps": STEPS}},
        }
    )


def _safe(case: Case, fuzzed: Fuzzed) -> None:
    """Keep every request on loopback: a fuzzed webhook URL would make the server call out."""
    webhook = case.operation.definition.raw.get("operationId") == "create_webhook"
    if webhook and isinstance(case.body, dict) and "url" in case.body:
        case.body["url"] = fuzzed.sink


DOC = with_links(_document())
# The event stream never ends by itself: test_every_event_stream_answer_is_a_stream_or_a_coded_error covers it.
schema = schemathesis.openapi.from_dict(DOC, config=_config(EXAMPLES)).exclude(operation_id="events")


@schema.hook
def flatmap_path_parameters(context: HookContext, path_parameters: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Mostly workspaces that exist, so requests get past the name check into the service."""
    drawn = (path_parameters or {}).get("workspace_id")
    if not isinstance(drawn, str) or not re.fullmatch(WORKSPACE_PATTERN, drawn):
        return st.just(path_parameters)  # none, or a bad one on purpose (a schema-breaking case): kept
    return st.sampled_from(["default", "team", drawn]).map(lambda ws: {**path_parameters, "workspace_id": ws})


@schema.hook
def flatmap_body(context: HookContext, body: Any) -> st.SearchStrategy[Any]:
    """Half the time a lease and a wait the server takes, so lock calls get granted and later steps run.

    The schema allows any number there, so this never turns a schema-breaking body into a valid one.
    """
    if not isinstance(body, dict) or not any(isinstance(body.get(k), int | float) for k in ("timeout", "wait")):
        return st.just(body)
    sane = {k: v for k, v in (("timeout", 60), ("wait", 0)) if isinstance(body.get(k), int | float)}
    return st.sampled_from([body, {**body, **sane}])


#: Header values a generator rarely makes: digits int() refuses, huge numbers, ETag forms, a token's shape.
HOSTILE_HEADERS = ["\xb2", "9" * 5000, '"' + "9" * 5000 + '-x"', 'W/"1-abc"', '"1-abc"', "*", "mlt_" + "A" * 43]


@schema.hook
def flatmap_headers(context: HookContext, headers: dict[str, Any] | None) -> st.SearchStrategy[Any]:
    """Often a hostile value in a header the operation takes and the server parses (a string: schema-valid)."""
    declared = {p.name for p in context.operation.headers} if context.operation is not None else set()
    parsed = sorted(declared & {"If-Match", "If-None-Match", "Lock-Token", "Last-Event-ID"})
    if not parsed:
        return st.just(headers)
    hostile = st.tuples(st.sampled_from(parsed), st.sampled_from(HOSTILE_HEADERS))
    return st.one_of(hostile.map(lambda kv: {**(headers or {}), kv[0]: kv[1]}), st.just(headers))


# ---------------------------------------------------------------------- the tests


@pytest.mark.parametrize("who", ["admin", "agent"])
@schema.parametrize()
@settings(deadline=None, suppress_health_check=list(HealthCheck))
def test_every_operation_answers_valid_and_invalid_requests_per_its_schema(
    case: Case, fuzzed: Fuzzed, who: str
) -> None:
    _safe(case, fuzzed)
    case.call_and_validate(
        base_url=fuzzed.url, headers={"Authorization": f"Bearer {fuzzed.keys[who]}"}, additional_checks=[error_body]
    )


@pytest.mark.timeout(120)
@pytest.mark.parametrize("who", ["admin", "agent"])
def test_linked_operations_keep_their_promises_across_steps(tmp_path: Path, who: str) -> None:
    class Workflow(schema.as_state_machine()):  # type: ignore[misc]
        """Each scenario on a fresh server: a replayed step then meets the state it met the first time."""

        def setup(self) -> None:
            self.stack = ExitStack()
            self.server = self.stack.enter_context(fuzz_server(tmp_path))

        def teardown(self) -> None:
            self.stack.close()

        def before_call(self, case: Case) -> None:
            _safe(case, self.server)

        def get_call_kwargs(self, case: Case) -> dict[str, Any]:
            return {"base_url": self.server.url, "headers": {"Authorization": f"Bearer {self.server.keys[who]}"}}

        def validate_response(
            self, response: Response, case: Case, additional_checks: Any = None, **kwargs: Any
        ) -> None:
            super().validate_response(response, case, additional_checks=[error_body], **kwargs)

    Workflow.run(
        settings=settings(
            max_examples=SCENARIOS,
            stateful_step_count=STEPS,
            phases=[Phase.generate],  # no shrinking: a failure prints its steps as they were sent
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
    )


@settings(max_examples=30, deadline=None, derandomize=True, database=None)
@given(
    who=st.sampled_from(["admin", "agent"]),
    workspace=st.sampled_from(["default", "team", "nope", "BAD", "x" * 64]),
    last=st.none() | st.sampled_from(["0", "1", "-1", "1e3", "9" * 20, "3 3", "abc", "0x10", "\u0663", "\x00"]),
    in_query=st.booleans(),
)
def test_every_event_stream_answer_is_a_stream_or_a_coded_error(
    fuzzed: Fuzzed, who: str, workspace: str, last: str | None, in_query: bool
) -> None:
    headers = {"Authorization": f"Bearer {fuzzed.keys[who]}"}
    params = {}
    if last is not None and (in_query or not last.isascii() or not last.isprintable()):
        params["after"] = last  # a header cannot carry it
    elif last is not None:
        headers["Last-Event-ID"] = last
    url = f"{fuzzed.url}/v1/workspaces/{workspace}/events"
    with httpx.stream("GET", url, headers=headers, params=params, timeout=STEP) as r:
        if r.status_code == 200:
            assert r.headers["content-type"].startswith("text/event-stream")
            return  # a stream that opened never ends by itself: its headers are the answer
        r.read()
    err = r.json()["error"]
    assert ERROR_TABLE[err["code"]].http_status == r.status_code, err
    assert err["code"] != "INTERNAL", err
