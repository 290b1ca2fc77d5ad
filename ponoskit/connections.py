"""How to reach PostgreSQL and S3: the one place that builds clients.

PostgreSQL: an explicit DSN, else ``DATABASE_URL``, else libpq's own ``PG*`` variables.
S3: the normal AWS configuration (profiles, ``AWS_ENDPOINT_URL``, ``AWS_REQUEST_CHECKSUM_CALCULATION``
...), which we never override; an explicit endpoint switches to path-style addressing, which
MinIO and SeaweedFS need. Errors come out as :class:`ServiceUnreachable` with secrets redacted.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Optional

import boto3
import botocore.session
import psycopg
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from .errors import ConfigError, ServiceUnreachable

# --- PostgreSQL --------------------------------------------------------------------------

_URL_PASSWORD = re.compile(r"(?P<head>://[^:/@\s]*:)(?P<secret>[^@\s]*)(?P<tail>@)")
_KV_PASSWORD = re.compile(r"(?P<head>\b(?:ssl)?password\s*=\s*)(?P<secret>'(?:[^'\\]|\\.)*'|\S+)", re.I)


def resolve_dsn(dsn: Optional[str]) -> str:
    """The DSN to use: explicit, else DATABASE_URL, else "" (libpq reads PG* itself)."""
    if dsn:
        return dsn
    return os.environ.get("DATABASE_URL", "")


def redact(text: str, *secrets: Optional[str]) -> str:
    """Mask DSN passwords (URL and key=value forms) and any given secret in ``text``."""
    text = _URL_PASSWORD.sub(r"\g<head>***\g<tail>", text)
    text = _KV_PASSWORD.sub(r"\g<head>***", text)
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def _dsn_password(dsn: str) -> Optional[str]:
    try:
        return psycopg.conninfo.conninfo_to_dict(dsn).get("password") or os.environ.get("PGPASSWORD")
    except psycopg.ProgrammingError:
        return os.environ.get("PGPASSWORD")


def describe_dsn(dsn: str) -> str:
    """A printable name for the database: user@host:port/dbname, never the password."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "<unparsable DSN>"
    host = info.get("host") or os.environ.get("PGHOST", "localhost")
    return (f"{info.get('user') or os.environ.get('PGUSER', '')}@{host}:"
            f"{info.get('port') or os.environ.get('PGPORT', '5432')}/"
            f"{info.get('dbname') or os.environ.get('PGDATABASE', '')}")


def connect_pg(dsn: Optional[str], *, autocommit: bool = True, application_name: str = "ponos-toolkit",
               **kwargs) -> psycopg.Connection:
    """Open a connection, or raise ServiceUnreachable with a one-line, password-free message."""
    dsn = resolve_dsn(dsn)
    try:
        return psycopg.connect(dsn, autocommit=autocommit, application_name=application_name,
                               connect_timeout=10, **kwargs)
    except psycopg.ProgrammingError as exc:
        one_line = " ".join(str(exc).split())
        raise ConfigError(f"invalid database DSN: {redact(one_line, _dsn_password(dsn))}") from None
    except psycopg.OperationalError as exc:
        first_line = " ".join(str(exc).split())
        raise ServiceUnreachable(
            f"cannot connect to PostgreSQL {describe_dsn(dsn)}: {redact(first_line, _dsn_password(dsn))}"
        ) from None


# --- S3 ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class S3Settings:
    endpoint_url: Optional[str] = None
    profile: Optional[str] = None
    max_pool_connections: int = 64
    # botocore's retry modes do the backoff; "adaptive" also rate-limits the client
    # under sustained 503 SlowDown, so the run slows down instead of failing.
    retry_mode: str = "adaptive"
    max_attempts: int = 10

    @property
    def effective_endpoint(self) -> Optional[str]:
        return self.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")


def s3_session(settings: S3Settings) -> boto3.session.Session:
    core = botocore.session.get_session()
    # Timestamps stay the strings S3 sent: dateutil parsing every LastModified of a listing
    # cost the jobs half of their own CPU (ponoskit.s3.listing.timestamp parses on demand).
    core.get_component("response_parser_factory").set_parser_defaults(timestamp_parser=_unparsed)
    try:
        return boto3.session.Session(botocore_session=core, profile_name=settings.profile)
    except BotoCoreError as exc:
        raise ConfigError(f"AWS configuration: {exc}") from None


def _unparsed(value: str) -> str:
    return value


def s3_client(settings: S3Settings, session: Optional[boto3.session.Session] = None):
    session = session or s3_session(settings)
    s3_options = {"addressing_style": "path"} if settings.effective_endpoint else {}
    config = Config(
        s3=s3_options,
        retries={"mode": settings.retry_mode, "max_attempts": settings.max_attempts},
        max_pool_connections=settings.max_pool_connections,
        connect_timeout=10,
        read_timeout=120,
    )
    try:
        return session.client("s3", endpoint_url=settings.endpoint_url, config=config)
    except (BotoCoreError, ValueError) as exc:
        raise ConfigError(f"S3 configuration: {exc}") from None


def check_bucket(client, bucket: str) -> None:
    """Fail early, with a one-line reason, if ``bucket`` cannot be used."""
    try:
        client.head_bucket(Bucket=bucket)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in ("404", "NoSuchBucket") or status == 404:
            raise ServiceUnreachable(f"bucket {bucket!r} does not exist") from None
        if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch") or status == 403:
            raise ServiceUnreachable(
                f"access to bucket {bucket!r} denied (HTTP 403): check the AWS credentials") from None
        raise ServiceUnreachable(f"bucket {bucket!r}: {code or status}") from None
    except BotoCoreError as exc:
        raise ServiceUnreachable(f"cannot reach S3 for bucket {bucket!r}: {exc}") from None


def obstore_store(settings: S3Settings, session: boto3.session.Session, bucket: str, *, concurrency: int):
    """An obstore S3 store for the fast small-object copy path; credentials come from boto3."""
    from datetime import timedelta

    from obstore.auth.boto3 import Boto3CredentialProvider
    from obstore.store import S3Store

    endpoint = settings.effective_endpoint
    region = session.region_name or os.environ.get("AWS_REGION") or "us-east-1"
    kwargs = {}
    if endpoint:
        kwargs.update(endpoint=endpoint, virtual_hosted_style_request=False)
    return S3Store(
        bucket,
        region=region,
        credential_provider=Boto3CredentialProvider(session),
        client_options={"allow_http": True, "pool_max_idle_per_host": str(concurrency),
                        "timeout": "120s", "connect_timeout": "10s"},
        retry_config={"max_retries": settings.max_attempts, "retry_timeout": timedelta(minutes=5),
                      "backoff": {"init_backoff": timedelta(milliseconds=100),
                                  "max_backoff": timedelta(seconds=20), "base": 2}},
        **kwargs,
    )
