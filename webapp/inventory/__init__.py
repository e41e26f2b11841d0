"""Inventory upkeep for store admins: bulk import jobs, duplicate checks, index status.

The views live in a blueprint nested under the admin area, so every page here inherits the
admin-only rule. Work that takes longer than a page view runs in Celery tasks (see
``worker/tasks.py``), which call the functions of :mod:`webapp.inventory.jobs`.
"""
