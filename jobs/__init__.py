"""Entrypoints: the ``alignguard`` command line and one thin script per ``ray job submit`` job."""
