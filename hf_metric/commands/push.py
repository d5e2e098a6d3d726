"""`hf-metric push`: upload a trained model folder to the Hub (or a mirror), e.g. to retry a failed upload."""

from __future__ import annotations

import argparse

from .common import add_config_arguments, add_model_arguments

DESCRIPTION = (
    "Upload a model folder to the Hugging Face Hub in one commit (no pickles). The token comes from HF_TOKEN "
    "or `hf auth login`; HF_ENDPOINT selects a mirror. Repo settings come from the `hub` section."
)


def configure(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser, None)
    parser.add_argument("--model-id", help="repo id owner/name (same as --set hub.model_id=...)")
    parser.add_argument("--private", action=argparse.BooleanOptionalAction, default=None, help="create it private")
    parser.add_argument("--revision", help="branch to push to (created if missing)")
    add_config_arguments(parser, required=False)


def run(args: argparse.Namespace) -> int:
    from ..errors import ConfigError
    from ..sharing.hub import push_to_hub
    from .common import check_model_dir, model_config

    check_model_dir(args.model)
    flags = {"model_id": args.model_id, "private": args.private, "revision": args.revision}
    args.overrides = [f"hub.{k}={v}" for k, v in flags.items() if v is not None] + list(args.overrides)
    cfg = model_config(args)
    if not cfg.hub.model_id:
        raise ConfigError("hub.model_id: is required to push (give --model-id owner/name)")
    url = push_to_hub(args.model, cfg.hub)
    print(f"Pushed {args.model} to {cfg.hub.model_id}: {url}")
    return 0
