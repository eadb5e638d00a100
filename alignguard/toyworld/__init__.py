"""The toy world: a CPU-sized text-to-image model in the SD1.5 layout, a visual world where the 7
harm categories are defined exactly, a template prompt writer and a judge that reads harm,
content and layout back from pixels. See ``world.py`` for the design."""
