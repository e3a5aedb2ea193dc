"""The ``attn-probe`` command line."""

from __future__ import annotations

import argparse
import sys

from attn_probe import __version__
from attn_probe.attention.position import POSITION_VARIANTS


def _demo(args: argparse.Namespace) -> int:
    from attn_probe.demo import format_demo, run_demo

    result = run_demo(steps=args.steps, seed=args.seed, position=args.position, examples=args.examples)
    print(format_demo(result, steps=args.steps, seed=args.seed, position=args.position, examples=args.examples))
    return 0


def _models(args: argparse.Namespace) -> int:
    from attn_probe.models.offline import describe_offline

    print("Offline models (no network needed; built or cached on first use):\n")
    for row in describe_offline().itertuples():
        state = f"cached at {row.path}" if row.cached else f"not built yet: {row.build}"
        accuracy = (
            "" if row.heldout_accuracy != row.heldout_accuracy else f", held-out accuracy {row.heldout_accuracy:.3f}"
        )
        print(f"  {row.name:<18} {row.task} ({row.architecture}){accuracy}")
        print(f"  {'':<18} {row.description}")
        print(f"  {'':<18} from {row.source}; {state}\n")
    print(
        "Any Hugging Face model id or local directory also works (attn_probe.models.load_model). Attention is "
        "captured from\nevery architecture that dispatches through transformers' AttentionInterface (BERT, RoBERTa, "
        "ELECTRA, DistilBERT,\nGPT-2, Llama, Qwen2, Mistral, T5, ...), from BLOOM and DeBERTa-v2 through their inline "
        "eager attention, and\nfrom attn_probe's own models."
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="attn-probe", description="Is this attention map telling me what the model actually used?"
    )
    parser.add_argument("--version", action="version", version=f"attn_probe {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser(
        "demo", help="train a small encoder on a toy task with known answer tokens, then probe its attention"
    )
    demo.add_argument("--steps", type=_positive_int, default=300, help="training steps (default 300)")
    demo.add_argument("--seed", type=int, default=0, help="seed for the model and the data (default 0)")
    demo.add_argument("--position", choices=POSITION_VARIANTS, default="t5", help="position variant (default t5)")
    demo.add_argument("--examples", type=_positive_int, default=512, help="held-out examples probed (default 512)")
    demo.set_defaults(handler=_demo)

    models = commands.add_parser(
        "models", help="list the offline models and the architectures attention is captured from"
    )
    models.set_defaults(handler=_models)
    return parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got '{text}'") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (ValueError, TypeError) as error:
        print(f"attn-probe {args.command}: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
