"""Fixtures of the console suite: one `herald serve` (the interop suite's
helper), seeded through the REST API with something for every page, a
webhook receiver on loopback, and Debian's Chromium driven by Playwright.

`console.open(route)` opens a fresh page on `/ui/#<route>` that records
every console error, uncaught exception, failed request and answer with a
status of 400 or more; `console.check(page)` asserts there were none."""

from __future__ import annotations

import os
import sys
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, sync_playwright

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "interop"))
from herald_support import Client, HeraldServer, wait_until  # noqa: E402

# A page is drawn (its first data shown) when the shell sets this attribute.
READY = "main#view[data-ready]"
# How long a page may take to draw: a debug server on a loaded 2-core machine.
DRAW_TIMEOUT_MS = 15_000
BOOTSTRAP_KEY = "hrd_console_test_0123456789abcdef0123456789abcdef"


@pytest.fixture(scope="session")
def receiver():
    """A webhook receiver on loopback answering 204 to every delivery."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server's name)
            self.rfile.read(int(self.headers.get("content-length", 0)))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook"
    server.shutdown()


@pytest.fixture(scope="session")
def herald(tmp_path_factory: pytest.TempPathFactory):
    workdir = tmp_path_factory.mktemp("herald")
    server = HeraldServer.start(
        workdir, extra_env={"HERALD_WEBHOOKS__ALLOW_TARGETS": '["127.0.0.1/32"]'}
    )
    yield server
    status = server.stop()
    assert status == 0, f"herald exited with {status} on SIGTERM:\n{server.log()[-4000:]}"


@pytest.fixture(scope="session")
def client(herald: HeraldServer):
    client = Client(herald)
    yield client
    client.close()


@dataclass
class Seed:
    """What the seeding made, for the tests to look at."""

    topic: str = "orders"
    partitions: int = 3
    published: list[dict[str, Any]] = field(default_factory=list)
    dead_group: str = "billing"
    dead_letter_ids: list[int] = field(default_factory=list)
    reset_group: str = "replay"
    stream_topic: str = "carts"
    stream: str = "cart-7"
    job_id: str = ""
    instance_id: str = ""
    endpoint_id: str = ""


WORKFLOW = (
    "document: { dsl: '1.0.0', namespace: shop, name: welcome, version: '1' }\n"
    "do:\n"
    "  - greet: { set: { greeting: '${ \"hello \" + .who }' } }\n"
    "  - shout: { set: '${ { loud: .greeting } }' }\n"
)


@pytest.fixture(scope="session")
def seed(client: Client, receiver: str) -> Seed:
    """A topic with events, a queue group with two dead letters, a group at
    its end (to reset), an event stream, a job with parts done, a workflow
    run to its end, and a webhook endpoint with delivery attempts."""
    seed = Seed()
    http = client.http

    def ok(response, *statuses):
        assert response.status_code in (statuses or (200, 201)), response.text
        return response.json() if response.content else None

    ok(http.post("/v1/topics", json={"name": seed.topic, "partitions": seed.partitions}))
    endpoint = ok(http.post("/v1/webhooks/endpoints", json={
        "url": receiver, "description": "console test", "filter": {"topics": [seed.topic]},
    }))
    seed.endpoint_id = endpoint["endpoint_id"]
    events = [
        {
            "specversion": "1.0", "id": f"order-{n}-{kind}", "source": "/shop",
            "type": f"order.{kind}", "subject": f"order-{n}", "key": f"order-{n}",
            "data": {"order": n, "total": 10 * n},
            # Lineage: the payment follows from the order.
            "correlationid": f"order-{n}",
            **({"causationid": f"order-{n}-created"} if kind == "paid" else {}),
        }
        for n in range(12)
        for kind in ("created", "paid")
    ]
    seed.published = [
        {**event, **result}
        for event, result in zip(events, client.publish_batch(seed.topic, events))
    ]

    # Two dead letters: fetched, then rejected.
    client.put_group(seed.topic, seed.dead_group, mode="queue", start="earliest")
    fetched = ok(http.post(f"/v1/topics/{seed.topic}/groups/{seed.dead_group}/fetch",
                           json={"member": "console-test", "max": 2, "wait_ms": 5000}))
    ids = [delivery["delivery_id"] for delivery in fetched["deliveries"]]
    assert len(ids) == 2, fetched
    ok(http.post(f"/v1/topics/{seed.topic}/groups/{seed.dead_group}/reject",
                 json={"delivery_ids": ids, "reason": "card declined"}))
    letters = ok(http.get(f"/v1/topics/{seed.topic}/groups/{seed.dead_group}/dead-letters"))
    seed.dead_letter_ids = [letter["id"] for letter in letters["events"]]
    assert len(seed.dead_letter_ids) == 2, letters

    # A group at the end of the topic: a reset to earliest gives it lag.
    client.put_group(seed.topic, seed.reset_group, mode="queue", start="latest")

    ok(http.post("/v1/topics", json={"name": seed.stream_topic}))
    ok(http.post(f"/v1/topics/{seed.stream_topic}/streams/{seed.stream}/events", json={
        "events": [
            {"specversion": "1.0", "source": "/shop", "type": kind, "data": {"item": n}}
            for n, kind in enumerate(["cart.opened", "item.added", "item.added", "cart.checked_out"])
        ],
        "expected_version": "no_stream",
    }))

    job = ok(http.post("/v1/queues/thumbnails/jobs", json={
        "data": {"image": "cat.png"},
        "parts": [{"key": "small", "data": {"px": 64}}, {"key": "large", "data": {"px": 512}}],
    }), 202)
    seed.job_id = job["job_id"]
    for part, px in (("small", 64), ("large", 512)):
        ok(http.post(f"/v1/jobs/{seed.job_id}/complete",
                     json={"part": part, "result": {"url": f"/thumbs/{px}.png"}}))
    ok(http.post("/v1/queues/thumbnails/jobs", json={"data": {"image": "dog.png"}}), 202)

    ok(http.post("/v1/workflows", content=WORKFLOW.encode(),
                 headers={"content-type": "application/yaml"}))
    instance = ok(http.post("/v1/workflows/shop/welcome/instances", json={"input": {"who": "ada"}}))
    seed.instance_id = instance["instance_id"]
    done = ok(http.get(f"/v1/workflow-instances/{seed.instance_id}", params={"wait_ms": 10000}))
    assert done["status"] == "completed", done

    # Every event reaches the receiver: the attempt log has them all.
    def delivered():
        attempts = ok(http.get(f"/v1/webhooks/endpoints/{seed.endpoint_id}/attempts"))
        return len(attempts["attempts"]) >= len(events)

    wait_until(delivered, "the webhook deliveries")
    return seed


@pytest.fixture(scope="session")
def chromium():
    executable = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True)
        yield browser
        browser.close()


SCREENSHOTS = Path(os.environ.get("HERALD_CONSOLE_SCREENSHOTS",
                                  Path(__file__).resolve().parents[2] / "docs" / "console"))


class Console:
    """Pages of one server's console, each recording what went wrong."""

    def __init__(self, browser, server: HeraldServer):
        self.context = browser.new_context(viewport={"width": 1280, "height": 860})
        self.server = server
        self.problems: dict[int, list[str]] = {}

    def open(self, route: str, wait_ready: bool = True) -> Page:
        page = self.context.new_page()
        problems = self.problems.setdefault(id(page), [])
        page.on("console", lambda message: message.type == "error"
                and problems.append(f"console error: {message.text} at {message.location}"))
        page.on("pageerror", lambda error: problems.append(f"uncaught: {error}"))
        page.on("requestfailed", lambda request: problems.append(
            f"request failed: {request.method} {request.url}: {request.failure}"))
        page.on("response", lambda response: response.status >= 400 and problems.append(
            f"HTTP {response.status}: {response.request.method} {response.url}"))
        page.goto(f"{self.server.base_url}/ui/#{route}")
        if wait_ready:
            self.wait_drawn(page)
        return page

    def wait_drawn(self, page: Page) -> None:
        page.wait_for_selector(READY, state="attached", timeout=DRAW_TIMEOUT_MS)
        # A page that failed shows its problem instead of data.
        assert page.locator(".page-problem .problem").count() == 0, \
            page.locator(".page-problem").inner_text()

    def problems_of(self, page: Page) -> list[str]:
        return self.problems.get(id(page), [])

    def check(self, page: Page, allowed: tuple[str, ...] = ()) -> None:
        """No console error, exception, failed request or 4xx/5xx answer
        (but those naming one of `allowed`), then closes the page."""
        found = [problem for problem in self.problems_of(page)
                 if not any(text in problem for text in allowed)]
        page.close()
        assert not found, "\n".join(found)

    def screenshot(self, page: Page, name: str) -> None:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def console(chromium, herald: HeraldServer, seed: Seed):
    console = Console(chromium, herald)
    yield console
    console.close()


@pytest.fixture(scope="session")
def guarded(tmp_path_factory: pytest.TempPathFactory):
    """A second server with auth on (a bootstrap key)."""
    server = HeraldServer.start(tmp_path_factory.mktemp("guarded"),
                                extra_env={"HERALD_AUTH__BOOTSTRAP_KEY": BOOTSTRAP_KEY})
    yield server
    server.stop()
