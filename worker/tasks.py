"""Celery tasks: thin wrappers that take ids, call services or the ML package, record status."""

from __future__ import annotations

import logging
import os
import socket

from celery import shared_task

logger = logging.getLogger(__name__)


@shared_task(ignore_result=False)
def ping() -> dict[str, object]:
    """Health check: proves a worker is consuming the default queue."""
    return {"pong": True, "host": socket.gethostname(), "pid": os.getpid()}
