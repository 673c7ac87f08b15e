"""The artifact store on S3 or any S3-compatible server (MinIO, Ceph, moto), through the ``minio`` client.

Where the server is and who we are comes from the environment only, never from a spec or a URI:

===========================  ==========================================================================
``KFTUNE_S3_ENDPOINT``       ``host:port`` or ``http(s)://host:port`` (default ``s3.amazonaws.com``)
``KFTUNE_S3_ACCESS_KEY``     access key (falls back to ``AWS_ACCESS_KEY_ID``); none at all: anonymous
``KFTUNE_S3_SECRET_KEY``     secret key (falls back to ``AWS_SECRET_ACCESS_KEY``)
``KFTUNE_S3_SESSION_TOKEN``  optional STS session token (``AWS_SESSION_TOKEN`` goes with the AWS_* keys)
``KFTUNE_S3_SECURE``         ``true``/``false``: HTTPS or HTTP (default: from the endpoint's scheme, else true)
``KFTUNE_S3_REGION``         optional region (saves a GetBucketLocation request per bucket)
``KFTUNE_S3_CA_BUNDLE``      optional PEM file of CA certificates for a private TLS endpoint
``KFTUNE_S3_RETRIES``        retries of a failed request after the first try (default 4: 5 attempts)
``KFTUNE_S3_TIMEOUT``        seconds to wait for the server to answer or send more bytes (default 60; the
                             connect timeout is the smaller of this and 10 s), so a hung connection ends
``KFTUNE_S3_BACKOFF``        base of the exponential backoff between attempts, in seconds (default 0.5)
===========================  ==========================================================================

Credentials never appear in a repr, a log line or an error message raised here.

Atomicity: an S3 PUT (single or multipart) is atomic: readers see the old object or the whole new one.
``get_file`` downloads to a temporary file beside the destination and renames it into place.

Transient failures (connection refused or reset, connect and read timeouts, HTTP 5xx and 429, ``SlowDown``,
``RequestTimeout``, ``InternalError``, ``ServiceUnavailable``) are retried with exponential backoff and
jitter, a bounded number of times (``KFTUNE_S3_RETRIES``; the wait before retry ``n`` is drawn from
``[d/2, d]``, ``d = min(8 s, KFTUNE_S3_BACKOFF * 2**(n-1))``); then one :class:`S3UnavailableError` names
the operation, the object's URI, the endpoint, the attempts and what to check. Every operation is
idempotent (whole-object PUT, GET, HEAD, DELETE, LIST), so retrying one is safe; a conditional PUT that is
retried after its first try landed answers "precondition failed", which :mod:`kftune.io.lease` resolves by
reading the object back.

Conditional writes (:class:`~kftune.io.store.ConditionalWrites`, for the run lease): ``If-None-Match: *`` and
``If-Match: <ETag>`` on PUT, ``If-Match`` on DELETE (S3 since 2024, MinIO, moto). A server that ignores
these headers is detected by :mod:`kftune.io.lease`, which then verifies its writes by reading them back.
"""

from __future__ import annotations

import io
import logging
import mimetypes
import os
import random
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, TypeVar
from urllib.parse import urlsplit

from kftune.core.errors import ArtifactNotFoundError, ConfigError, KftuneError, Problem
from kftune.io.local_store import atomic_write
from kftune.io.store import check_key, check_prefix, is_under

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_ENDPOINT = "s3.amazonaws.com"
CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 60.0
DEFAULT_RETRIES = 4
DEFAULT_BACKOFF_S = 0.5
MAX_BACKOFF_S = 8.0
_CHUNK = 1024 * 1024

_MISSING_CODES = frozenset({"NoSuchKey", "NoSuchBucket"})
_TRANSIENT_CODES = frozenset({
    "SlowDown", "RequestTimeout", "InternalError", "ServiceUnavailable", "InternalServerError",
    "OperationAborted", "TooManyRequests", "XMinioServerNotInitialized",
})
_PRECONDITION_CODES = frozenset({"PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey"})
_PERMISSION_CODES = frozenset({
    "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AllAccessDisabled",
    "ExpiredToken", "InvalidToken", "AccountProblem",
})
_CREDENTIALS_HINT = (
    "check that KFTUNE_S3_ACCESS_KEY and KFTUNE_S3_SECRET_KEY (or AWS_ACCESS_KEY_ID and "
    "AWS_SECRET_ACCESS_KEY) hold credentials allowed to do this, and that KFTUNE_S3_ENDPOINT and "
    "KFTUNE_S3_REGION name the right server"
)
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")
_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


class S3StoreError(KftuneError, OSError):
    """An S3 request that failed for a reason other than a missing object or missing permissions."""


class S3UnavailableError(S3StoreError, ConnectionError):
    """The S3 endpoint kept failing with transient errors until the retries ran out. ``action``, ``uri``,
    ``endpoint`` and ``attempts`` say what failed where (the message says it too, with what to check)."""

    def __init__(self, message: str, *, action: str = "", uri: str = "", endpoint: str = "", attempts: int = 0):
        super().__init__(message)
        self.action, self.uri, self.endpoint, self.attempts = action, uri, endpoint, attempts


# ---------------------------------------------------------------------------------------------------------
# settings from the environment


@dataclass(frozen=True)
class S3Settings:
    """How to reach the S3 server. Secrets are excluded from ``repr`` (and thus from logs and errors)."""

    endpoint: str = DEFAULT_ENDPOINT  # host[:port], no scheme
    secure: bool = True
    region: str | None = None
    ca_bundle: str | None = None
    retries: int = DEFAULT_RETRIES
    timeout_s: float = READ_TIMEOUT_S
    backoff_s: float = DEFAULT_BACKOFF_S
    access_key: str | None = field(default=None, repr=False)
    secret_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)

    @property
    def endpoint_url(self) -> str:
        return f"{'https' if self.secure else 'http'}://{self.endpoint}"

    @property
    def secrets(self) -> tuple[str, ...]:
        """The values that must never be shown (for redaction)."""
        return tuple(s for s in (self.access_key, self.secret_key, self.session_token) if s)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "S3Settings":
        """Read the ``KFTUNE_S3_*`` variables (see the module docstring); raise :class:`ConfigError` on bad values."""
        env = os.environ if env is None else env
        problems: list[Problem] = []

        def get(name: str) -> str | None:
            value = env.get(name)
            return value.strip() if value is not None and value.strip() else None

        raw_endpoint = get("KFTUNE_S3_ENDPOINT") or DEFAULT_ENDPOINT
        endpoint, scheme_secure = _parse_endpoint(raw_endpoint, problems)

        secure = scheme_secure if scheme_secure is not None else True
        raw_secure = get("KFTUNE_S3_SECURE")
        if raw_secure is not None:
            if raw_secure.lower() in _TRUE:
                secure = True
            elif raw_secure.lower() in _FALSE:
                secure = False
            else:
                problems.append(Problem("KFTUNE_S3_SECURE", f"{raw_secure!r} is not a boolean; use true or false"))
            if scheme_secure is not None and secure != scheme_secure:
                problems.append(Problem(
                    "KFTUNE_S3_SECURE",
                    f"{raw_secure!r} contradicts the scheme of KFTUNE_S3_ENDPOINT {raw_endpoint!r}; "
                    "drop one of them"))

        access_key = get("KFTUNE_S3_ACCESS_KEY") or get("AWS_ACCESS_KEY_ID")
        secret_key = get("KFTUNE_S3_SECRET_KEY") or get("AWS_SECRET_ACCESS_KEY")
        # An AWS session token belongs to the AWS key pair: never pair it with KFTUNE_S3_* keys.
        from_aws = get("KFTUNE_S3_ACCESS_KEY") is None and get("KFTUNE_S3_SECRET_KEY") is None
        session_token = get("KFTUNE_S3_SESSION_TOKEN") or (get("AWS_SESSION_TOKEN") if from_aws else None)
        if bool(access_key) != bool(secret_key):
            have, missing = (("access key", "KFTUNE_S3_SECRET_KEY (or AWS_SECRET_ACCESS_KEY)") if access_key
                             else ("secret key", "KFTUNE_S3_ACCESS_KEY (or AWS_ACCESS_KEY_ID)"))
            problems.append(Problem(missing.split(" ")[0],
                                    f"an S3 {have} is set but {missing} is not; set both, or neither for "
                                    "anonymous access"))

        ca_bundle = get("KFTUNE_S3_CA_BUNDLE")
        if ca_bundle is not None and not Path(ca_bundle).is_file():
            problems.append(Problem("KFTUNE_S3_CA_BUNDLE", f"{ca_bundle!r} is not a file; give a PEM file of CA "
                                                           "certificates or unset the variable"))
        retries = _number(get("KFTUNE_S3_RETRIES"), "KFTUNE_S3_RETRIES", DEFAULT_RETRIES, 0, 20, problems,
                          integer=True, unit="retries")
        timeout_s = _number(get("KFTUNE_S3_TIMEOUT"), "KFTUNE_S3_TIMEOUT", READ_TIMEOUT_S, 0.05, 3600.0, problems)
        backoff_s = _number(get("KFTUNE_S3_BACKOFF"), "KFTUNE_S3_BACKOFF", DEFAULT_BACKOFF_S, 0.0, 60.0, problems)
        if problems:
            raise ConfigError(problems, source="S3 settings from the environment")
        return cls(endpoint=endpoint, secure=secure, region=get("KFTUNE_S3_REGION"), ca_bundle=ca_bundle,
                   retries=int(retries), timeout_s=timeout_s, backoff_s=backoff_s,
                   access_key=access_key, secret_key=secret_key, session_token=session_token)

    def make_client(self, env: Mapping[str, str] | None = None) -> Any:
        """A ``minio.Minio`` client for these settings, with urllib3's own retries off (we retry ourselves)."""
        import certifi
        import urllib3
        from minio import Minio

        env = os.environ if env is None else env
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=min(CONNECT_TIMEOUT_S, self.timeout_s), read=self.timeout_s),
            maxsize=10,
            cert_reqs="CERT_REQUIRED",
            ca_certs=self.ca_bundle or env.get("SSL_CERT_FILE") or certifi.where(),
            retries=False,
        )
        return Minio(self.endpoint, access_key=self.access_key, secret_key=self.secret_key,
                     session_token=self.session_token, secure=self.secure, region=self.region,
                     http_client=http)


def _number(raw: str | None, name: str, default: float, low: float, high: float, problems: list[Problem], *,
            integer: bool = False, unit: str = "seconds") -> float:
    """``raw`` as a number in ``[low, high]`` (``default`` when unset); a problem naming ``name`` otherwise."""
    if raw is None:
        return default
    try:
        value = int(raw) if integer else float(raw)
    except ValueError:
        value = None
    if value is None or value != value or not low <= value <= high:  # value != value: NaN
        kind = "an integer" if integer else "a number"
        problems.append(Problem(name, f"{raw!r} must be {kind} of {unit} from {low:g} to {high:g} "
                                      f"(default {default:g})"))
        return default
    return value


def _parse_endpoint(raw: str, problems: list[Problem]) -> tuple[str, bool | None]:
    """``host:port`` or ``http(s)://host:port`` -> (``host:port``, secure-from-scheme or None)."""
    scheme_secure: bool | None = None
    text = raw
    lowered = raw.lower()
    if lowered.startswith("https://"):
        scheme_secure, text = True, raw[len("https://"):]
    elif lowered.startswith("http://"):
        scheme_secure, text = False, raw[len("http://"):]
    elif "://" in raw:
        problems.append(Problem("KFTUNE_S3_ENDPOINT", "only http:// and https:// endpoints are supported"))
        return DEFAULT_ENDPOINT, None
    text = text.rstrip("/")
    if "@" in text:  # never echo it: it may hold credentials
        problems.append(Problem("KFTUNE_S3_ENDPOINT", "must not contain user info ('user:password@'); put the "
                                                      "credentials in KFTUNE_S3_ACCESS_KEY and KFTUNE_S3_SECRET_KEY"))
        return DEFAULT_ENDPOINT, None
    parts = urlsplit("//" + text)
    try:
        port = parts.port
    except ValueError:
        port, parts = None, None
    if parts is None or not parts.hostname or parts.path or parts.query or parts.fragment:
        problems.append(Problem("KFTUNE_S3_ENDPOINT", f"{raw!r} is not host[:port] or http(s)://host[:port] "
                                                      "(no path), e.g. minio.kubeflow:9000"))
        return DEFAULT_ENDPOINT, None
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    return (f"{host}:{port}" if port else host), scheme_secure


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket[/prefix]`` -> (bucket, prefix without surrounding ``/``); :class:`ConfigError` if malformed."""
    if not uri.startswith("s3://"):
        raise ConfigError([Problem("uri", f"{uri!r} is not an s3:// URI; use s3://bucket/prefix")])
    bucket, _, prefix = uri[len("s3://"):].partition("/")
    if not _BUCKET_RE.match(bucket) or ".." in bucket:
        raise ConfigError([Problem("uri", f"{bucket!r} in {uri!r} is not a valid S3 bucket name (3-63 characters: "
                                          "lowercase letters, digits, '.' and '-', starting and ending with a "
                                          "letter or digit)")])
    prefix = prefix.strip("/")
    if prefix:
        try:
            check_key(prefix)
        except ValueError as exc:
            raise ConfigError([Problem("uri", f"bad prefix in {uri!r}: {exc}")]) from exc
    return bucket, prefix


# ---------------------------------------------------------------------------------------------------------
# the store


def _status(exc: BaseException) -> int | None:
    from minio.error import InvalidResponseError, S3Error, ServerError

    if isinstance(exc, S3Error):
        return getattr(exc.response, "status", None)
    if isinstance(exc, ServerError):
        return exc.status_code
    if isinstance(exc, InvalidResponseError):
        return getattr(exc, "_code", None)
    return None


def is_transient(exc: BaseException) -> bool:
    """Whether retrying the same request may succeed (see the module docstring for the list)."""
    import urllib3.exceptions as u3
    from minio.error import S3Error

    if isinstance(exc, S3Error) and exc.code in _TRANSIENT_CODES:
        return True
    status = _status(exc)
    if status is not None:
        return status >= 500 or status == 429
    if isinstance(exc, u3.SSLError):
        return False  # a certificate problem does not go away by itself
    if isinstance(exc, u3.MaxRetryError):
        return exc.reason is None or is_transient(exc.reason)
    return isinstance(exc, (u3.TimeoutError, u3.ProtocolError, u3.ProxyError, u3.DecodeError,
                            ConnectionError, TimeoutError))


class S3Store:
    """An :class:`~kftune.io.store.ArtifactStore` under ``s3://bucket/prefix``.

    Build it with :meth:`from_uri` (settings from the environment). The constructor takes any object with
    the ``minio.Minio`` methods used here, so tests can inject failures. ``attempts`` bounds the tries of each
    request; the wait before try ``n+1`` is drawn from ``[d/2, d]`` with ``d = min(max_delay, base_delay *
    2**(n-1))``, and ``sleep`` is called to wait (injectable, so tests do not wait).

    ``list(prefix)`` matches whole segments, like :class:`~kftune.io.local_store.LocalStore`; objects whose
    names are not valid keys (``dir/`` folder markers made by consoles, ``a//b``) are skipped.
    """

    def __init__(self, bucket: str, prefix: str = "", *, client: Any, endpoint_url: str = "(custom client)",
                 region: str | None = None, attempts: int = DEFAULT_RETRIES + 1, base_delay: float = DEFAULT_BACKOFF_S,
                 max_delay: float = MAX_BACKOFF_S,
                 sleep: Callable[[float], None] = time.sleep, part_size: int = 0,
                 secrets: tuple[str, ...] = ()):
        if attempts < 1:
            raise ValueError(f"attempts must be >= 1, got {attempts}")
        if base_delay < 0 or max_delay < 0:
            raise ValueError(f"retry delays must be >= 0, got base_delay={base_delay}, max_delay={max_delay}")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint_url = endpoint_url
        self.region = region
        self.attempts, self.base_delay, self.max_delay = attempts, base_delay, max_delay
        self.part_size = part_size
        self._client = client
        self._sleep = sleep
        self._secrets = tuple(s for s in secrets if s)
        self._random = random.Random()

    @classmethod
    def from_uri(cls, uri: str, *, env: Mapping[str, str] | None = None, **options: Any) -> "S3Store":
        """The store for ``s3://bucket[/prefix]`` with endpoint and credentials from ``env`` (default
        ``os.environ``). ``options`` go to the constructor (``attempts``, ``sleep``, ``part_size``, ...) and
        override ``KFTUNE_S3_RETRIES`` and ``KFTUNE_S3_BACKOFF``."""
        bucket, prefix = parse_s3_uri(uri)
        settings = S3Settings.from_env(env)
        options = {"attempts": settings.retries + 1, "base_delay": settings.backoff_s, **options}
        store = cls(bucket, prefix, client=settings.make_client(env), endpoint_url=settings.endpoint_url,
                    region=settings.region, secrets=settings.secrets, **options)
        log.debug("opened %r (credentials: %s)", store, "set" if settings.access_key else "anonymous")
        return store

    # naming -------------------------------------------------------------------------------------------------

    @property
    def root_uri(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    def uri_for(self, key: str) -> str:
        return f"{self.root_uri}/{check_key(key)}"

    def object_name(self, key: str) -> str:
        """The S3 object name of ``key`` (``prefix/key``)."""
        return f"{self.prefix}/{check_key(key)}" if self.prefix else check_key(key)

    def __repr__(self) -> str:
        return f"S3Store({self.root_uri!r}, endpoint={self.endpoint_url!r})"

    # writes ---------------------------------------------------------------------------------------------

    def put_bytes(self, key: str, data: bytes) -> None:
        name, uri = self.object_name(key), self.uri_for(key)
        data = bytes(data)
        self._run("upload", uri, lambda: self._client.put_object(
            self.bucket, name, io.BytesIO(data), len(data), content_type=_content_type(key)))
        log.debug("wrote %s (%d bytes)", uri, len(data))

    def put_file(self, key: str, path: str | Path) -> None:
        name, uri, path = self.object_name(key), self.uri_for(key), Path(path)
        size = path.stat().st_size  # a missing source raises the caller's FileNotFoundError here
        start = time.monotonic()
        # fput_object streams from disk and switches to a multipart upload above one part (5 MiB by default).
        self._run("upload", uri, lambda: self._client.fput_object(
            self.bucket, name, str(path), content_type=_content_type(key), part_size=self.part_size))
        log.debug("uploaded %s to %s (%d bytes, %.1f s)", path, uri, size, time.monotonic() - start)

    def delete(self, key: str) -> None:
        name, uri = self.object_name(key), self.uri_for(key)
        try:
            self._run("delete", uri, lambda: self._client.remove_object(self.bucket, name), not_found=True)
        except ArtifactNotFoundError:
            return
        log.debug("deleted %s", uri)

    def ensure_bucket(self) -> bool:
        """Create the bucket if it does not exist; return whether it was created."""
        from minio.error import S3Error

        uri = f"s3://{self.bucket}"
        if self._run("check bucket", uri, lambda: self._client.bucket_exists(self.bucket)):
            return False
        try:
            self._run("create bucket", uri, lambda: self._client.make_bucket(self.bucket, location=self.region))
        except S3StoreError as exc:
            cause = exc.__cause__
            if isinstance(cause, S3Error) and cause.code in {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}:
                return False  # created concurrently (by another pod, or our own retried request)
            raise
        log.info("created bucket %s at %s", uri, self.endpoint_url)
        return True

    # conditional writes (ConditionalWrites) -------------------------------------------------------------

    @property
    def conditional_writes(self) -> bool:
        """Whether the client can send conditional headers: ``minio.Minio``'s ``_put_object`` and ``_execute``
        (minio 7.2) take raw headers; a client without them (a test fake, a future minio) makes
        :mod:`kftune.io.lease` write and read back instead."""
        import inspect

        try:
            return all("headers" in inspect.signature(getattr(self._client, name)).parameters
                       for name in ("_put_object", "_execute"))
        except (AttributeError, TypeError, ValueError):
            return False

    def get_versioned(self, key: str) -> tuple[bytes, str]:
        name, uri = self.object_name(key), self.uri_for(key)

        def fetch() -> tuple[bytes, str]:
            response = self._client.get_object(self.bucket, name)
            try:
                return response.read(), _etag(response.headers.get("etag"))
            finally:
                response.close()
                response.release_conn()

        return self._run("download", uri, fetch, not_found=True)

    def put_if_absent(self, key: str, data: bytes) -> str | None:
        return self._put_if(key, bytes(data), {"If-None-Match": "*"})

    def put_if_version(self, key: str, data: bytes, version: str) -> str | None:
        return self._put_if(key, bytes(data), {"If-Match": f'"{version}"'})

    def delete_if_version(self, key: str, version: str) -> bool:
        name, uri = self.object_name(key), self.uri_for(key)
        try:
            # minio's remove_object takes no headers; _execute is the call it makes, with our condition added.
            self._run("delete", uri, lambda: self._client._execute(
                "DELETE", self.bucket, name, headers={"If-Match": f'"{version}"'}))
        except S3StoreError as exc:
            if _precondition_failed(exc.__cause__):
                return False
            raise
        return True

    def _put_if(self, key: str, data: bytes, condition: Mapping[str, str]) -> str | None:
        name, uri = self.object_name(key), self.uri_for(key)
        headers = {"Content-Type": _content_type(key), **condition}
        try:
            # put_object would turn unknown headers into x-amz-meta-* metadata; _put_object sends them as is.
            result = self._run("upload", uri, lambda: self._client._put_object(self.bucket, name, data,
                                                                                headers=headers))
        except S3StoreError as exc:
            if _precondition_failed(exc.__cause__):
                return None
            raise
        return _etag(getattr(result, "etag", None)) or _etag(self.get_versioned(key)[1])

    # reads ----------------------------------------------------------------------------------------------

    def get_bytes(self, key: str) -> bytes:
        name, uri = self.object_name(key), self.uri_for(key)

        def fetch() -> bytes:
            response = self._client.get_object(self.bucket, name)
            try:
                return response.read()
            finally:
                response.close()
                response.release_conn()

        return self._run("download", uri, fetch, not_found=True)

    def get_file(self, key: str, path: str | Path) -> None:
        name, uri, dest = self.object_name(key), self.uri_for(key), Path(path)

        def fetch() -> None:
            response = self._client.get_object(self.bucket, name)
            try:
                # A failed or truncated transfer raises inside atomic_write, which removes its temporary file.
                atomic_write(dest, lambda fh: _copy_stream(response, fh))
            finally:
                response.close()
                response.release_conn()

        start = time.monotonic()
        self._run("download", uri, fetch, not_found=True)
        log.debug("downloaded %s to %s (%.1f s)", uri, dest, time.monotonic() - start)

    def exists(self, key: str) -> bool:
        name, uri = self.object_name(key), self.uri_for(key)
        try:
            self._run("check", uri, lambda: self._client.stat_object(self.bucket, name), not_found=True)
        except ArtifactNotFoundError:
            return False
        return True

    def list(self, prefix: str = "") -> list[str]:
        prefix = check_prefix(prefix)
        if prefix:
            s3_prefix = self.object_name(prefix)
        else:
            s3_prefix = f"{self.prefix}/" if self.prefix else ""
        uri = f"{self.root_uri}/{prefix}" if prefix else self.root_uri

        def listing() -> list[str]:
            return [obj.object_name for obj in
                    self._client.list_objects(self.bucket, prefix=s3_prefix or None, recursive=True)]

        try:
            names = self._run("list", uri, listing, not_found=True)
        except ArtifactNotFoundError:
            log.warning("bucket s3://%s does not exist at %s: listing %s as empty", self.bucket,
                        self.endpoint_url, uri)
            return []
        strip = len(self.prefix) + 1 if self.prefix else 0
        keys = []
        for name in names:
            if self.prefix and not name.startswith(self.prefix + "/"):
                continue
            key = name[strip:]
            try:
                check_key(key)
            except ValueError:
                log.debug("skipping s3://%s/%s: not a valid key", self.bucket, name)
                continue
            if is_under(key, prefix):
                keys.append(key)
        return sorted(keys)

    # retries and error mapping ------------------------------------------------------------------------------

    def _redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def _describe(self, exc: BaseException) -> str:
        from minio.error import S3Error

        if isinstance(exc, S3Error):
            text = f"{exc.code}: {exc.message} (HTTP {_status(exc)})"
        else:
            text = f"{type(exc).__name__}: {exc}"
        return self._redact(text)

    def _delay(self, failed_attempt: int) -> float:
        cap = min(self.max_delay, self.base_delay * 2 ** (failed_attempt - 1))
        return cap / 2 + self._random.uniform(0, cap / 2)

    def _run(self, action: str, uri: str, fn: Callable[[], T], *, not_found: bool = False) -> T:
        """Call ``fn`` with retries; map what the server says to our exceptions (always ``from`` the cause).

        ``not_found``: a missing key or bucket raises :class:`ArtifactNotFoundError` (reads); otherwise a
        missing bucket is an :class:`S3StoreError` that says to create it.
        """
        import urllib3.exceptions as u3
        from minio.error import MinioException, S3Error

        start = time.monotonic()
        for attempt in range(1, self.attempts + 1):
            try:
                return fn()
            except Exception as exc:  # noqa: BLE001 - classified below, re-raised as ours or as is
                if is_transient(exc):
                    if attempt < self.attempts:
                        delay = self._delay(attempt)
                        log.warning("%s %s failed (%s); retry %d/%d in %.2f s", action, uri, self._describe(exc),
                                    attempt, self.attempts - 1, delay)
                        self._sleep(delay)
                        continue
                    raise S3UnavailableError(
                        f"{action} {uri} failed after {self.attempts} attempts over "
                        f"{time.monotonic() - start:.1f} s at {self.endpoint_url}: {self._describe(exc)}; the S3 "
                        "server is unreachable, hanging or overloaded (check KFTUNE_S3_ENDPOINT and "
                        "KFTUNE_S3_SECURE, and that the server is up; KFTUNE_S3_RETRIES and KFTUNE_S3_TIMEOUT set "
                        "how long to keep trying)", action=action, uri=uri, endpoint=self.endpoint_url,
                        attempts=self.attempts) from exc
                if isinstance(exc, S3Error):
                    if exc.code in _MISSING_CODES and not_found:
                        raise ArtifactNotFoundError(uri) from exc
                    if exc.code == "NoSuchBucket":
                        raise S3StoreError(
                            f"{action} {uri}: bucket {self.bucket!r} does not exist at {self.endpoint_url}; "
                            "create it (the bucket job in manifests/, or S3Store.ensure_bucket())") from exc
                    if exc.code in _PERMISSION_CODES:
                        raise PermissionError(
                            f"{action} {uri} refused at {self.endpoint_url} ({self._describe(exc)}): "
                            f"{_CREDENTIALS_HINT}") from exc
                if isinstance(exc, u3.SSLError) or (isinstance(exc, u3.MaxRetryError)
                                                    and isinstance(exc.reason, u3.SSLError)):
                    raise S3StoreError(
                        f"{action} {uri}: TLS failed at {self.endpoint_url} ({self._describe(exc)}); set "
                        "KFTUNE_S3_CA_BUNDLE to the server's CA certificates, or KFTUNE_S3_SECURE=false for a "
                        "plain-HTTP server") from exc
                if isinstance(exc, (MinioException, u3.HTTPError)):
                    raise S3StoreError(f"{action} {uri} failed at {self.endpoint_url}: {self._describe(exc)}") \
                        from exc
                raise  # local errors (disk full, a missing source file): the caller's to see as they are
        raise AssertionError("unreachable")  # the loop always returns or raises


def _etag(value: Any) -> str:
    return str(value or "").strip().strip('"')


def _precondition_failed(exc: BaseException | None) -> bool:
    """Whether a conditional request was refused because its condition did not hold (412, or 409/404)."""
    from minio.error import S3Error

    if exc is None:
        return False
    return (isinstance(exc, S3Error) and exc.code in _PRECONDITION_CODES) or _status(exc) == 412


def _content_type(key: str) -> str:
    guessed, _ = mimetypes.guess_type(key)
    return guessed or "application/octet-stream"


def _copy_stream(response: Any, fh: Any) -> None:
    for chunk in response.stream(_CHUNK):
        fh.write(chunk)
