"""Guarded generation on Ray Serve: an HTTP ingress (CPU) in front of a batched, multiplexed
generator (one pipeline per replica, the merged safety LoRA fused at start-up).

- :mod:`serve.app` builds the application from an experiment config (``serve run`` /
  ``serve deploy`` use :func:`serve.app.build_app` through ``serve/config.yaml``);
- :mod:`serve.lifecycle` starts it on Ray, serves until Ctrl-C / SIGTERM and stops it gracefully
  (``alignguard serve``);
- :mod:`serve.ingress`, :mod:`serve.api`, :mod:`serve.service`, :mod:`serve.schemas`: HTTP
  routes, validation, API key, guards, encoding;
- :mod:`serve.generator` (the deployment) around :mod:`serve.engine` (adapters and batched,
  seed-exact generation, no Ray) and :mod:`serve.adapters` (which names exist, run dir only);
- :mod:`serve.guards`: where prompt and image guards plug in;
- :mod:`serve.validate`: checking a Serve config file, including the keys Ray would ignore.
"""
