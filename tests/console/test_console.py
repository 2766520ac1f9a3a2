"""The web console at /ui in a real headless Chromium: every page draws its
data with no console error and no failed request (each saved as a
screenshot in docs/console/), and the operator's actions work end to end,
checked through the REST API: a dead letter redriven, a group reset, an
event found by offset, a new event on the live tail within a second."""

from __future__ import annotations

import time

import pytest
from playwright.sync_api import expect

from conftest import BOOTSTRAP_KEY, Console, Seed
from herald_support import Client, HeraldServer, wait_until

# The live tail's promise: a published event is on screen within this.
TAIL_WITHIN_MS = 1000


def pages(seed: Seed) -> list[tuple[str, str, str]]:
    """(screenshot name, route, a selector that shows the page's data)."""
    topic, first = seed.topic, seed.published[0]
    return [
        ("overview", "/", ".tile-value svg.spark polyline"),
        ("topics", "/topics", f"a[href='#/topics/{topic}']"),
        ("topic", f"/topics/{topic}", f"a[href='#/groups/{topic}/{seed.dead_group}']"),
        ("events", f"/events?topic={topic}&partition={first['partition']}", "tr.event"),
        ("event", f"/events/{topic}/{first['partition']}/{first['offset']}",
         "#lineage tr.lineage-node[data-kind='event'][data-depth='1']"),
        ("groups", "/groups", f"a[href='#/groups/{topic}/{seed.dead_group}']"),
        ("group", f"/groups/{topic}/{seed.dead_group}", "tr.dead-letter"),
        ("streams", f"/streams?topic={seed.stream_topic}&stream={seed.stream}", "tr.event"),
        ("jobs", "/jobs", f"a[href='#/jobs/{seed.job_id}']"),
        ("job", f"/jobs/{seed.job_id}", "td code:has-text('/thumbs/512.png')"),
        ("workflows", "/workflows", "a[href='#/workflows/shop/welcome']"),
        ("workflow", "/workflows/shop/welcome", f"a[href='#/workflow-instances/{seed.instance_id}']"),
        ("workflow-instance", f"/workflow-instances/{seed.instance_id}", "tr.step"),
        ("webhooks", "/webhooks", f"a[href='#/webhooks/{seed.endpoint_id}']"),
        ("webhook", f"/webhooks/{seed.endpoint_id}", "button.redeliver"),
        ("tail", f"/tail?topic={topic}&from=earliest", "tr.event"),
        ("login", "/login", "form#login"),
    ]


PAGE_NAMES = [
    "overview", "topics", "topic", "events", "event", "groups", "group", "streams", "jobs", "job",
    "workflows", "workflow", "workflow-instance", "webhooks", "webhook", "tail", "login",
]


@pytest.mark.parametrize("name", PAGE_NAMES)
def test_given_seeded_server_when_page_opens_should_show_its_data_without_errors(
    console: Console, seed: Seed, name: str
):
    every = pages(seed)
    assert [entry[0] for entry in every] == PAGE_NAMES
    [(_, route, shows)] = [entry for entry in every if entry[0] == name]
    page = console.open(route)
    page.wait_for_selector(shows, state="attached", timeout=15_000)
    if name == "overview":
        # Two polls: a rate is known.
        expect(page.locator(".tile-value").nth(1)).to_contain_text("/s", timeout=10_000)
    console.screenshot(page, name)
    console.check(page)


def test_given_dead_letters_when_one_is_redriven_in_the_console_should_leave_the_list(
    console: Console, client: Client, seed: Seed
):
    path = f"/v1/topics/{seed.topic}/groups/{seed.dead_group}"
    page = console.open(f"/groups/{seed.topic}/{seed.dead_group}")
    rows = page.locator("tr.dead-letter")
    expect(rows).to_have_count(2)
    chosen, kept = seed.dead_letter_ids
    row = page.locator(f"tr.dead-letter[data-id='{chosen}']")
    row.locator("button.inspect").click()
    expect(page.locator("tr.detail pre.json")).to_contain_text("card declined")
    row.locator("button.redrive").click()
    expect(page.locator(f"tr.dead-letter[data-id='{chosen}']")).to_have_count(0)
    expect(rows).to_have_count(1)
    expect(page.locator(".outcome")).to_contain_text("Redriven: 1.")
    # The server agrees: one dead letter left, the other back in the group.
    letters = client.http.get(f"{path}/dead-letters").json()["events"]
    assert [letter["id"] for letter in letters] == [kept], letters
    assert client.group_status(seed.topic, seed.dead_group)["dead_letters"] == 1
    console.check(page)


def test_given_group_at_the_end_when_reset_to_earliest_in_the_console_should_have_every_event_to_do(
    console: Console, client: Client, seed: Seed
):
    before = client.group_status(seed.topic, seed.reset_group)
    assert sum(part["lag"] for part in before["partitions"]) == 0, before
    page = console.open(f"/groups/{seed.topic}/{seed.reset_group}")
    page.select_option("form#reset select[name=to]", "earliest")
    page.click("form#reset button:has-text('Reset…')")
    page.click("form#reset button:has-text('Confirm reset')")
    expect(page.locator(".outcome")).to_contain_text("Reset to earliest.")
    # The page shows the lag the reset made, partition by partition.
    status = client.group_status(seed.topic, seed.reset_group)
    ends = client.end_offsets(seed.topic)
    assert [part["committed"] for part in status["partitions"]] == [0] * seed.partitions, status
    assert [part["lag"] for part in status["partitions"]] == ends, status
    for part, end in zip(status["partitions"], ends):
        expect(page.locator(f"span.lag[data-partition='{part['partition']}']")).to_have_text(str(end))
    console.check(page)


def test_given_an_offset_when_entered_in_the_event_browser_should_find_that_event(
    console: Console, client: Client, seed: Seed
):
    wanted = seed.published[len(seed.published) // 2]
    page = console.open("/events")
    page.select_option("form#event-query select[name=topic]", seed.topic)
    page.fill("form#event-query input[name=partition]", str(wanted["partition"]))
    page.fill("form#event-query input[name=offset]", str(wanted["offset"]))
    page.click("form#event-query button[type=submit]")
    found = page.locator(f"tr.event.selected[data-offset='{wanted['offset']}']")
    expect(found).to_have_count(1)
    expect(page.locator("tr.event").first).to_have_attribute("data-offset", str(wanted["offset"]))
    expect(found).to_contain_text(wanted["id"])
    found.locator("td").nth(2).click()
    detail = page.locator("tr.detail pre.json")
    expect(detail).to_contain_text(f'"id": "{wanted["id"]}"')
    expect(detail).to_contain_text(f'"offset": {wanted["offset"]}')
    # From a time instead: the first event appended at or after it, as REST says.
    [stored] = client.http.get(f"/v1/topics/{seed.topic}/events", params={
        "partition": wanted["partition"], "from_offset": wanted["offset"], "limit": 1,
    }).json()["events"]
    [first] = client.http.get(f"/v1/topics/{seed.topic}/events", params={
        "partition": wanted["partition"], "from_time": stored["appendedat"], "limit": 1,
    }).json()["events"]
    page.fill("form#event-query input[name=offset]", "")
    page.fill("form#event-query input[name=time]", stored["appendedat"])
    page.click("form#event-query button[type=submit]")
    expect(page.locator("tr.event").first).to_have_attribute("data-offset", str(first["offset"]))
    page.go_back()
    # Its own page: the JSON, and lineage only if the server offers it.
    found.locator("a").first.click()
    expect(page.locator("h1")).to_have_text(f"Event {seed.topic} / {wanted['partition']} / {wanted['offset']}")
    expect(page.locator("pre.json")).to_contain_text(wanted["type"])
    expect(page.locator("section:has(h2:text('Lineage'))")).to_be_visible()
    console.check(page)


def test_given_live_tail_when_an_event_is_published_should_show_it_within_a_second(
    console: Console, client: Client, seed: Seed
):
    page = console.open(f"/tail?topic={seed.topic}")
    expect(page.locator("#tail-state")).to_have_text("live")
    event_id = f"tail-{time.time_ns()}"
    client.publish(seed.topic, {
        "specversion": "1.0", "id": event_id, "source": "/console-test",
        "type": "order.tailed", "subject": "order-tail", "data": {},
    })
    published = time.monotonic()
    page.wait_for_selector(f"#tail-rows tr[data-id='{event_id}']", timeout=TAIL_WITHIN_MS)
    shown_after = time.monotonic() - published
    print(f"live tail: the event was on screen {shown_after * 1000:.0f} ms after its publish returned")
    assert shown_after < TAIL_WITHIN_MS / 1000
    expect(page.locator("#tail-count")).to_have_text("1")
    console.check(page)


def test_given_auth_when_console_opens_should_ask_for_a_key_and_work_with_it(
    chromium, guarded: HeraldServer
):
    console = Console(chromium, guarded)
    try:
        page = console.open("/topics", wait_ready=False)
        # No key: the only refusal is the identity check that sends it to log in.
        expect(page.locator("form#login")).to_be_visible(timeout=15_000)
        page.fill("form#login input[name=key]", "hrd_wrong")
        page.click("form#login button[type=submit]")
        expect(page.locator(".outcome .problem")).to_contain_text("unauthenticated")
        page.fill("form#login input[name=key]", BOOTSTRAP_KEY)
        page.click("form#login button[type=submit]")
        # Back where it was going, with the key on every call.
        page.wait_for_url("**/ui/#/topics", timeout=15_000)
        expect(page.locator("h1")).to_have_text("Topics")
        expect(page.locator("#identity")).not_to_have_text("log in")
        console.wait_drawn(page)
        refusals = console.problems_of(page)
        console.check(page, allowed=("/v1/auth/whoami",))
        # The first identity check and the wrong key, nothing else.
        assert len(refusals) == 4 and all("401" in problem for problem in refusals), refusals
    finally:
        console.close()


def test_given_a_waiting_instance_when_cancelled_in_the_console_should_end_cancelled(
    console: Console, client: Client, seed: Seed
):
    http = client.http
    deployed = http.post("/v1/workflows", headers={"content-type": "application/yaml"}, content=(
        b"document: { dsl: '1.0.0', namespace: shop, name: nap, version: '1' }\n"
        b"do:\n  - nap: { wait: { seconds: 300 } }\n"
    ))
    assert deployed.status_code == 201, deployed.text
    started = http.post("/v1/workflows/shop/nap/instances", json={"input": {}})
    assert started.status_code == 201, started.text
    instance = started.json()["instance_id"]
    page = console.open(f"/workflow-instances/{instance}")
    page.click("button.action-cancel")
    expect(page.locator(".outcome")).to_have_text("Asked to cancel.")
    # The polled status follows the engine.
    expect(page.locator("dl.facts .badge")).to_have_text("cancelled", timeout=10_000)
    assert http.get(f"/v1/workflow-instances/{instance}").json()["status"] == "cancelled"
    # Ended: the page offers a re-run instead.
    expect(page.locator("button.action-rerun")).to_be_visible()
    console.check(page)


def test_given_delivered_messages_when_one_is_redelivered_in_the_console_should_log_a_manual_attempt(
    console: Console, client: Client, seed: Seed
):
    path = f"/v1/webhooks/endpoints/{seed.endpoint_id}/attempts"
    page = console.open(f"/webhooks/{seed.endpoint_id}")
    message = page.locator("tbody tr").first.locator("td code").inner_text()
    page.locator("tbody tr").first.locator("button.redeliver").click()
    expect(page.locator(".outcome")).to_contain_text(f"Redelivering {message}.")

    def manual():
        attempts = client.http.get(path, params={"message_id": message}).json()["attempts"]
        return [attempt for attempt in attempts if attempt["trigger"] == "manual"]

    [attempt] = wait_until(manual, "the manual attempt in the log")
    assert attempt["succeeded"], attempt
    console.check(page)
