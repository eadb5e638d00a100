"""The config sections, one module each; :mod:`alignguard.config.schema` assembles them."""
