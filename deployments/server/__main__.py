"""``python -m deployments.server``: the inference server's own entry point.

A model image carries only the serving dependencies, not the ``modelyard`` command (Typer,
Rich, Prefect and the stack code), so the image starts the server through this module instead.
Same options as ``modelyard serve``.
"""

from __future__ import annotations

import argparse
import sys


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m deployments.server",
                                     description="Serve one model version (MLflow scoring and Open Inference v2).")
    parser.add_argument("model", help="A model directory, models:/NAME/VERSION or models:/NAME@ALIAS.")
    parser.add_argument("--port", type=int, default=8080, help="TCP port (loopback by default).")
    parser.add_argument("--uds", default=None, help="Also listen on this unix socket; empty: none.")
    parser.add_argument("--expected-sha256", default=None,
                        help="Refuse a model directory whose files hash otherwise; empty: no check.")
    parser.add_argument("--name", default="", help="Model name to report for a model directory.")
    parser.add_argument("--version", default="", help="Model version to report for a model directory.")
    parser.add_argument("--no-log", action="store_true", help="Do not write the prediction log.")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from deployments.server.main import serve
    from modelyard.settings import get_settings

    args = parse_args(argv)
    try:
        # Empty strings come from an image's entrypoint when a variable is unset.
        serve(args.model, get_settings(), port=args.port, log_predictions=not args.no_log, uds=args.uds or None,
              expected_digest=args.expected_sha256 or None, name=args.name, version=args.version)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
