"""A store in an S3 bucket (``s3://bucket/prefix``), through boto3.

Keys are stored as ``prefix + "/" + key`` when the store has a prefix. ``put_if_absent`` is
a conditional ``PutObject`` (``If-None-Match: *``), which S3 evaluates atomically.

botocore's own retries are off (one attempt per call): retrying happens in one place,
``RetryingStore``. Every vendor error is translated here, at the boundary, into an r2b error
(see ``translate_client_error`` / ``translate_botocore_error``). Messages are composed from
the error code, the operation, the key and the bucket only: they never contain credentials.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionError,
    ConnectTimeoutError,
    CredentialRetrievalError,
    HTTPClientError,
    IncompleteReadError,
    NoCredentialsError,
    PartialCredentialsError,
    ProxyConnectionError,
    SSLError,
    UnknownCredentialError,
)

from r2b.errors import (
    BadInput,
    BucketMissing,
    NotFound,
    PermanentStoreError,
    R2BError,
    StoreUnreachable,
    TransientStoreError,
)
from r2b.store.base import check_key

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

CONNECT_TIMEOUT = 5
READ_TIMEOUT = 60
MAX_POOL_CONNECTIONS = 32

_BUCKET = re.compile(r"^[A-Za-z0-9._-]{1,255}$")
_NOT_FOUND = frozenset({"NoSuchKey", "404", "NotFound"})
_CONFLICT = frozenset({"PreconditionFailed", "ConditionalRequestConflict"})
_TRANSIENT = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "RequestTimeout",
        "RequestTimeoutException",
        "InternalError",
        "ServiceUnavailable",
    }
)
_HINTS = {
    "AccessDenied": "the credentials may not do this: grant them s3:GetObject, s3:PutObject, "
    "s3:ListBucket and s3:DeleteObject on the bucket",
    "403": "the credentials may not do this: grant them s3:GetObject, s3:PutObject, "
    "s3:ListBucket and s3:DeleteObject on the bucket",
    "InvalidAccessKeyId": "the store does not know the access key id: check AWS_ACCESS_KEY_ID "
    "or AWS_PROFILE",
    "SignatureDoesNotMatch": "the secret key does not match the access key id: check "
    "AWS_SECRET_ACCESS_KEY or AWS_PROFILE",
    "ExpiredToken": "the session token has expired: refresh the credentials",
    "InvalidToken": "the session token is invalid: refresh the credentials",
    "RequestTimeTooSkewed": "this machine's clock is off: synchronise it (NTP)",
    "AuthorizationHeaderMalformed": "the region is wrong: set AWS_DEFAULT_REGION to the "
    "bucket's region",
    "PermanentRedirect": "the bucket is in another region: set AWS_DEFAULT_REGION or "
    "R2B_S3_ENDPOINT",
    "301": "the bucket is in another region: set AWS_DEFAULT_REGION or R2B_S3_ENDPOINT",
    "NotImplemented": "the store lacks a feature r2b needs (conditional writes with "
    "If-None-Match, ranged reads): use an S3 service that has it",
}
_DEFAULT_HINT = "check the store URL, the credentials and the bucket's configuration"


def _config(path_style: bool) -> Config:
    return Config(
        retries={"total_max_attempts": 1, "mode": "standard"},
        connect_timeout=CONNECT_TIMEOUT,
        read_timeout=READ_TIMEOUT,
        max_pool_connections=MAX_POOL_CONNECTIONS,
        s3={"addressing_style": "path"} if path_style else None,
    )


def make_client(endpoint_url: str | None = None, session: boto3.Session | None = None) -> S3Client:
    """An S3 client with botocore's retries off and modest timeouts.

    A custom endpoint (MinIO, R2, moto, ...) is addressed path-style; otherwise boto3's
    standard configuration (environment, profile, region) applies, or ``session``'s
    credentials when given (a Prefect ``AwsCredentials`` block's session).
    """
    config = _config(endpoint_url is not None)
    if session is not None:
        return session.client("s3", endpoint_url=endpoint_url, config=config)
    return boto3.client("s3", endpoint_url=endpoint_url, config=config)


def safe_endpoint(endpoint_url: str) -> str:
    """``endpoint_url`` without user info, query or fragment: fit for messages."""
    parts = urlsplit(endpoint_url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    netloc = f"{host}:{port}" if port is not None else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


class S3Store:
    """An ``ObjectStore`` in ``bucket`` below ``prefix``.

    ``client`` defaults to ``make_client(endpoint_url)``. Listing skips objects whose names
    are not valid keys (e.g. ``dir/`` markers made by other tools): they are not r2b's.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        endpoint_url: str | None = None,
        client: S3Client | None = None,
    ) -> None:
        if not _BUCKET.match(bucket):
            raise BadInput(f"invalid bucket name {bucket!r}: use letters, digits, '.', '-'")
        prefix = prefix.strip("/")
        if prefix:
            try:
                check_key(prefix)
            except BadInput:
                raise BadInput(
                    f"invalid store prefix {prefix!r}: use '/'-separated names of "
                    "letters, digits, '.', '_', '-'"
                ) from None
        self.bucket = bucket
        self.prefix = prefix
        self.client: S3Client = client if client is not None else make_client(endpoint_url)

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    @property
    def endpoint(self) -> str:
        """The endpoint the client talks to, without anything secret."""
        return safe_endpoint(self.client.meta.endpoint_url)

    def _name(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    @contextmanager
    def _boundary(self, op: str, key: str | None) -> Iterator[None]:
        """Translate vendor errors raised inside the block into r2b errors."""
        try:
            yield
        except ClientError as e:
            raise translate_client_error(e, op=op, key=key, bucket=self.bucket, url=self.url) from e
        except BotoCoreError as e:
            raise translate_botocore_error(e, op=op, url=self.url, endpoint=self.endpoint) from e

    def put(self, key: str, data: bytes) -> None:
        name = self._name(key)
        with self._boundary("put", key):
            self.client.put_object(Bucket=self.bucket, Key=name, Body=data)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        """Create ``key`` unless it exists (``If-None-Match: *``).

        False on 412 PreconditionFailed (the key exists) and on 409 ConditionalRequestConflict
        (a concurrent conditional write to the key is in flight; S3 lets at most one win).
        """
        name = self._name(key)
        with self._boundary("put_if_absent", key):
            try:
                self.client.put_object(Bucket=self.bucket, Key=name, Body=data, IfNoneMatch="*")
            except ClientError as e:
                if _code(e) in _CONFLICT or _status(e) in (409, 412):
                    return False
                raise
        return True

    def get(self, key: str) -> bytes:
        name = self._name(key)
        with self._boundary("get", key):
            response = self.client.get_object(Bucket=self.bucket, Key=name)
            with response["Body"] as body:
                return body.read()

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        """``length`` bytes from ``offset``; fewer at the end, b"" at or past the end."""
        name = self._name(key)
        if offset < 0 or length < 0:
            raise BadInput(f"invalid range offset={offset} length={length} of {key}")
        if length == 0:
            self.size(key)
            return b""
        with self._boundary("get_range", key):
            try:
                response = self.client.get_object(
                    Bucket=self.bucket, Key=name, Range=f"bytes={offset}-{offset + length - 1}"
                )
            except ClientError as e:
                if _code(e) == "InvalidRange" or _status(e) == 416:
                    return b""
                raise
            with response["Body"] as body:
                data = body.read()
            if "ContentRange" not in response:  # the server ignored Range: whole object
                data = data[offset : offset + length]
            return data

    def size(self, key: str) -> int:
        name = self._name(key)
        with self._boundary("size", key):
            try:
                return self.client.head_object(Bucket=self.bucket, Key=name)["ContentLength"]
            except ClientError as e:
                if _code(e) in _NOT_FOUND:
                    # A HEAD 404 has no body: it may mean a missing key or a missing bucket.
                    self._check_bucket()
                raise

    def _check_bucket(self) -> None:
        """Raise ``BucketMissing`` when the bucket does not exist."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as e:
            if _code(e) in _NOT_FOUND | {"NoSuchBucket"}:
                raise BucketMissing(self.bucket) from e
            raise

    def list(self, prefix: str = "") -> Iterator[str]:
        """Keys starting with ``prefix``, in S3's order (ascending bytes = sorted for keys)."""
        strip = len(self.prefix) + 1 if self.prefix else 0
        full = f"{self.prefix}/{prefix}" if self.prefix else prefix
        paginator = self.client.get_paginator("list_objects_v2")
        with self._boundary("list", None):
            for page in paginator.paginate(Bucket=self.bucket, Prefix=full):
                for item in page.get("Contents", []):
                    key = item["Key"][strip:]
                    if _is_key(key):
                        yield key

    def delete(self, key: str) -> None:
        name = self._name(key)
        with self._boundary("delete", key):
            try:
                self.client.delete_object(Bucket=self.bucket, Key=name)
            except ClientError as e:
                if _code(e) not in _NOT_FOUND:
                    raise


def _is_key(key: str) -> bool:
    try:
        check_key(key)
    except BadInput:
        return False
    return True


def _code(e: ClientError) -> str:
    return str(e.response.get("Error", {}).get("Code", ""))


def _status(e: ClientError) -> int:
    return int(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


def translate_client_error(
    e: ClientError, *, op: str, key: str | None, bucket: str, url: str
) -> R2BError:
    """The r2b error for an S3 error response (built from its code and status only)."""
    code, status = _code(e), _status(e)
    if code == "NoSuchBucket":
        return BucketMissing(bucket)
    if code in _NOT_FOUND and key is not None:
        return NotFound(key)
    what = f"{op} {key}" if key is not None else op
    if code in _TRANSIENT or (status >= 500 and code not in _HINTS) or status == 429:
        return TransientStoreError(f"{url}: {what} failed ({code or status}); try again later")
    hint = _HINTS.get(code, _DEFAULT_HINT)
    return PermanentStoreError(f"{url}: {what} was refused ({code or status}): {hint}")


def translate_botocore_error(e: BotoCoreError, *, op: str, url: str, endpoint: str) -> R2BError:
    """The r2b error for a botocore failure that is not an S3 error response."""
    if isinstance(e, SSLError):
        return _ssl_error(e, url=url, endpoint=endpoint)
    if isinstance(e, ConnectionError):  # endpoint, connect timeout, proxy
        return StoreUnreachable(url, _connection_reason(e, endpoint))
    if isinstance(e, HTTPClientError | IncompleteReadError):  # read timeout, closed, cut short
        return TransientStoreError(
            f"{url}: {op} was interrupted ({type(e).__name__} from {endpoint}); try again later"
        )
    credential_errors = (
        NoCredentialsError,
        PartialCredentialsError,
        CredentialRetrievalError,
        UnknownCredentialError,
    )
    if isinstance(e, credential_errors):
        return PermanentStoreError(
            f"{url}: no usable S3 credentials ({type(e).__name__}): set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY or AWS_PROFILE"
        )
    return PermanentStoreError(f"{url}: {op} failed in the S3 client ({type(e).__name__})")


def _ssl_error(e: SSLError, *, url: str, endpoint: str) -> R2BError:
    if "CERTIFICATE_VERIFY_FAILED" in str(e):
        return PermanentStoreError(
            f"{url}: the TLS certificate of {endpoint} is not trusted: fix the endpoint or "
            "set AWS_CA_BUNDLE"
        )
    return StoreUnreachable(url, f"TLS handshake with {endpoint} failed")


def _connection_reason(e: ConnectionError, endpoint: str) -> str:
    if isinstance(e, ConnectTimeoutError):
        return f"no connection to {endpoint} within {CONNECT_TIMEOUT}s"
    if isinstance(e, ProxyConnectionError):
        return f"cannot reach {endpoint} through the proxy: check HTTPS_PROXY / NO_PROXY"
    cause = _os_error(e)
    detail = f" ({cause})" if cause else ""
    return f"cannot connect to {endpoint}{detail}: check R2B_S3_ENDPOINT and the network"


def _os_error(e: BaseException) -> str:
    """The strerror of the first OSError in ``e``'s kwargs / cause chain, if any."""
    seen: set[int] = set()
    todo: list[BaseException] = [e]
    while todo:
        cur = todo.pop()
        if id(cur) in seen:
            continue
        seen.add(id(cur))
        if isinstance(cur, OSError) and cur.strerror:
            return cur.strerror
        kwargs = getattr(cur, "kwargs", {})
        nested = [v for v in kwargs.values() if isinstance(v, BaseException)]
        todo.extend(x for x in (cur.__cause__, cur.__context__, *nested) if x is not None)
    return ""
