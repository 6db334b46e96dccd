"""`auformer push`: share a checkpoint's adapters (and a model card) on the Hugging Face Hub."""

from __future__ import annotations

import argparse

from auformer.cli.flags import CHECKPOINT_HELP, path_arg


def add(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "push",
        help="share a checkpoint's adapters on the Hugging Face Hub",
        description="Upload CKPT's adapter-only files (as adapter.safetensors + adapter.json) and a model card "
        "(README.md) to the Hub repo REPO_ID, created if missing; the frozen backbone is not uploaded. "
        "Log in first (`hf auth login` or HF_TOKEN). Others then load it with --checkpoint REPO_ID. See docs/sharing.md.",
    )
    parser.add_argument("checkpoint", metavar="CKPT", type=path_arg, help=f"local {CHECKPOINT_HELP}")
    parser.add_argument("repo_id", metavar="REPO_ID", help="Hub model repo, user/name or organisation/name")
    parser.add_argument("--private", action="store_true", help="create the repo private (an existing repo keeps its visibility)")
    parser.add_argument("--message", default="Upload auformer adapters", help="commit message (default: %(default)s)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from auformer.sharing import push_checkpoint

    url = push_checkpoint(args.checkpoint, args.repo_id, private=args.private, message=args.message)
    print(f"pushed {args.checkpoint} to https://huggingface.co/{args.repo_id} (commit {url})")
