"""``alignguard toyworld``: build the toy model, report what it draws."""

from __future__ import annotations

import argparse
import json
import sys

from jobs.commands._common import non_negative_float, positive_int


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "toyworld",
        help="the toy world: build its model, report what it draws",
        description="The toy world: a CPU-sized text-to-image model in the SD1.5 layout with 7 harm "
        "categories defined exactly in pixels, and a judge that reads them back.",
    )
    toy_sub = parser.add_subparsers(dest="toyworld_command", metavar="<subcommand>", required=True)
    _register_build(toy_sub)
    _register_report(toy_sub)


def _register_build(sub: argparse._SubParsersAction) -> None:
    from alignguard.toyworld.defaults import BuildSchedule

    defaults = BuildSchedule()
    build = sub.add_parser(
        "build",
        help="train the toy model from scratch on CPU (about 15 minutes)",
        description="Train the toy model (VAE, UNet, text encoder, tokenizer) from scratch and save it in "
        "diffusers format. Without --out it replaces the shipped model.",
    )
    build.add_argument("--out", help="output directory (default: the shipped model directory)")
    build.add_argument(
        "--vae-steps", type=positive_int, default=defaults.vae_steps, help="VAE training steps"
    )
    build.add_argument(
        "--unet-steps", type=positive_int, default=defaults.unet_steps, help="UNet training steps"
    )
    build.add_argument("--batch-size", type=positive_int, default=defaults.batch_size, help="UNet batch size")
    build.add_argument(
        "--pool-size", type=positive_int, default=defaults.pool_size, help="rendered training scenes"
    )
    build.add_argument("--seed", type=int, default=defaults.seed, help="seed of weights and data")
    build.add_argument(
        "--threads", type=positive_int, default=1, help="torch threads (1 is fastest on 2 cores)"
    )
    build.set_defaults(handler=run_build)


def _register_report(sub: argparse._SubParsersAction) -> None:
    from alignguard.toyworld.defaults import DEFAULT_GUIDANCE, DEFAULT_STEPS

    report = sub.add_parser(
        "report",
        help="judge what the model (optionally with a LoRA) draws; prints one JSON object",
        description="Render N unsafe prompts and their N safe twins per category plus N benign prompts "
        "with fixed seeds, judge them, and print one JSON object. With --lora, also render with the LoRA "
        "applied and report preservation against the base model (same prompts, same seeds).",
    )
    report.add_argument("--lora", help="a diffusers-format LoRA (.safetensors file or directory)")
    report.add_argument("--n", type=positive_int, default=100, help="prompts per group (default 100)")
    report.add_argument("--seed", type=int, default=0, help="prompt i uses seed SEED + i")
    report.add_argument("--steps", type=positive_int, default=DEFAULT_STEPS, help="sampling steps")
    report.add_argument("--guidance", type=non_negative_float, default=DEFAULT_GUIDANCE, help="CFG scale")
    report.add_argument("--batch-size", type=positive_int, default=64, help="images per batch")
    report.add_argument("--model", default="toyworld", help="model directory (default: the shipped model)")
    report.add_argument(
        "--grid", metavar="PNG", help="also save an image grid of the first prompts per group"
    )
    report.set_defaults(handler=run_report)


def run_build(args: argparse.Namespace) -> int:
    import torch

    from alignguard.toyworld.defaults import BuildSchedule
    from alignguard.toyworld.paths import MODEL_DIR
    from alignguard.toyworld.publish import build_and_publish

    torch.set_num_threads(args.threads)
    schedule = BuildSchedule(
        vae_steps=args.vae_steps,
        unet_steps=args.unet_steps,
        batch_size=args.batch_size,
        pool_size=args.pool_size,
        seed=args.seed,
    )
    figures = build_and_publish(args.out or MODEL_DIR, schedule)
    print(json.dumps(figures, indent=2))
    return 0


def run_report(args: argparse.Namespace) -> int:
    from alignguard.toyworld.report import toyworld_report
    from alignguard.toyworld.store import load_toy_pipeline

    pipe = load_toy_pipeline(args.model)
    report = toyworld_report(
        pipe,
        n=args.n,
        seed=args.seed,
        lora=args.lora,
        steps=args.steps,
        guidance=args.guidance,
        batch_size=args.batch_size,
        grid_path=args.grid,
    )
    json.dump(report, sys.stdout)
    print()
    return 0
