"""Object stores: the interface, its implementations, its wrappers and ``open_store``."""

from __future__ import annotations

import os
from collections.abc import Callable
from urllib.parse import unquote, urlsplit

from r2b.errors import BadInput
from r2b.store.base import ObjectStore, check_key
from r2b.store.local import LocalStore
from r2b.store.s3 import S3Store
from r2b.store.wrappers import CountingStore, FaultyStore, IOCounts, RetryingStore

__all__ = [
    "CountingStore",
    "FaultyStore",
    "IOCounts",
    "LocalStore",
    "ObjectStore",
    "RetryingStore",
    "S3Store",
    "check_key",
    "open_store",
    "register_store_scheme",
]

ENDPOINT_ENV = "R2B_S3_ENDPOINT"
_FORMS = "use file:///absolute/path or s3://bucket/prefix"


def open_store(url: str, *, retry: bool = True) -> ObjectStore:
    """The store a URL names.

    ``file:///abs/path`` is a ``LocalStore`` (it never fails transiently, so it is not
    wrapped). ``s3://bucket[/prefix]`` is an ``S3Store`` talking to ``$R2B_S3_ENDPOINT`` when
    set, else to what boto3's standard configuration says; wrapped in ``RetryingStore`` when
    ``retry``. Anything else raises ``BadInput``. Credentials never go in the URL.
    """
    parts = urlsplit(url)
    if "@" in parts.netloc:
        raise BadInput(f"store URLs must not contain credentials: {_FORMS}")
    if parts.query or parts.fragment:
        raise BadInput(f"store URL {url!r} has a query or fragment: {_FORMS}")
    if parts.scheme == "file":
        return _open_local(url, parts.netloc, parts.path)
    if parts.scheme == "s3":
        store = _open_s3(url, parts.netloc, parts.path)
        return RetryingStore(store) if retry else store
    opener = _OPENERS.get(parts.scheme)
    if opener is not None:
        return opener(url)
    if parts.scheme == "block":
        raise BadInput(f"store {url!r} is a saved Prefect block: load the blocks package first")
    raise BadInput(f"unsupported store URL {url!r}: {_FORMS}")


StoreOpener = Callable[[str], ObjectStore]
_OPENERS: dict[str, StoreOpener] = {}


def register_store_scheme(scheme: str, opener: StoreOpener) -> None:
    """Let an outer layer open URLs of another scheme (``block:NAME``: a saved Prefect block).

    The core knows no Prefect; ``blocks/`` registers itself here when imported.
    """
    _OPENERS[scheme] = opener


def _open_local(url: str, netloc: str, path: str) -> LocalStore:
    path = unquote(path)
    if netloc not in ("", "localhost") or not path.startswith("/"):
        raise BadInput(f"store URL {url!r} is not an absolute file path: {_FORMS}")
    return LocalStore(path)


def _open_s3(url: str, bucket: str, path: str) -> S3Store:
    if not bucket:
        raise BadInput(f"store URL {url!r} names no bucket: {_FORMS}")
    endpoint = os.environ.get(ENDPOINT_ENV) or None
    return S3Store(bucket, prefix=unquote(path).strip("/"), endpoint_url=endpoint)
