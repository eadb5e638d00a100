"""``alignguard guard``: the prompt guard and the output guard, from the command line."""

from __future__ import annotations

import argparse
import json
import sys

from jobs.commands._common import positive_int

POLICY_HELP = (
    "Options: --config FILE (an experiment YAML; its 'guard' section and model.family apply) and "
    "--set key=value (repeatable), e.g. --set guard.policy.hate.action=block."
)


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "guard",
        help="prompt guard and output guard: score prompts and images, train the prompt guard",
        description="Defence in depth around the aligned model: a prompt guard (MiniLM embeddings + a "
        "trained head, 7 categories) and an output guard (NudeNet, or the toy judge in the toy world), "
        "under one per-category policy (allow, align, blur, block). " + POLICY_HELP,
    )
    guard_sub = parser.add_subparsers(dest="guard_command", metavar="<subcommand>", required=True)
    _register_prompt(guard_sub)
    _register_prompts(guard_sub)
    _register_image(guard_sub)
    _register_train(guard_sub)


def _add_policy_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="experiment YAML (default: built-in defaults)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="config override"
    )


def _register_prompt(sub: argparse._SubParsersAction) -> None:
    prompt = sub.add_parser(
        "prompt",
        help="score one prompt: per-category scores, flagged categories, the policy's action (JSON)",
        description="Score one prompt with the prompt guard and print JSON: the unsafe score, per-category "
        "scores, the flagged categories and the action the policy takes. " + POLICY_HELP,
    )
    prompt.add_argument("text", help="the prompt")
    _add_policy_arguments(prompt)
    prompt.set_defaults(handler=_user_errors(run_prompt))


def _register_prompts(sub: argparse._SubParsersAction) -> None:
    prompts = sub.add_parser(
        "prompts",
        help="score every row of a CSV with a 'prompt' column; JSON lines out",
        description="Score a CSV with a 'prompt' column and print one JSON line per row, in order: the row "
        "number, its 'id' column if present, the flagged categories, the action and the scores (the "
        "prompt text itself is not repeated). " + POLICY_HELP,
    )
    prompts.add_argument("path", help="CSV file with a header containing 'prompt'")
    prompts.add_argument("--batch-size", type=positive_int, default=64, help="prompts per embedding batch")
    _add_policy_arguments(prompts)
    prompts.set_defaults(handler=_user_errors(run_prompts))


def _register_image(sub: argparse._SubParsersAction) -> None:
    image = sub.add_parser(
        "image",
        help="the output guard's verdict on an image file (JSON)",
        description="Run the output guard on an image file and print its verdict as JSON: per-category "
        "scores, flagged categories, evidence (NudeNet detections of the configured class set). "
        + POLICY_HELP,
    )
    image.add_argument("path", help="PNG/JPEG/WebP image")
    image.add_argument(
        "--guard", choices=("nudenet", "toy_judge"), help="which output guard (default: from the config)"
    )
    image.add_argument("--obscure", metavar="OUT", help="also write the obscured ('blur') version to OUT")
    _add_policy_arguments(image)
    image.set_defaults(handler=_user_errors(run_image))


def _register_train(sub: argparse._SubParsersAction) -> None:
    from alignguard.guards.training import GuardTrainingPlan, HeadTraining

    plan, head = GuardTrainingPlan(), HeadTraining()
    train = sub.add_parser(
        "train",
        help="train the prompt guard's head on a CoProV2 CSV, calibrate, evaluate (a few minutes)",
        description="Embed every prompt of a CoProV2-format CSV with all-MiniLM-L6-v2 (cached), split the "
        "pairs by contiguous index blocks (joined where prompts repeat) into train/calibration/test, train "
        "the head, calibrate thresholds on calibration, evaluate on test. Without --out it replaces the "
        "shipped head (alignguard/guards/assets/).",
    )
    train.add_argument("csv", help="CoProV2-format CSV, e.g. ../shared/data/CoProv2_train.csv")
    train.add_argument("--out", help="output directory (default: the shipped assets directory)")
    train.add_argument(
        "--cache-dir", default="~/.cache/alignguard/guard", help="embedding cache ('' disables it)"
    )
    train.add_argument(
        "--block-size", type=positive_int, default=plan.block_size, help="pairs per split block"
    )
    train.add_argument("--epochs", type=positive_int, default=head.epochs, help="training epochs")
    train.add_argument("--hidden", type=positive_int, default=head.hidden, help="hidden units of the head")
    train.add_argument("--seed", type=int, default=head.seed, help="seed of the head's training")
    train.add_argument("--split-seed", type=int, default=plan.split_seed, help="seed of the split")
    train.add_argument("--threads", type=positive_int, default=1, help="torch threads")
    train.set_defaults(handler=_user_errors(run_train))


def _user_errors(handler):
    """Guard-specific user errors (a wrong head file, a missing model package) exit 2 with a message."""

    def wrapped(args: argparse.Namespace) -> int:
        from alignguard.guards.embedding import EmbedderUnavailableError
        from alignguard.guards.head import HeadFormatError

        try:
            return handler(args)
        except (HeadFormatError, EmbedderUnavailableError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2

    return wrapped


def _guard_config(args: argparse.Namespace):
    """The full config (for model.family too) from --config (default: built-in defaults) and --set."""
    from alignguard.config import load_config

    return load_config(args.config, args.overrides)


def _prompt_service(config):
    from alignguard.guards.runtime import PromptGuardService

    return PromptGuardService(config.guard)


def _decision_json(decision) -> dict:
    return {
        "flagged": list(decision.flagged),
        "action": decision.action,
        "adapter": decision.adapter,
        "reason": decision.reason(),
        **decision.scores.to_json(),
    }


def run_prompt(args: argparse.Namespace) -> int:
    if not args.text.strip():
        print("error: the prompt is empty", file=sys.stderr)
        return 2
    _threads()
    service = _prompt_service(_guard_config(args))
    print(json.dumps(_decision_json(service.decide([args.text])[0])))
    return 0


def run_prompts(args: argparse.Namespace) -> int:
    from alignguard.guards.prompt_csv import read_prompt_csv

    _threads()
    rows = read_prompt_csv(args.path)
    service = _prompt_service(_guard_config(args))
    from tqdm.auto import tqdm

    # The bar goes to stderr and only on a terminal: stdout stays pure JSON lines.
    for start in tqdm(range(0, len(rows), args.batch_size), desc="scoring", unit="batch", disable=None):
        chunk = rows[start : start + args.batch_size]
        for row, decision in zip(chunk, service.decide([r.prompt for r in chunk]), strict=True):
            ident = {"id": row.id} if row.id is not None else {}
            print(json.dumps({"row": row.row, **ident, **_decision_json(decision)}))
    return 0


def run_image(args: argparse.Namespace) -> int:
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    from alignguard.guards.blur import obscure
    from alignguard.guards.runtime import build_output_guard

    config = _guard_config(args)
    section = config.guard
    if args.guard:
        section = section.model_copy(
            update={"output": section.output.model_copy(update={"kind": args.guard})}
        )
    try:
        image = np.asarray(Image.open(args.path).convert("RGB"))
    except UnidentifiedImageError:
        print(f"error: {args.path} is not an image PIL can read", file=sys.stderr)
        return 2
    guard = build_output_guard(section, config.model.family)
    if guard is None:
        print(
            "error: guard.output.kind is 'none'; pick --guard nudenet or --guard toy_judge", file=sys.stderr
        )
        return 2
    verdict = guard.check(image)[0]
    print(json.dumps({"path": args.path, "flagged_any": bool(verdict.flagged), **verdict.to_json()}))
    if args.obscure:
        Image.fromarray(obscure(image, section.output.blur_fraction)).save(args.obscure)
    return 0


def run_train(args: argparse.Namespace) -> int:
    from alignguard.guards.publish import train_and_publish

    _threads(args.threads)
    summary = train_and_publish(
        args.csv,
        out_dir=args.out,
        cache_dir=args.cache_dir or None,
        block_size=args.block_size,
        split_seed=args.split_seed,
        epochs=args.epochs,
        hidden=args.hidden,
        seed=args.seed,
    )
    print(json.dumps(summary, indent=2))
    return 0


def _threads(count: int = 1) -> None:
    import torch

    torch.set_num_threads(count)
