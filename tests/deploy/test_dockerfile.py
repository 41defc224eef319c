"""The Dockerfile and .dockerignore, read as text and checked against the project."""

import ast
import importlib.metadata
import re
import subprocess
import sys
from pathlib import PurePosixPath

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.deploy.conftest import REPO, assert_accepted
from tests.deploy.dockerfile import DockerIgnore, Instruction, parse


@pytest.fixture(scope="module")
def instructions() -> list[Instruction]:
    return parse(REPO / "Dockerfile")


def only(instructions, keyword: str) -> Instruction:
    found = [i for i in instructions if i.keyword == keyword]
    assert len(found) == 1, f"expected one {keyword}, found {len(found)}"
    return found[0]


def env_of(instructions) -> dict[str, str]:
    env = {}
    for instruction in instructions:
        if instruction.keyword == "ENV":
            env.update(pair.split("=", 1) for pair in instruction.arguments.split())
    return env


def runtime_requirements() -> set[str]:
    names = set()
    for line in (REPO / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.add(canonicalize_name(Requirement(line).name))
    return names


def test_base_image_is_a_pinned_python_that_the_project_supports(instructions):
    image = only(instructions, "FROM").arguments.split()[0]
    name, _, tag = image.partition(":")
    assert name == "python"
    match = re.match(r"^(\d+)\.(\d+)(?:\.\d+)?-slim", tag)
    assert match, f"base image tag {tag!r} should be a python version, slim"
    requires = SpecifierSet(
        re.search(r'requires-python = "([^"]+)"', (REPO / "pyproject.toml").read_text())[1]
    )
    assert Version(f"{match[1]}.{match[2]}") in requires


def test_runs_as_a_non_root_numeric_user(instructions):
    users = [i.arguments for i in instructions if i.keyword == "USER"]
    assert users, "no USER: the container would run as root"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit(), "a numeric uid lets Kubernetes check runAsNonRoot"
    assert int(uid) != 0
    assert gid == "" or int(gid) != 0


def test_installs_runtime_requirements_only(instructions):
    runs = " ".join(i.arguments for i in instructions if i.keyword == "RUN")
    assert re.search(r"pip install (?:\S+ )*-r requirements\.txt", runs)
    assert "requirements-dev" not in runs
    copied = [i.arguments.split() for i in instructions if i.keyword == "COPY"]
    assert ["requirements.txt", "./"] in copied


def test_copies_the_services_and_their_configuration(instructions):
    copied = {tuple(i.arguments.split()) for i in instructions if i.keyword == "COPY"}
    assert ("services/", "services/") in copied
    assert ("gateway.yaml", "./") in copied
    workdir = only(instructions, "WORKDIR").arguments
    env = env_of(instructions)
    assert env["GATEWAY_CONFIG"] == f"{workdir}/gateway.yaml"
    assert env["GATEWAY_DATA_DIR"].startswith("/var/lib/")


def test_entrypoint_is_python_dash_m_services(instructions):
    assert only(instructions, "ENTRYPOINT").exec_form() == ["python", "-m", "services"]
    command = only(instructions, "CMD").exec_form()
    assert command == ["gateway", "--host", "0.0.0.0"]
    assert_accepted(command)


def test_dockerignore_keeps_what_the_image_needs_and_nothing_else():
    ignore = DockerIgnore((REPO / ".dockerignore").read_text())
    tracked = subprocess.run(
        ["git", "ls-files", "services"], capture_output=True, text=True, cwd=REPO, check=True
    ).stdout.split()
    assert tracked
    for path in [*tracked, "requirements.txt", "gateway.yaml"]:
        assert not ignore.excludes(path), f"{path} would be missing from the build context"
    for path in [
        ".venv/bin/python",
        ".git/HEAD",
        "tests/conftest.py",
        "bench/README.md",
        "data/gateway.db",
        "requirements-dev.txt",
        "services/__pycache__/gateway.cpython-311.pyc",
    ]:
        assert ignore.excludes(path), f"{path} would be sent to the build"


def test_services_import_nothing_beyond_the_runtime_requirements():
    # The image installs requirements.txt only; a service importing a dev-only package would
    # pass every test here and fail in the container.
    distributions = importlib.metadata.packages_distributions()
    allowed = runtime_requirements()
    missing = {}
    for path in (REPO / "services").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for module in modules:
                top = module.split(".")[0]
                if top in sys.stdlib_module_names or top == "services":
                    continue
                owners = {canonicalize_name(d) for d in distributions.get(top, [])}
                if not owners & allowed:
                    missing[top] = str(PurePosixPath(path.relative_to(REPO)))
    assert not missing, f"imported by services but not in requirements.txt: {missing}"
