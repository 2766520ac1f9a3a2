"""schemathesis hooks for .ci/schemathesis.sh.

1. Streaming operations are not fuzzed. An SSE response stays open as long as
   what it follows lives (a job the fuzzer submitted, a topic), and its
   keep-alives reset the client's read timeout, so one such case can hold the
   run for many minutes. The rule is by what an operation answers, so a
   streaming endpoint added later is excluded too: any operation with a
   `text/event-stream` response or a `101 Switching Protocols` (WebSocket)
   response is dropped from the schema before schemathesis loads it, with
   the links that lead to it.
2. Long polls are capped: a fetch (body) or a job read (query) may wait up to
   wait_ms = 300000 (5 minutes), which the schema truthfully allows; every
   request waits at most 50 ms. And a valid case never sends both of two
   parameters that exclude each other (EXCLUSIVE), a rule OpenAPI cannot
   state.
3. Path parameters name existing resources most of the time: the fixtures
   .ci/schemathesis_seed.py made (their names and ids in the JSON file named
   by HERALD_FUZZ_FIXTURES). DELETE operations get the "doomed" ones, and
   never a fixture or a job-service name in any phase (schemathesis reuses
   names it saw in responses, and its stateful phase follows links from a
   fixture to its DELETE), and PATCH changes a topic of its own, so the
   fixtures stay usable for the whole run. The rest of the time the generated value stays,
   so unknown and malformed names are still tried.
4. Every response is counted per operation, by status class; at exit the
   table goes to the file named by HERALD_FUZZ_COUNTS (the script prints it),
   and, with HERALD_FUZZ_REFUSALS set, the server's reasons for refusing
   cases generated as valid go to that file.
"""

import atexit
import collections
from collections.abc import MutableMapping
import json
import os
import sys
import threading

import schemathesis
from hypothesis import strategies as st

STREAMING_MEDIA_TYPE = "text/event-stream"
METHODS = ("get", "put", "post", "delete", "patch", "head", "options", "trace")
MAX_WAIT_MS = 50
# How often (out of 10) a path parameter is replaced by a fixture.
FIXTURE_WEIGHT = 8


def _resolve(document, item):
    """Follows one local `$ref` (responses may be shared components)."""
    reference = item.get("$ref") if isinstance(item, dict) else None
    if not isinstance(reference, str) or not reference.startswith("#/"):
        return item
    target = document
    for part in reference[2:].split("/"):
        target = target.get(part.replace("~1", "/").replace("~0", "~"), {})
    return target


def is_streaming(document, operation):
    """Whether the operation answers with a stream: SSE or a WebSocket."""
    for status, response in (operation.get("responses") or {}).items():
        if str(status) == "101":
            return True
        content = _resolve(document, response).get("content") or {}
        if any(media.split(";")[0].strip() == STREAMING_MEDIA_TYPE for media in content):
            return True
    return False


@schemathesis.hook
def before_load_schema(ctx, raw_schema):
    dropped = set()
    for path, item in list((raw_schema.get("paths") or {}).items()):
        for method in METHODS:
            operation = item.get(method)
            if isinstance(operation, dict) and is_streaming(raw_schema, operation):
                del item[method]
                dropped.add(operation.get("operationId"))
                print(f"not fuzzed (streams): {method.upper()} {path}", file=sys.stderr)
        if not any(method in item for method in METHODS):
            del raw_schema["paths"][path]
    # Links into a dropped operation would be invalid.
    for item in (raw_schema.get("paths") or {}).values():
        for method in METHODS:
            for response in ((item.get(method) or {}).get("responses") or {}).values():
                links = response.get("links") if isinstance(response, dict) else None
                for name, link in list((links or {}).items()):
                    if link.get("operationId") in dropped:
                        del links[name]


# --- long polls --------------------------------------------------------------


def _cap_wait(params):
    if isinstance(params, dict):
        wait = params.get("wait_ms")
        if isinstance(wait, str) and wait.isdigit():
            wait = int(wait)
        if isinstance(wait, int) and not isinstance(wait, bool) and wait > MAX_WAIT_MS:
            params["wait_ms"] = MAX_WAIT_MS
    return params


# Pairs of parameters that exclude each other, which OpenAPI cannot state:
# a case generated as valid keeps the first of the two.
EXCLUSIVE = {
    ("POST", "/v1/topics/{topic}/streams/{stream}/events"): ("headers", "If-Match", "If-None-Match"),
    ("GET", "/v1/topics/{topic}/events"): ("query", "from_offset", "from_time"),
}


@schemathesis.hook
def before_call(ctx, case, kwargs):
    # Every phase passes here (the coverage phase skips the map_* hooks, and
    # sends the schema's maximum as it is). GET /v1/jobs/{job_id}?wait_ms=
    # long-polls too: the fixture jobs exist.
    _cap_wait(case.body)
    _cap_wait(case.query)
    protect(case)
    meta = getattr(case, "meta", None)
    rule = EXCLUSIVE.get((case.operation.method.upper(), case.operation.path))
    if rule and meta is not None and meta.generation.mode.is_positive:
        container, first, second = rule
        values = getattr(case, container)
        # Headers are a requests CaseInsensitiveDict, not a dict.
        if isinstance(values, MutableMapping) and first in values and second in values:
            del values[second]


# --- existing resources ----------------------------------------------------


def _load_fixtures():
    path = os.environ.get("HERALD_FUZZ_FIXTURES")
    if not path:
        return None
    with open(path, encoding="utf-8") as file:
        return json.load(file)


FIXTURES = _load_fixtures()


def protected_names():
    """Names a DELETE must not reach: the fixtures, and the topics and groups
    of the job service (schemathesis also reuses names it saw in responses)."""
    if FIXTURES is None:
        return set()
    queue_topic = f"jobs.{FIXTURES['queue']}"
    return {
        FIXTURES["topic"],
        FIXTURES["settings_topic"],
        FIXTURES["stream"],
        FIXTURES["endpoint"],
        *FIXTURES["groups"],
        queue_topic,
        "herald.jobs",
        "herald.jobs.dead",
        "herald-jobs",
    }


PROTECTED = protected_names()


def fixture_choices(method, path):
    """The existing resources an operation's path parameters can name: a list
    of complete assignments (a group exists on its topic only)."""
    if FIXTURES is None:
        return []
    if method.lower() == "delete":
        doomed = FIXTURES["doomed"]
        if "{endpoint_id}" in path:
            return [{"endpoint_id": doomed["endpoint"]}]
        if "{stream}" in path:
            return [{"topic": FIXTURES["topic"], "stream": doomed["stream"]}]
        if "{group}" in path:
            return [{"topic": FIXTURES["topic"], "group": doomed["group"]}]
        if "{topic}" in path:
            return [{"topic": doomed["topic"]}]
        return []
    base = {}
    if "{topic}" in path:
        base["topic"] = FIXTURES["topic"]
    if "{stream}" in path:
        base["stream"] = FIXTURES["stream"]
    if "{queue}" in path:
        base["queue"] = FIXTURES["queue"]
    if "{id}" in path and path.startswith("/v1/blobs/"):
        base["id"] = FIXTURES["blob"]
    if "{endpoint_id}" in path:
        base["endpoint_id"] = FIXTURES["endpoint"]
    if "{message_id}" in path:
        base["message_id"] = FIXTURES["message"]
    choices = [base]
    if "{group}" in path:
        # A commit is for stream groups only.
        groups = [FIXTURES["stream_group"]] if path.endswith("/commit") else FIXTURES["groups"]
        choices = [{**base, "group": group} for group in groups]
    if "{job_id}" in path:
        choices = [{**choice, "job_id": job} for choice in choices for job in FIXTURES["jobs"]]
    return [choice for choice in choices if choice]


def protect(case):
    """Keeps the fixtures usable whatever phase made the case (the stateful
    phase follows links from a fixture to its DELETE, and schemathesis reuses
    names it saw in responses): a DELETE naming a fixture or a job-service
    resource deletes the doomed one instead, and a PATCH of the fixture topic
    changes the settings fixture (a tiny max_event_bytes or retention would
    make the fixture topic refuse or drop every event)."""
    parameters = case.path_parameters
    if FIXTURES is None or not isinstance(parameters, MutableMapping):
        return
    method = case.operation.method.lower()
    if method == "delete" and PROTECTED & {v for v in parameters.values() if isinstance(v, str)}:
        doomed = fixture_choices(method, case.operation.path)
        if doomed:
            parameters.update(doomed[0])
        else:
            # No doomed resource of this kind (e.g. an API key whose
            # generated id is a fixture's name): a name nothing has.
            for name, value in list(parameters.items()):
                if value in PROTECTED:
                    parameters[name] = "not-a-fixture"
    if method == "patch" and parameters.get("topic") == FIXTURES["topic"]:
        parameters["topic"] = FIXTURES["settings_topic"]


@schemathesis.hook
def flatmap_path_parameters(ctx, path_parameters):
    operation = ctx.operation
    choices = fixture_choices(operation.method, operation.path) if operation else []
    if not choices or not isinstance(path_parameters, dict):
        return st.just(path_parameters)
    generated = dict(path_parameters)
    existing = st.sampled_from(choices).map(lambda choice: {**generated, **choice})
    return st.integers(min_value=0, max_value=9).flatmap(
        lambda roll: existing if roll < FIXTURE_WEIGHT else st.just(generated)
    )


# --- counts ----------------------------------------------------------------

_counts = collections.defaultdict(collections.Counter)
_refusals = collections.defaultdict(collections.Counter)
_lock = threading.Lock()


def _column(status, positive):
    if 200 <= status < 300:
        return "2xx"
    if status == 404:
        return "404"
    if status == 400 and positive:
        return "400 valid"
    if 400 <= status < 500:
        return "4xx"
    if status >= 500:
        return "5xx"
    return "other"


@schemathesis.hook
def after_call(ctx, case, response):
    meta = getattr(case, "meta", None)
    positive = bool(meta is not None and meta.generation.mode.is_positive)
    column = _column(response.status_code, positive)
    with _lock:
        counts = _counts[case.operation.label]
        counts["cases"] += 1
        counts[column] += 1
        if column == "400 valid":
            try:
                detail = str(response.json().get("detail"))
            except ValueError:
                detail = response.text
            _refusals[case.operation.label][detail[:160]] += 1


COLUMNS = ("cases", "2xx", "404", "400 valid", "4xx", "5xx")


def _write_counts():
    path = os.environ.get("HERALD_FUZZ_COUNTS")
    if not path:
        return
    width = max([len(label) for label in _counts] + [len("operation")])
    lines = [
        f"{'operation':<{width}}  " + "  ".join(f"{column:>9}" for column in COLUMNS),
    ]
    total = collections.Counter()
    for label in sorted(_counts, key=lambda label: (label.split(" ", 1)[1], label)):
        counts = _counts[label]
        total.update(counts)
        lines.append(
            f"{label:<{width}}  " + "  ".join(f"{counts[column]:>9}" for column in COLUMNS)
        )
    lines.append(f"{'total':<{width}}  " + "  ".join(f"{total[column]:>9}" for column in COLUMNS))
    silent = sorted(label for label, counts in _counts.items() if counts["2xx"] == 0)
    lines.append(
        "400 valid: a case generated as valid that the server refused as invalid "
        "(400): the schema is looser there than the server (or the case broke a "
        "rule between fields that OpenAPI cannot state)."
    )
    lines.append(f"operations without a 2xx: {len(silent)}" + (f" ({', '.join(silent)})" if silent else ""))
    with open(path, "w", encoding="utf-8") as file:
        file.write("\n".join(lines) + "\n")
    # Why valid cases were refused, for whoever tightens the schema next.
    refusals = os.environ.get("HERALD_FUZZ_REFUSALS")
    if refusals:
        with open(refusals, "w", encoding="utf-8") as file:
            for label in sorted(_refusals):
                file.write(f"{label}\n")
                for detail, count in _refusals[label].most_common(5):
                    file.write(f"  {count:5}  {detail}\n")


atexit.register(_write_counts)
