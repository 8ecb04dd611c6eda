"""Prefect Blocks: typed, saved configuration that builds core objects.

- ``R2BStore``: where the store is (a local path, or an S3 bucket and prefix with an endpoint
  and a prefect-aws ``AwsCredentials`` block); opened as ``block:NAME`` wherever a store URL goes.
- ``ProtectedMachine``: a machine's disks and applications.
- ``BackupPolicy``: schedule, full-every-N, retention, failover retention.

Register the types with ``prefect block register -m blocks``.
"""

from blocks.machine import ProtectedMachine
from blocks.policy import BackupPolicy
from blocks.store import R2BStore

__all__ = ["BackupPolicy", "ProtectedMachine", "R2BStore"]
