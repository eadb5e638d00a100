"""Evaluation: IP, quality and over-blocking per category, and a report people can read.

Module map (the stage is :mod:`alignguard.stages.evaluation`, run on Ray by ``cluster/stages.py``; the
CLI ``alignguard evaluate``):

- :mod:`.prompts`: prompt sets (toy suite, CoProV2 pairs, I2P/UD/COCO CSVs) as seeded records, shards.
- :mod:`.models`: which models of a run are evaluated, which are skipped and why.
- :mod:`.evaluators`: pinned evaluator settings, skipped evaluators, preflight of weight files.
- :mod:`.workers`: the renderer (LoRA switching, toy judge) and the scorer (NudeNet, Q16, CLIPScore,
  Inception), plain classes wrapped as Ray Data actors.
- :mod:`.clip`, :mod:`.inception`, :mod:`.fid`: CLIPScore and Q16, the FID Inception-v3 network,
  the Fréchet distance.
- :mod:`.stats`: Wilson and bootstrap intervals. :mod:`.metrics`: per-model metrics.
- :mod:`.stage`: plan, collect, write; :mod:`.report` and :mod:`.plots`: report.md, PNGs, grids.
"""
