"""The Ray layer: Ray Data synthesis, Ray Train expert fleet, the merge actor, cluster checks.

Plain classes and functions; ``ray.remote(...).options(...)`` is applied at the edge, by the
drivers in this package, so the workers stay testable without Ray.
"""
