"""Schemathesis check for the pass without credentials (.ci/schemathesis.sh):
every answer must be 401 unauthenticated."""

import schemathesis


@schemathesis.check
def only_unauthenticated(ctx, response, case):
    if response.status_code != 401:
        raise AssertionError(
            f"{case.method} {case.formatted_path} without credentials answered "
            f"{response.status_code}, not 401"
        )
