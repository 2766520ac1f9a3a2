"""A real `herald serve` for the interop suite, and small helpers around it.

The server is the binary named by HERALD_BIN (tests/interop/run.sh sets it;
default target/debug/herald under the repository root), started on
127.0.0.1 port 0 with a temporary data directory and no inherited HERALD_*
settings, so no credentials are needed (loopback, no keys: README
"Security"). It is ready once it has printed `herald listening on ADDR` on
stdout and /readyz answers 200: both are waited for, never guessed.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import httpx
from cloudevents.core.base import BaseCloudEvent
from cloudevents.core.bindings.http import HTTPMessage, from_http_event

REPO_ROOT = Path(__file__).resolve().parents[2]

# Media types of the CloudEvents HTTP binding and of RFC 9457.
STRUCTURED = "application/cloudevents+json"
BATCH = "application/cloudevents-batch+json"
PROBLEM = "application/problem+json"

# How long a condition may take before a wait gives up (seconds). Generous:
# a debug build on a loaded 2-core machine is slow to start.
START_TIMEOUT = 60.0
WAIT_TIMEOUT = 15.0


def herald_binary() -> Path:
    configured = os.environ.get("HERALD_BIN", "target/debug/herald")
    path = Path(configured)
    if not path.is_absolute():
        path = REPO_ROOT / path
    return path


def wait_until(condition: Callable[[], Any], what: str, timeout: float = WAIT_TIMEOUT) -> Any:
    """Polls `condition` until it returns something truthy (returned) or
    `timeout` passes (AssertionError naming `what`)."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


@dataclass
class HeraldServer:
    process: subprocess.Popen
    address: str
    workdir: Path

    @property
    def base_url(self) -> str:
        return f"http://{self.address}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.address}"

    def log(self) -> str:
        return (self.workdir / "stderr.log").read_text(errors="replace")

    @classmethod
    def start(cls, workdir: Path, extra_env: dict[str, str] | None = None) -> "HeraldServer":
        binary = herald_binary()
        if not os.access(binary, os.X_OK):
            raise RuntimeError(f"no herald binary at {binary} (set HERALD_BIN)")
        # Nothing from the caller's HERALD_* (a bootstrap key would turn auth
        # on, a token or a listen address would change what is tested).
        env = {name: value for name, value in os.environ.items() if not name.startswith("HERALD_")}
        env.update(extra_env or {})
        stdout = open(workdir / "stdout.log", "wb")
        stderr = open(workdir / "stderr.log", "wb")
        process = subprocess.Popen(
            [
                str(binary), "serve",
                "--listen", "127.0.0.1:0",
                "--data-dir", str(workdir / "data"),
            ],
            # Its own directory: no ./herald.toml of the caller's is read.
            cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr,
            preexec_fn=_stop_with_parent,
        )
        stdout.close()
        stderr.close()
        server = cls(process=process, address="", workdir=workdir)
        try:
            server.address = wait_until(server._reported_address, "herald to report its address",
                                        START_TIMEOUT)
            wait_until(server._ready, "/readyz to answer 200", START_TIMEOUT)
        except BaseException:
            server.stop()
            raise
        return server

    def _reported_address(self) -> str | None:
        if self.process.poll() is not None:
            raise RuntimeError(f"herald exited with {self.process.returncode}:\n{self.log()}")
        text = (self.workdir / "stdout.log").read_text(errors="replace")
        match = re.search(r"^herald listening on (\S+)$", text, re.MULTILINE)
        return match.group(1) if match else None

    def _ready(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"herald exited with {self.process.returncode}:\n{self.log()}")
        try:
            return httpx.get(f"{self.base_url}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> int | None:
        """SIGTERM (a graceful shutdown), then SIGKILL if it hangs; the exit
        status (None when it had to be killed)."""
        if self.process.poll() is not None:
            return self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            return None


def _stop_with_parent() -> None:
    """In the child before exec: SIGTERM when the test process dies, even
    killed, so no server outlives its suite (Linux; elsewhere a no-op)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def unique(prefix: str) -> str:
    """A topic or group name no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


class Client:
    """The REST calls the tests share (httpx, no SDK of Herald's)."""

    def __init__(self, server: HeraldServer):
        self.server = server
        self.http = httpx.Client(base_url=server.base_url, timeout=10)

    def close(self) -> None:
        self.http.close()

    def create_topic(self, partitions: int = 1, prefix: str = "interop") -> str:
        name = unique(prefix)
        response = self.http.post("/v1/topics", json={"name": name, "partitions": partitions})
        assert response.status_code == 201, response.text
        return name

    def end_offsets(self, topic: str) -> list[int]:
        response = self.http.get(f"/v1/topics/{topic}")
        assert response.status_code == 200, response.text
        return [info["end_offset"] for info in response.json()["partition_info"]]

    def publish_raw(self, topic: str, body: bytes, content_type: str,
                    headers: dict[str, str] | None = None) -> httpx.Response:
        return self.http.post(f"/v1/topics/{topic}/events", content=body,
                              headers={"content-type": content_type, **(headers or {})})

    def publish(self, topic: str, event: dict[str, Any]) -> dict[str, Any]:
        """One event in structured mode; its result."""
        response = self.publish_raw(topic, json.dumps(event).encode(), STRUCTURED)
        assert response.status_code == 201, response.text
        [result] = response.json()["results"]
        return result

    def publish_batch(self, topic: str, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        response = self.publish_raw(topic, json.dumps(events).encode(), BATCH)
        assert response.status_code == 201, response.text
        return response.json()["results"]

    def read(self, topic: str, partition: int = 0, limit: int = 1000) -> list[dict[str, Any]]:
        """Every event of a partition, as the read answer's JSON objects."""
        response = self.http.get(f"/v1/topics/{topic}/events",
                                 params={"partition": partition, "from_offset": 0, "limit": limit})
        assert response.status_code == 200, response.text
        return response.json()["events"]

    def put_group(self, topic: str, group: str, **settings: Any) -> None:
        response = self.http.put(f"/v1/topics/{topic}/groups/{group}", json=settings)
        assert response.status_code in (200, 201), response.text

    def group_status(self, topic: str, group: str) -> dict[str, Any]:
        response = self.http.get(f"/v1/topics/{topic}/groups/{group}")
        assert response.status_code == 200, response.text
        return response.json()


def strict_structured(body: bytes | str) -> BaseCloudEvent:
    """A structured-mode HTTP message (`application/cloudevents+json`) through
    the CloudEvents SDK's strict parser: attribute names must be CloudEvents
    names, required attributes present, `time` RFC 3339."""
    if isinstance(body, str):
        body = body.encode("utf-8")
    return from_http_event(HTTPMessage(headers={"content-type": STRUCTURED}, body=body))


def strict_event(event: dict[str, Any]) -> BaseCloudEvent:
    """A JSON object Herald returned inside a larger answer (a read's
    `events`, a delivery, a socket message), as the structured-mode message
    it would be on its own."""
    return strict_structured(json.dumps(event))


def strict_batch(events: list[dict[str, Any]]) -> list[BaseCloudEvent]:
    """A CloudEvents JSON batch (`application/cloudevents-batch+json`: an
    array of structured events); the SDK has no batch reader, so each element
    goes through the structured one."""
    return [strict_event(event) for event in events]


def documented_error_codes() -> set[str]:
    """The codes of docs/errors.md's table: a client may rely on those."""
    text = (REPO_ROOT / "docs" / "errors.md").read_text()
    return set(re.findall(r"^\| `([a-z_]+)` \|", text, re.MULTILINE))


def assert_problem(response: httpx.Response, status: int, code: str | None = None) -> dict:
    """An RFC 9457 problem with this status (and code, when given); the
    problem document."""
    assert response.status_code == status, f"{response.status_code}: {response.text}"
    content_type = response.headers.get("content-type", "")
    assert content_type.split(";")[0].strip() == PROBLEM, content_type
    problem = response.json()
    assert problem.get("status") == status, problem
    assert isinstance(problem.get("code"), str) and problem["code"], problem
    assert problem.get("type") == f"urn:herald:problem:{problem['code']}", problem
    if code is not None:
        assert problem["code"] == code, problem
    return problem
