"""ponoskit/s3/retry.py: the retry loop (throttles, transients, the deadline, a stopping run). No
server.
"""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from ponoskit.s3.errors import S3TransientError
from ponoskit.s3.limiter import AdaptiveLimiter
from ponoskit.s3.retry import Retrier
from tests.unit.helpers import Clock, client_error


def test_the_retry_loop_retries_throttles_and_transients_and_tells_the_limiter():
    limiter = AdaptiveLimiter(8, cooldown=0)
    retrier = Retrier(limiter, deadline=60, sleep=lambda s: None)
    answers = iter([client_error("SlowDown", 503), EndpointConnectionError(endpoint_url="x"),
                    client_error("InternalError", 500), "copied"])

    def flaky():
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer
    assert retrier.call("CopyObject", flaky) == "copied"
    assert retrier.retries == 3 and limiter.throttles == 1 and limiter.window < 8


def test_past_the_deadline_the_run_stops_as_transient_and_other_errors_pass_through():
    clock = Clock()
    retrier = Retrier(AdaptiveLimiter(2), deadline=30, sleep=lambda s: setattr(clock, "now", clock.now + s),
                      clock=clock)

    def always_503():
        raise client_error("SlowDown", 503)
    with pytest.raises(S3TransientError) as info:
        retrier.call("CopyObject", always_503)
    assert info.value.exit_code == 75 and "SlowDown" in str(info.value) and clock.now >= 30

    def precondition():
        raise client_error("PreconditionFailed", 412)
    with pytest.raises(ClientError):
        retrier.call("CopyObject", precondition)  # not ours to retry: the caller settles it


def test_a_stopping_run_does_not_wait_out_retries():
    retrier = Retrier(AdaptiveLimiter(2), deadline=3600, sleep=lambda s: pytest.fail("slept"))
    retrier.stopping.set()
    with pytest.raises(S3TransientError):
        retrier.call("HeadObject", lambda: (_ for _ in ()).throw(client_error("InternalError", 500)))
