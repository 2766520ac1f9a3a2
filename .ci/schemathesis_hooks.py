"""schemathesis hooks for .ci/schemathesis.sh.

A fetch (body) or a job read (query) may long-poll up to wait_ms = 300000 (5 minutes), which the schema
truthfully allows; generated cases wait at most 50 ms so the run stays short.
"""

import schemathesis


@schemathesis.hook
def map_body(ctx, body):
    if isinstance(body, dict):
        wait = body.get("wait_ms")
        if isinstance(wait, int) and not isinstance(wait, bool) and wait > 50:
            body["wait_ms"] = 50
    return body


@schemathesis.hook
def map_query(ctx, query):
    # GET /v1/jobs/{job_id}?wait_ms= long-polls too: a fuzzed job id that
    # exists (the fuzzer submits jobs) would wait past --request-timeout.
    if isinstance(query, dict):
        wait = query.get("wait_ms")
        if isinstance(wait, str) and wait.isdigit():
            wait = int(wait)
        if isinstance(wait, int) and not isinstance(wait, bool) and wait > 50:
            query["wait_ms"] = 50
    return query
