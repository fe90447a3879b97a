"""The version store (DESIGN.md §4): immutable, verified adapter versions on disk or S3.

    store = open_store("s3://bucket/janus")          # or a path, file://…, memory://…
    manifest = store.publish({"adapter.safetensors": {"name": array}}, draft, activate=True)
    arrays = store.read_tensors(store.serving(), "adapter.safetensors")

Imports no torch and no model code; tensors travel as numpy arrays through safetensors.
"""

from adapters_store.audit import AuditEntry
from adapters_store.errors import (
    IntegrityError,
    InvalidManifest,
    InvalidName,
    NotFound,
    NothingToRollBack,
    Quarantined,
    Rejected,
    StoreBusy,
    StoreError,
    StoreNotFound,
)
from adapters_store.manifest import Backbone, FileEntry, Manifest, ManifestDraft
from adapters_store.settings import StoreSettings, default_store_uri
from adapters_store.store import VersionStore, open_store
from adapters_store.verify import Problem, VerifyReport, verify_store

__all__ = [
    "AuditEntry",
    "Backbone",
    "FileEntry",
    "IntegrityError",
    "InvalidManifest",
    "InvalidName",
    "Manifest",
    "ManifestDraft",
    "NotFound",
    "NothingToRollBack",
    "Problem",
    "Quarantined",
    "Rejected",
    "StoreBusy",
    "StoreError",
    "StoreNotFound",
    "StoreSettings",
    "VerifyReport",
    "VersionStore",
    "default_store_uri",
    "open_store",
    "verify_store",
]
