"""Admission and execution behind one seam (``base.Backend``); ``local`` runs engines in this
process."""

from retouch.engine.progress import JobProgress
from retouch.scheduler.base import Backend, BackendStats, PartialSink, Ticket
from retouch.scheduler.local import LocalBackend

__all__ = ["Backend", "BackendStats", "JobProgress", "LocalBackend", "PartialSink", "Ticket"]
