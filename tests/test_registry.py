"""server.json, what the official MCP registry publishes about this server, stays valid and true to the code.

The registry's own schema is vendored in tests/fixtures/registry/ (see its README for where it comes from),
so this runs offline. Beyond the schema: the versions are pyproject's, every command and environment
variable it names is one the code has and reads, and the README carries the ``mcp-name:`` line the
registry looks for on PyPI to prove the package belongs to this server name.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from mcp_locks.cli.main import COMMANDS
from mcp_locks.settings import Settings

ROOT = Path(__file__).parent.parent
SCHEMA = Path(__file__).parent / "fixtures" / "registry" / "server.schema.json"
#: How the code reads an environment variable: a click option's envvar, or os.environ.
ENV_READ = re.compile(r'(?:envvar=|environ\.get\(|environ\[|getenv\()"(MCP_LOCKS_[A-Z0-9_]+)"')
PLACEHOLDER = re.compile(r"\{([^{}]+)\}")


@pytest.fixture(scope="module")
def server() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((ROOT / "server.json").read_text(encoding="utf-8"))
    return doc


@pytest.fixture(scope="module")
def project() -> dict[str, Any]:
    doc: dict[str, Any] = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return doc


def env_vars_read_by_the_code() -> set[str]:
    """Every MCP_LOCKS_* variable the server or the CLI reads: the settings' and those read by name."""
    names = {f"MCP_LOCKS_{field.upper()}" for field in Settings.model_fields}
    for path in (ROOT / "mcp_locks").rglob("*.py"):
        names.update(ENV_READ.findall(path.read_text(encoding="utf-8")))
    return names


def test_server_json_is_valid_under_the_registrys_schema(server: dict[str, Any]) -> None:
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    validator_class = jsonschema.validators.validator_for(schema)
    assert validator_class is jsonschema.Draft7Validator  # the dialect its "$schema" names
    validator_class.check_schema(schema)
    validator_class(schema, format_checker=validator_class.FORMAT_CHECKER).validate(server)
    assert server["$schema"] == schema["$id"], "server.json names another schema than the one vendored"


def test_the_versions_and_package_are_pyprojects(server: dict[str, Any], project: dict[str, Any]) -> None:
    assert server["version"] == project["version"]
    for package in server["packages"]:
        assert (package["registryType"], package["identifier"]) == ("pypi", project["name"])
        assert package["version"] == project["version"]
    # uvx runs the package's console script of the same name.
    assert "mcp-locks" in project["scripts"]


def test_the_name_is_in_the_namespace_of_the_repositorys_owner(server: dict[str, Any]) -> None:
    # The registry lets only the GitHub owner publish under io.github.<owner>/.
    owner = re.fullmatch(r"https://github\.com/([^/]+)/[^/]+", server["repository"]["url"])
    assert owner is not None
    assert server["name"].startswith(f"io.github.{owner.group(1)}/")


def test_it_offers_stdio_through_the_bridge_and_streamable_http_from_the_server(server: dict[str, Any]) -> None:
    runs = {p["transport"]["type"]: [a["value"] for a in p["packageArguments"]] for p in server["packages"]}
    assert runs == {"stdio": ["stdio"], "streamable-http": ["serve"]}
    for args in runs.values():
        assert args[0] in COMMANDS, f"mcp-locks has no command {args[0]!r}"
    http = next(p["transport"] for p in server["packages"] if p["transport"]["type"] == "streamable-http")
    assert http["url"].endswith("/mcp")


def test_every_environment_variable_named_is_one_the_code_reads(server: dict[str, Any]) -> None:
    read = env_vars_read_by_the_code()
    named = {v["name"] for p in server["packages"] for v in p.get("environmentVariables", [])}
    assert {"MCP_LOCKS_URL", "MCP_LOCKS_KEY"} <= named
    assert named <= read, f"named in server.json but never read: {sorted(named - read)}"


def test_every_placeholder_refers_to_something_declared(server: dict[str, Any]) -> None:
    for package in server["packages"]:
        env = {v["name"] for v in package.get("environmentVariables", [])}
        transport = package["transport"]
        assert set(PLACEHOLDER.findall(transport.get("url", ""))) <= env
        for header in transport.get("headers", []):
            assert set(PLACEHOLDER.findall(header.get("value", ""))) <= set(header.get("variables", {}))


def test_the_readme_carries_the_mcp_name_line_the_registry_checks_on_pypi(server: dict[str, Any]) -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert f"mcp-name: {server['name']}" in readme, f"add the line 'mcp-name: {server['name']}' to README.md"
