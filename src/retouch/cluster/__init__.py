"""Engines as Ray Serve replicas (``[cluster] backend = "ray"``).

* ``replica``: the Serve deployment class that owns one loaded engine per replica process.
* ``deploy``: connects a front to the cluster, submits the declarative Serve config (one
  application and one deployment per model, both named after the model) and attaches handles.

The request-side backend that calls these replicas is ``retouch.scheduler.ray.RayBackend``. Everything here needs the ``cluster`` extra (``ray[serve]``).
"""
