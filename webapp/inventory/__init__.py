"""Inventory upkeep for store admins: bulk import jobs, duplicate checks, index status.

The views live in a blueprint nested under the admin area, so every page here inherits the
admin-only rule. Work that takes longer than a page view is sent to the worker by task name
(bulk import stages, hashing the catalogue, the duplicate threshold); the worker's side of
it lives in ``worker/jobs/`` (``bulk_import``, ``hashing``, ``thresholds``).
"""
