"""The Ray Serve application for guarded generation (see the serving issue)."""
