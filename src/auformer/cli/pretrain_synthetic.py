"""`auformer pretrain-synthetic`: pre-train the small synthetic-face ViT the synthetic preset freezes."""

from __future__ import annotations

import argparse

from auformer.cli.flags import path_arg


def add(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "pretrain-synthetic",
        help="pre-train the small synthetic-face ViT that the synthetic preset freezes",
        description="Pre-train a small timm ViT on synthetic faces (landmark heatmaps and geometry regression, no AU "
        "labels), probe it, and write OUT/synthetic_vit.safetensors + synthetic_vit.json. The package ships the "
        "result of the defaults in auformer/assets. Unset flags take PretrainConfig's defaults. See docs/synthetic.md.",
    )
    parser.add_argument(
        "--out", required=True, metavar="DIR", type=path_arg, help="folder to write synthetic_vit.safetensors/.json to"
    )
    parser.add_argument("--seed", type=int, metavar="S", help="weight init and batch order seed (default: 0)")
    parser.add_argument("--epochs", type=int, metavar="E", help="passes over the faces (default: 16)")
    parser.add_argument("--num-images", type=int, metavar="K", help="pre-training faces (default: 16000)")
    parser.add_argument("--batch-size", type=int, metavar="B", help="faces per step (default: 64)")
    parser.add_argument("--lr", type=float, help="AdamW peak learning rate (default: 0.002)")
    parser.add_argument("--max-steps", type=int, metavar="N", help="stop after N steps (quick checks; default: all epochs)")
    parser.add_argument("--no-validate", action="store_true", help="skip the linear-probe check against a random init")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from auformer.engine.pretrain import PretrainConfig, run_pretrain

    flags = {
        "seed": args.seed,
        "epochs": args.epochs,
        "num_images": args.num_images,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "max_steps": args.max_steps,
    }
    config = PretrainConfig(**{name: value for name, value in flags.items() if value is not None})
    weights = run_pretrain(config, args.out, validate=not args.no_validate)
    print(f"wrote {weights} and {weights.with_suffix('.json')}")
