"""The object store as a Prefect Block, usable as the store URL ``block:NAME``."""

from __future__ import annotations

from typing import cast

from prefect.blocks.core import Block
from prefect_aws import AwsCredentials
from pydantic import Field

from r2b.errors import BadInput
from r2b.store import ObjectStore, RetryingStore, open_store, register_store_scheme
from r2b.store.s3 import S3Store, make_client


class R2BStore(Block):
    """Where r2b keeps replicas, images and catalogs: a local folder or an S3 bucket."""

    _block_type_name = "r2b Store"
    _block_type_slug = "r2b-store"
    _description = "The object store r2b replicates and backs up into."

    url: str = Field(description="file:///abs/path or s3://bucket/prefix")
    endpoint_url: str | None = Field(
        default=None, description="S3-compatible endpoint (MinIO, Ceph, ...); empty for AWS"
    )
    credentials: AwsCredentials | None = Field(
        default=None, description="AWS credentials; empty for the standard AWS chain"
    )

    def open(self) -> ObjectStore:
        if not self.url.startswith("s3://"):
            return open_store(self.url)
        bucket, _, prefix = self.url.removeprefix("s3://").partition("/")
        session = self.credentials.get_boto3_session() if self.credentials else None
        client = make_client(self.endpoint_url, session)
        return RetryingStore(S3Store(bucket, prefix, self.endpoint_url, client=client))


def _open_block(url: str) -> ObjectStore:
    name = url.removeprefix("block:").strip("/")
    if not name:
        raise BadInput(f"store {url!r} names no block: use block:NAME")
    try:
        block = cast(R2BStore, R2BStore.load(name, _sync=True))  # type: ignore[call-arg]
    except ValueError as e:
        raise BadInput(f"no saved r2b-store block named {name!r}: {e}") from None
    return block.open()


register_store_scheme("block", _open_block)
