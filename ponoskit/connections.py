"""How to reach PostgreSQL and S3: the one place that builds clients.

PostgreSQL: an explicit DSN, else ``DATABASE_URL``, else libpq's own ``PG*`` variables.
S3: the normal AWS configuration (profiles, ``AWS_ENDPOINT_URL``, ``AWS_REQUEST_CHECKSUM_CALCULATION``
...), which we never override; an explicit endpoint switches to path-style addressing, which
MinIO and SeaweedFS need, and reaches the obstore fast path too. Errors come out typed
(:class:`ServiceUnreachable`: run again later; :class:`AccessDenied` or :class:`ConfigError`: fix
the configuration) with secrets redacted.
"""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass
from typing import Optional
from urllib.parse import urlsplit

import boto3
import botocore.loaders
import botocore.session
import psycopg
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from .errors import AccessDenied, ConfigError, ServiceUnreachable

# --- PostgreSQL --------------------------------------------------------------------------

_URL_PASSWORD = re.compile(r"(?P<head>://[^:/@\s]*:)(?P<secret>[^@\s]*)(?P<tail>@)")
# An S3 endpoint with userinfo but no password (https://token@host): all of it is the secret.
_URL_USERINFO = re.compile(r"(?P<head>\bhttps?://)(?P<secret>[^:/@\s]+)(?P<tail>@)", re.I)
_KV_PASSWORD = re.compile(r"(?P<head>\b(?:ssl)?password\s*=\s*)(?P<secret>'(?:[^'\\]|\\.)*'|\S+)", re.I)


def resolve_dsn(dsn: Optional[str]) -> str:
    """The DSN to use: explicit, else DATABASE_URL, else "" (libpq reads PG* itself)."""
    if dsn:
        return dsn
    return os.environ.get("DATABASE_URL", "")


def redact(text: str, *secrets: Optional[str]) -> str:
    """Mask DSN passwords (URL and key=value forms) and any given secret in ``text``."""
    text = _URL_PASSWORD.sub(r"\g<head>***\g<tail>", text)
    text = _URL_USERINFO.sub(r"\g<head>***\g<tail>", text)
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
        first_line = redact(" ".join(str(exc).split()), _dsn_password(dsn))
        message = f"cannot connect to PostgreSQL {describe_dsn(dsn)}: {first_line}"
        # A server that answers and says no is configuration; one that does not answer may be
        # failing over (exit 75: a Job or a cron wrapper retries it).
        if any(words in first_line for words in _PG_REFUSALS):
            raise AccessDenied(message) from None
        raise ServiceUnreachable(message) from None


_PG_REFUSALS = ("authentication failed", "password", "does not exist", "no pg_hba.conf entry",
                "permission denied", "not permitted to log in", "could not translate host name",
                "Name or service not known", "SSL", "certificate")


# --- S3 ----------------------------------------------------------------------------------

AWS_HOST_SUFFIXES = (".amazonaws.com", ".amazonaws.com.cn", ".api.aws")


@dataclass(frozen=True)
class S3Settings:
    endpoint_url: Optional[str] = None
    profile: Optional[str] = None
    max_pool_connections: int = 64
    concurrency: int = 64  # S3 requests in flight at most (the limiter's window starts there)
    max_rps: Optional[float] = None  # a ceiling on S3 requests per second, for shared buckets
    retry_deadline: float = 900.0  # seconds of uninterrupted throttling or 5xx before the run stops
    # botocore retries connection blips and 5xx a few times; throttling and longer outages are
    # the jobs' own retry loop's (ponoskit.s3.retry), which also slows the whole run down.
    max_attempts: int = 4
    read_timeout: int = 120  # per socket read, not per request: a long copy streams its answer


@functools.lru_cache(maxsize=None)
def _data_loader(data_path: Optional[str]) -> botocore.loaders.Loader:
    """botocore's data loader (the S3 service model, endpoints, retry rules), one per process:
    each new session would parse the same JSON again, 0.1 s of CPU each (a job's context, its
    report and a probe each make a session; the tests make thousands)."""
    return botocore.loaders.create_loader(data_path)


def s3_session(settings: S3Settings) -> boto3.session.Session:
    from .s3.lean_parse import LeanParserFactory
    core = botocore.session.get_session()
    core.register_component("data_loader", _data_loader(core.get_config_variable("data_path")))
    # Listings and DeleteObjects answers parsed by ElementTree (a third of botocore's CPU);
    # timestamps stay the strings S3 sent: dateutil parsing every LastModified of a listing
    # cost the jobs half of their own CPU (ponoskit.s3.listing.timestamp parses on demand).
    factory = LeanParserFactory()
    factory.set_parser_defaults(timestamp_parser=_unparsed)
    core.register_component("response_parser_factory", factory)
    try:
        return boto3.session.Session(botocore_session=core, profile_name=settings.profile)
    except BotoCoreError as exc:
        raise ConfigError(f"AWS configuration: {exc}") from None


def _unparsed(value: str) -> str:
    return value


def is_aws_endpoint(url: Optional[str]) -> bool:
    host = (urlsplit(url).hostname or "") if url else ""
    return not host or host.endswith(AWS_HOST_SUFFIXES)


def s3_client(settings: S3Settings, session: Optional[boto3.session.Session] = None):
    """A boto3 client; an endpoint that is not AWS (explicit, AWS_ENDPOINT_URL, or set in the
    profile) gets path-style addressing, which MinIO and SeaweedFS need."""
    session = session or s3_session(settings)

    def build(path_style: bool):
        config = Config(
            s3={"addressing_style": "path"} if path_style else {},
            retries={"mode": "standard", "max_attempts": settings.max_attempts},
            max_pool_connections=settings.max_pool_connections,
            connect_timeout=10,
            read_timeout=settings.read_timeout,
        )
        try:
            return session.client("s3", endpoint_url=settings.endpoint_url, config=config)
        except (BotoCoreError, ValueError) as exc:
            raise ConfigError(f"S3 configuration: {redact(str(exc))}") from None

    client = build(path_style=bool(settings.endpoint_url))
    if not settings.endpoint_url and not is_aws_endpoint(client.meta.endpoint_url):
        client = build(path_style=True)  # the endpoint came from the environment or the profile
    _cheaper_200_error_check(client)
    return client


# A 200 whose body is an <Error> (S3 documents it for copies), or a body cut short by the
# network, must fail and be retried. botocore checks by parsing every 200 body with
# ElementTree before its own parser parses it again: a fifth of the jobs' CPU, on listings and
# DeleteObjects answers. The same two checks, on the body's first and last bytes:
_XML_ROOT = re.compile(rb"\s*(?:<\?xml[^>]*\?>)?\s*<([A-Za-z_][\w.:-]*)")


def _error_or_truncated(body: bytes) -> bool:
    root = _XML_ROOT.match(body[:1024])
    if root is None:
        return True  # not XML at all: what botocore's parse would have failed on
    if root[1] == b"Error":
        return True
    end = body.rstrip()
    if end.endswith(b"</" + root[1] + b">"):
        return False
    # An empty root element, <VersioningConfiguration/>, closes itself.
    return not (end.endswith(b"/>") and b">" not in body[root.end():len(end) - 2])


def _handle_200_error(operation_model, response_dict, **_):
    if not response_dict or response_dict.get("status_code") != 200 or not response_dict.get("body"):
        return
    output = operation_model.output_shape
    if operation_model.has_event_stream_output or output is None:
        return
    payload = output.serialization.get("payload")
    if payload is not None and output.members[payload].type_name in ("blob", "string"):
        return  # a streamed object body (GetObject) is not XML
    if _error_or_truncated(response_dict["body"]):
        response_dict["status_code"] = 500


def _cheaper_200_error_check(client) -> None:
    import botocore.handlers
    events = client.meta.events
    original = getattr(botocore.handlers, "_handle_200_error", None)
    if original is None:
        return  # another botocore: keep whatever it does
    events.unregister("before-parse.s3.*", original)
    events.register_first("before-parse.s3.*", _handle_200_error)


def configured_endpoint(client) -> Optional[str]:
    """The endpoint the client really uses when it is not AWS's own, else None."""
    url = client.meta.endpoint_url
    return None if is_aws_endpoint(url) else url


def describe_endpoint(client) -> str:
    """A printable endpoint for reports: the URL without userinfo, or aws:<region>."""
    url = configured_endpoint(client)
    return redact(url) if url else f"aws:{client.meta.region_name}"


def check_bucket(client, bucket: str) -> Optional[str]:
    """Fail early, with a one-line reason, if ``bucket`` cannot be used; return its region."""
    from .s3.errors import Kind, kind_of, one_line
    try:
        answer = client.head_bucket(Bucket=bucket)
    except (ClientError, BotoCoreError) as exc:
        kind = kind_of(exc)
        if kind is Kind.NOT_FOUND:
            raise ConfigError(f"bucket {bucket!r} does not exist") from None
        if kind is Kind.PERMISSION:
            raise AccessDenied(f"access to bucket {bucket!r} denied (HTTP 403): check the AWS credentials "
                               "and the policy (s3:ListBucket)") from None
        if kind in (Kind.TRANSIENT, Kind.THROTTLED):
            raise ServiceUnreachable(f"cannot reach S3 for bucket {bucket!r}: {redact(one_line(exc))}") from None
        raise ConfigError(f"bucket {bucket!r}: {redact(one_line(exc))}") from None
    headers = answer.get("ResponseMetadata", {}).get("HTTPHeaders", {})
    return answer.get("BucketRegion") or headers.get("x-amz-bucket-region")


def obstore_store(settings: S3Settings, session: boto3.session.Session, client, bucket: str, *,
                  concurrency: int, region: Optional[str] = None, conditional_copy: bool = False,
                  retries: int = 0):
    """An obstore S3 store for the fast small-object copy path; credentials come from boto3.

    obstore does not retry by default: the jobs' retry loop does, so throttling is seen and
    slows every worker down (ponoskit.s3.limiter); bulk loaders without one pass ``retries``. ``conditional_copy`` sends ``If-None-Match: *``
    with every copy: a key that exists is never overwritten (AlreadyExistsError instead).
    """
    from datetime import timedelta

    from obstore.auth.boto3 import Boto3CredentialProvider
    from obstore.store import S3Store

    endpoint = configured_endpoint(client)
    kwargs = {}
    if endpoint:
        kwargs.update(endpoint=endpoint, virtual_hosted_style_request=False)
    if conditional_copy:
        kwargs["copy_if_not_exists"] = "header:If-None-Match:*"
    return S3Store(
        bucket,
        region=region or client.meta.region_name or "us-east-1",
        credential_provider=Boto3CredentialProvider(session),
        # A whole-request timeout: only objects up to ponoskit.s3.copy.OBSTORE_MAX_SIZE take
        # this path, which copy in well under it; larger ones go in parts through boto3.
        client_options={"allow_http": True, "pool_max_idle_per_host": str(concurrency),
                        "timeout": "300s", "connect_timeout": "10s"},
        retry_config={"max_retries": retries, "retry_timeout": timedelta(seconds=180 if retries else 0),
                      "backoff": {"init_backoff": timedelta(milliseconds=100),
                                  "max_backoff": timedelta(seconds=20), "base": 2}},
        **kwargs,
    )
