"""Mounting a stored disk without a copy, a kernel mount or root: ``ImageFile`` over its blocks,
its partition table, and filesystem walks into catalog rows (``indexer`` drives them)."""
