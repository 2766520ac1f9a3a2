"""Fixtures of the interop suite: one `herald serve` for the whole session
(tests keep to topics of their own, so they cannot see each other's events)
and an httpx client on it."""

from __future__ import annotations

from pathlib import Path

import pytest

from herald_support import Client, HeraldServer


@pytest.fixture(scope="session")
def herald(tmp_path_factory: pytest.TempPathFactory):
    workdir: Path = tmp_path_factory.mktemp("herald")
    server = HeraldServer.start(
        workdir,
        # The webhook test's receiver listens on loopback, which the SSRF
        # guard refuses unless allowed.
        extra_env={"HERALD_WEBHOOKS__ALLOW_TARGETS": '["127.0.0.1/32"]'},
    )
    yield server
    status = server.stop()
    # A graceful shutdown exits 0 (README: "closes storage and exits 0").
    assert status == 0, f"herald exited with {status} on SIGTERM:\n{server.log()[-4000:]}"


@pytest.fixture
def client(herald: HeraldServer):
    client = Client(herald)
    yield client
    client.close()
