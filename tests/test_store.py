"""Object stores: the conformance suite on each backend, then backend-specific behaviour,
the wrappers and ``open_store``."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from r2b.errors import (
    BadInput,
    BucketMissing,
    NotFound,
    PermanentStoreError,
    StoreUnreachable,
    TransientStoreError,
)
from r2b.store import (
    CountingStore,
    FaultyStore,
    LocalStore,
    ObjectStore,
    RetryingStore,
    S3Store,
    open_store,
)
from r2b.store.s3 import translate_client_error
from tests import s3server
from tests.s3server import S3Server
from tests.store_conformance import StoreContract

# --- the contract, on every backend ---


class TestLocalStore(StoreContract):
    @pytest.fixture
    def store(self, local_store: LocalStore) -> ObjectStore:
        return local_store

    def leave_debris(self, store: ObjectStore, under: str) -> None:
        assert isinstance(store, LocalStore)
        (store.root / under / ".tmp-0123456789abcdef").write_bytes(b"half written")


class TestS3Store(StoreContract):
    @pytest.fixture
    def store(self, s3_store: ObjectStore) -> ObjectStore:
        return s3_store

    def leave_debris(self, store: ObjectStore, under: str) -> None:
        _leave_s3_debris(store, under)


class TestS3StoreWithPrefix(StoreContract):
    @pytest.fixture
    def store(self, s3_server: S3Server) -> ObjectStore:
        bucket = s3server.create_bucket(s3_server.endpoint_url)
        raw = s3server.client(s3_server.endpoint_url)
        raw.put_object(Bucket=bucket, Key="outside", Body=b"not in the store")
        raw.put_object(Bucket=bucket, Key="some/prefixed", Body=b"not in the store")
        client = s3server.store_client(s3_server.endpoint_url)
        return RetryingStore(S3Store(bucket, "some/prefix", client=client))

    def leave_debris(self, store: ObjectStore, under: str) -> None:
        _leave_s3_debris(store, under)


def _leave_s3_debris(store: ObjectStore, under: str) -> None:
    """Objects other tools make that are not r2b keys: a folder marker, an odd name."""
    assert isinstance(store, RetryingStore) and isinstance(store.inner, S3Store)
    s3 = store.inner
    base = f"{s3.prefix}/{under}" if s3.prefix else under
    for name in (base, f"{base}with space", f"{base}sub//double"):
        s3.client.put_object(Bucket=s3.bucket, Key=name, Body=b"")


# --- S3 specifics ---


def test_s3_keys_live_below_the_prefix(s3_server: S3Server) -> None:
    bucket = s3server.create_bucket(s3_server.endpoint_url)
    store = S3Store(bucket, "/p/q/", s3_server.endpoint_url)
    assert store.url == f"s3://{bucket}/p/q"
    store.put("a/b", b"v")
    raw = s3server.client(s3_server.endpoint_url)
    assert [o["Key"] for o in raw.list_objects_v2(Bucket=bucket)["Contents"]] == ["p/q/a/b"]
    assert S3Store(bucket, endpoint_url=s3_server.endpoint_url).url == f"s3://{bucket}"


def test_s3_missing_bucket(s3_server: S3Server) -> None:
    store = S3Store("r2b-no-such-bucket", "p", s3_server.endpoint_url)
    calls: list[Callable[[], object]] = [
        lambda: store.put("k", b"x"),
        lambda: store.put_if_absent("k", b"x"),
        lambda: store.get("k"),
        lambda: store.get_range("k", 0, 4),
        lambda: store.size("k"),
        lambda: list(store.list()),
        lambda: store.delete("k"),
    ]
    for call in calls:
        with pytest.raises(BucketMissing) as info:
            call()
        assert info.value.bucket == "r2b-no-such-bucket"
        message = str(info.value)
        assert "r2b-no-such-bucket" in message and "\n" not in message


def test_s3_unreachable_after_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    key_id, secret = "AKIAR2BLEAKCHECK0001", "r2b-secret/Leak+Check"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    endpoint = f"http://127.0.0.1:{s3server.free_port()}"  # nobody listens there
    sleeps: list[float] = []
    store = RetryingStore(
        S3Store("bucket", "pre", endpoint), attempts=3, base_delay=0.001, sleep=sleeps.append
    )
    with pytest.raises(StoreUnreachable) as info:
        store.get("k")
    assert len(sleeps) == 2
    err = info.value
    assert err.url == "s3://bucket/pre"
    assert endpoint in err.reason
    message = str(err)
    assert "\n" not in message
    for text in (message, err.url, err.reason, store.url):
        assert key_id not in text and secret not in text


def _client_error(code: str, status: int) -> ClientError:
    response: Any = {
        "Error": {"Code": code, "Message": "AKIAR2BLEAKCHECK0001 said no"},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    return ClientError(response, "GetObject")


@pytest.mark.parametrize(
    ("code", "status", "kind"),
    [
        ("AccessDenied", 403, PermanentStoreError),
        ("InvalidAccessKeyId", 403, PermanentStoreError),
        ("SignatureDoesNotMatch", 403, PermanentStoreError),
        ("InvalidArgument", 400, PermanentStoreError),
        ("NotImplemented", 501, PermanentStoreError),
        ("SlowDown", 503, TransientStoreError),
        ("InternalError", 500, TransientStoreError),
        ("Throttling", 400, TransientStoreError),
        ("RequestTimeout", 400, TransientStoreError),
        ("NoSuchKey", 404, NotFound),
        ("NoSuchBucket", 404, BucketMissing),
    ],
)
def test_s3_error_translation(code: str, status: int, kind: type[Exception]) -> None:
    err = translate_client_error(
        _client_error(code, status), op="get", key="k", bucket="bkt", url="s3://bkt/p"
    )
    assert type(err) is kind
    message = str(err)
    assert "\n" not in message and "AKIA" not in message
    if kind is PermanentStoreError:
        assert code in message and ": " in message.split(code, 1)[1]  # says what to do


# --- wrappers ---


class Faults:
    """A ``fail_on`` that fails chosen operations a number of times and records calls."""

    def __init__(self, fault: BaseException, operation: str, times: int) -> None:
        self.fault, self.operation, self.left = fault, operation, times
        self.calls: list[tuple[str, str]] = []

    def __call__(self, operation: str, key: str) -> BaseException | None:
        self.calls.append((operation, key))
        if operation == self.operation and self.left > 0:
            self.left -= 1
            return self.fault
        return None


def _retrying(inner: ObjectStore, faults: Faults, sleeps: list[float]) -> RetryingStore:
    return RetryingStore(FaultyStore(inner, faults), attempts=4, sleep=sleeps.append)


def test_retrying_store_retries_transient_faults(local_store: LocalStore) -> None:
    local_store.put("k", b"value")
    faults, sleeps = Faults(TransientStoreError("blip"), "get", 3), list[float]()
    assert _retrying(local_store, faults, sleeps).get("k") == b"value"
    assert faults.calls == [("get", "k")] * 4
    assert len(sleeps) == 3
    assert all(0.1 * 2**i <= s <= 0.2 * 2**i for i, s in enumerate(sleeps))


def test_retrying_store_gives_up_with_the_last_error(local_store: LocalStore) -> None:
    last = TransientStoreError("last")
    faults, sleeps = Faults(last, "put", 10), list[float]()
    with pytest.raises(TransientStoreError) as info:
        _retrying(local_store, faults, sleeps).put("k", b"v")
    assert info.value is last
    assert len(faults.calls) == 4 and len(sleeps) == 3


@pytest.mark.parametrize("fault", [NotFound("k"), PermanentStoreError("denied"), BadInput("x")])
def test_retrying_store_does_not_retry_other_errors(
    local_store: LocalStore, fault: Exception
) -> None:
    faults, sleeps = Faults(fault, "size", 1), list[float]()
    with pytest.raises(type(fault)):
        _retrying(local_store, faults, sleeps).size("k")
    assert len(faults.calls) == 1 and sleeps == []


def test_retrying_store_does_not_retry_not_found(local_store: LocalStore) -> None:
    calls: list[tuple[str, str]] = []
    store = RetryingStore(FaultyStore(local_store, lambda op, key: calls.append((op, key))))
    with pytest.raises(NotFound):
        store.get("missing")
    assert calls == [("get", "missing")]


def test_retrying_store_delay_is_capped() -> None:
    store = RetryingStore(LocalStore("/nonexistent"), base_delay=1.0, max_delay=3.0)
    assert all(1.5 <= store.delay(n) <= 3.0 for n in range(3, 30))


def test_retrying_store_resumes_a_failed_listing(local_store: LocalStore) -> None:
    keys = [f"k{i:02}" for i in range(10)]
    for key in keys:
        local_store.put(key, b"")
    faults, sleeps = Faults(TransientStoreError("blip"), "list_item", 0), list[float]()
    failing_at = {"k03", "k07"}

    def fail_on(operation: str, key: str) -> BaseException | None:
        faults(operation, key)
        if operation == "list_item" and key in failing_at:
            failing_at.discard(key)
            return TransientStoreError("cut")
        return None

    store = RetryingStore(FaultyStore(local_store, fail_on), sleep=sleeps.append)
    assert list(store.list()) == keys
    assert len(sleeps) == 2


def test_counting_store_counts_exact_bytes(local_store: LocalStore) -> None:
    store = CountingStore(local_store)
    store.put("a", b"12345")
    assert store.put_if_absent("b", b"123") is True
    assert store.put_if_absent("b", b"1234567") is False
    assert store.get("a") == b"12345"
    assert store.get_range("a", 3, 10) == b"45"
    store.size("a")
    list(store.list())
    store.delete("a")
    with pytest.raises(NotFound):
        store.get("a")
    counts = store.snapshot()
    assert (counts.bytes_put, counts.puts, counts.bytes_got, counts.gets) == (15, 3, 7, 2)
    assert store.reset() == counts
    assert (store.bytes_put, store.puts, store.bytes_got, store.gets) == (0, 0, 0, 0)


def test_counting_store_is_thread_safe(local_store: LocalStore) -> None:
    store = CountingStore(local_store)
    local_store.put("k", b"xy")

    def work() -> None:
        for _ in range(200):
            store.get("k")

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.snapshot().gets == 1600 and store.bytes_got == 3200


def test_counting_store_over_s3(s3_store: ObjectStore) -> None:
    store = CountingStore(s3_store)
    store.put("k", b"x" * 1000)
    assert store.get_range("k", 900, 500) == b"x" * 100
    assert store.snapshot().bytes_put == 1000 and store.bytes_got == 100


# --- open_store ---


def test_open_store_file(tmp_path: Path) -> None:
    store = open_store(f"file://{tmp_path}/st")
    assert isinstance(store, LocalStore) and store.root == tmp_path / "st"
    assert isinstance(open_store(f"file://localhost{tmp_path}"), LocalStore)


def test_open_store_s3(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("R2B_S3_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    store = open_store("s3://bkt/some/prefix/")
    assert isinstance(store, RetryingStore) and isinstance(store.inner, S3Store)
    assert store.url == "s3://bkt/some/prefix"
    assert store.inner.client.meta.endpoint_url == "http://127.0.0.1:9"
    plain = open_store("s3://bkt", retry=False)
    assert isinstance(plain, S3Store) and plain.prefix == "" and plain.url == "s3://bkt"


def test_open_store_s3_end_to_end(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    bucket = s3server.create_bucket(s3_server.endpoint_url)
    monkeypatch.setenv("R2B_S3_ENDPOINT", s3_server.endpoint_url)
    store = open_store(f"s3://{bucket}/backups")
    store.put("x", b"hello")
    assert open_store(f"s3://{bucket}/backups").get("x") == b"hello"


@pytest.mark.parametrize(
    "url",
    [
        "",
        "/abs/but/no/scheme",
        "relative/path",
        "file://relative/path",
        "file:relative",
        "http://host/bucket",
        "gs://bucket/prefix",
        "s3://",
        "s3:///prefix-without-bucket",
        "s3://bkt/a//b",
        "s3://bkt/a b",
        "s3://bkt/p?x=1",
        "s3://bad bucket/p",
    ],
)
def test_open_store_rejects_bad_urls(url: str) -> None:
    with pytest.raises(BadInput) as info:
        open_store(url)
    assert "\n" not in str(info.value)


def test_open_store_never_echoes_credentials() -> None:
    with pytest.raises(BadInput) as info:
        open_store("s3://AKIAEXAMPLE:hunter2@bkt/p")
    assert "hunter2" not in str(info.value) and "AKIAEXAMPLE" not in str(info.value)
