"""What the distribution ships: the wheel's contents, the licence, and the pinned public API."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tomllib
import venv
import zipfile
from pathlib import Path

import pytest

import framework

ROOT = Path(__file__).resolve().parents[2]

# The public API as `from framework import ...` offers it. A change here is a change to what
# users may rely on: add to it deliberately, and remove from it only with a CHANGELOG entry.
PUBLIC_API = [
    "AccessRefused",
    "Answer",
    "App",
    "AppConfig",
    "BreakerOpen",
    "BrokerAccessDenied",
    "BrokerUnreachable",
    "Command",
    "ConfigurationError",
    "Context",
    "ContractError",
    "DecodeFailure",
    "Event",
    "HandlerTimeout",
    "Incoming",
    "LeveretError",
    "Message",
    "MessageContext",
    "Middleware",
    "NotEncodable",
    "Outbound",
    "PublishFailed",
    "PublishMiddleware",
    "PublishNacked",
    "PublishTimeout",
    "Query",
    "QueryContext",
    "QueryFailed",
    "QueryTimeout",
    "RegistrationError",
    "RejectMessage",
    "Reply",
    "ReplyLost",
    "RetryPolicy",
    "Service",
    "TLSVerificationFailed",
    "Unroutable",
    "Upcaster",
    "WrongBus",
    "upcaster",
]


def test_public_api_is_pinned() -> None:
    """framework.__all__ is exactly the pinned, sorted list, and every name in it resolves."""
    assert framework.__all__ == PUBLIC_API
    assert sorted(framework.__all__) == framework.__all__
    for name in framework.__all__:
        assert getattr(framework, name) is not None


def test_license_file_matches_the_metadata() -> None:
    """The LICENSE file is the MIT licence that pyproject.toml declares."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "MIT"
    assert (ROOT / "LICENSE").read_text().startswith("MIT License\n")


@pytest.mark.slow
def test_wheel_installs_the_framework_only(tmp_path: Path) -> None:
    """The built wheel installs `framework`, the `leveret` script and its dist-info, nothing else:
    the reference shop's `handlers` and `contracts` stay in the checkout."""
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    dist = tmp_path / "dist"
    # The dev extra brings hatchling: no isolated build env to fetch (seconds, and the network).
    isolation = [] if importlib.util.find_spec("hatchling") is None else ["--no-build-isolation"]
    build = [*pip, "wheel", "--no-deps", *isolation, "-w", str(dist), str(ROOT)]
    subprocess.run(build, check=True, timeout=120, capture_output=True)
    (wheel,) = dist.glob("leveret-*.whl")
    top_level = {name.split("/")[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert {name for name in top_level if not name.endswith(".dist-info")} == {"framework"}

    # A venv without pip (fast to make); this interpreter's pip installs into it.
    env = tmp_path / "venv"
    venv.create(env, with_pip=False, symlinks=True)
    python = env / "bin" / "python"
    install = [*pip, "--python", str(python), "install", "--no-deps", str(wheel)]
    subprocess.run(install, check=True, timeout=120, capture_output=True)
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    installed = {path.name for path in Path(purelib).iterdir() if path.name != "__pycache__"}
    assert installed == {"framework", wheel.name.split("-py")[0] + ".dist-info"}
    assert (env / "bin" / "leveret").is_file()
    assert (Path(purelib) / "framework" / "py.typed").is_file()
