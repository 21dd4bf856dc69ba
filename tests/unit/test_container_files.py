"""Dockerfile and docker-compose.yml, checked without a Docker engine (none on our machines): every
compose service has a health check that runs a command the image has, commands are parsed by the
processes' real argument parsers, the image runs as the unprivileged uid deploy/k8s expects, and
every path the Dockerfile copies exists. ``tests/integration/test_install.py`` runs the same pip
build the image does.
"""

from __future__ import annotations

import argparse
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]

import server.main as server_main
import shard.main as shard_main

ROOT = Path(__file__).resolve().parents[2]
COMPOSE: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
DOCKERFILE = (ROOT / "Dockerfile").read_text()
SCRIPTS: dict[str, str] = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
OURS = sorted(name for name, svc in COMPOSE["services"].items() if "build" in svc)


def _final_stage() -> str:
    return DOCKERFILE.split("\nFROM ")[-1]


def test_every_service_has_a_health_check() -> None:
    for name, svc in COMPOSE["services"].items():
        check = svc.get("healthcheck")
        assert check and check.get("test"), f"{name} has no healthcheck"
        assert check["test"][0] in ("CMD", "CMD-SHELL")


@pytest.mark.parametrize("name", OURS)
def test_health_checks_of_our_services_use_the_installed_script(name: str) -> None:
    test = COMPOSE["services"][name]["healthcheck"]["test"]
    assert test[0] == "CMD" and test[1] in SCRIPTS, test
    listen = next(a for a in _command(name) if a.startswith("0.0.0.0:") or a.startswith("--listen="))
    port = listen.rsplit(":", 1)[1]
    assert test[2] == f"127.0.0.1:{port}", f"{name} checks {test[2]}, listens on {port}"


def _command(name: str) -> list[str]:
    return [str(a) for a in COMPOSE["services"][name]["command"]]


@pytest.mark.parametrize("name", OURS)
def test_commands_parse(name: str) -> None:
    module, *args = _command(name)
    # ENTRYPOINT is ["python", "-m"]: the first word is the module.
    assert re.search(r'^ENTRYPOINT \["python", "-m"\]$', _final_stage(), flags=re.M)
    assert module in ("server", "shard"), module
    if module == "shard":
        shard_main.parse_args(args)
    else:
        parser = argparse.ArgumentParser()
        server_main.add_arguments(parser)
        parser.parse_args(args)


def test_image_runs_as_the_unprivileged_user_of_the_k8s_manifests() -> None:
    stage = _final_stage()
    users = re.findall(r"^USER (\S+)$", stage, flags=re.M)
    assert users, "the runtime stage sets no USER"
    uid = users[-1].split(":")[0]
    assert uid not in ("0", "root")
    for manifest in ("server.yaml", "shards.yaml"):
        text = (ROOT / "deploy" / "k8s" / "base" / manifest).read_text()
        assert f"runAsUser: {uid}" in text, manifest
    assert f"chown {uid}:" in stage, "/data must belong to the image's user"


def test_copied_paths_exist() -> None:
    for line in re.findall(r"^COPY (?!--from)(.+)$", DOCKERFILE, flags=re.M):
        *sources, _dest = line.split()
        for source in sources:
            assert (ROOT / source).exists(), f"Dockerfile copies missing {source}"


def test_image_installs_the_healthcheck_script() -> None:
    assert "vsearch-healthcheck" in SCRIPTS
    assert re.search(r"pip install .*vectorsearch", _final_stage())
