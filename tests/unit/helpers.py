"""Helpers shared by the unit tests (plain functions and constants)."""

from __future__ import annotations

import random
import uuid

from botocore.exceptions import ClientError

KiB, MiB, GiB, TiB = 2 ** 10, 2 ** 20, 2 ** 30, 2 ** 40


S3_MAX_PART_SIZE = 5 * GiB  # AWS: a part (UploadPart / UploadPartCopy) is 5 MiB .. 5 GiB


def new_id(rng: random.Random | None = None) -> str:
    """A random version-4 UUID, as Django's ``default=uuid.uuid4`` makes task ids."""
    if rng is None:
        return str(uuid.uuid4())
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def client_error(code: str, status: int, operation: str = "CopyObject") -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}},
                       operation)


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now
