"""r2b core: backups built from the disaster-recovery replica.

This package holds the domain logic (object store, replica journal, image format, restore)
and must never import Prefect: orchestration lives in ``tasks/`` and ``flows/``. The rule
is enforced by ``tests/test_layering.py``.
"""

__version__ = "0.1.0"
