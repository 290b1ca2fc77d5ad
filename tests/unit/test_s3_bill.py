"""ponoskit.s3.bill: what a dry run's bill counts (no server: the requests go to a closed port)."""

from __future__ import annotations

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import EndpointConnectionError

from ponoskit.s3.bill import Bill, RequestCounter, merged


@pytest.fixture
def client(unused_port):
    return boto3.client("s3", endpoint_url=f"http://127.0.0.1:{unused_port}", region_name="us-east-1",
                        aws_access_key_id="k", aws_secret_access_key="s",
                        config=Config(retries={"mode": "standard", "max_attempts": 2}, connect_timeout=1))


@pytest.fixture
def unused_port():
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _send(client, call, **params):
    with pytest.raises(EndpointConnectionError):
        call(**params)


def test_the_counter_counts_every_attempt_by_type_only_while_entered_and_not_paused(client):
    with RequestCounter(client) as counter:
        _send(client, client.head_object, Bucket="b", Key="k")
        _send(client, client.list_objects_v2, Bucket="b")
        with counter.paused():
            _send(client, client.list_objects_v2, Bucket="b")  # what the real run would not send
        _send(client, client.get_bucket_versioning, Bucket="b")  # "all other requests": GET
    _send(client, client.head_object, Bucket="b", Key="k")  # the hook is gone with the job

    attempts = counter.sent().requests["HEAD"]
    assert attempts >= 2  # botocore retried the refused connection: S3 bills retries too
    assert counter.sent().requests == {"HEAD": attempts, "LIST": attempts, "GET": attempts}


def test_a_bill_is_what_was_sent_and_what_was_withheld():
    sent, withheld = Bill(), Bill()
    sent.add("LIST", 3)
    withheld.add("COPY", 2, copied=10, doubled=10)
    withheld.add("LIST")
    total = merged(sent, None, withheld)
    assert total.requests == {"LIST": 4, "COPY": 2}
    assert (total.bytes_copied, total.storage_doubled_bytes) == (10, 10)
    assert sent.requests == {"LIST": 3}  # the parts are left as they were
