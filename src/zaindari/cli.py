"""The ``zaindari`` command: developer entry points (``zaindari aws up``, more to come).

Each command group registers a builder in :data:`COMMANDS`; a builder adds its subparser and sets
``handler`` (a function of the parsed arguments returning an exit code). Heavy imports happen
inside handlers, so ``zaindari --help`` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

Handler = Callable[[argparse.Namespace], int]
CommandBuilder = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], None]


def _aws_up(args: argparse.Namespace) -> int:
    from zaindari.infra.local_aws import LocalAwsError, serve_forever

    try:
        return serve_forever(args.host, args.port)
    except LocalAwsError as error:
        print(f"zaindari aws up: {error}", file=sys.stderr)
        return 1


def _build_aws(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from zaindari.infra.local_aws import DEFAULT_HOST, DEFAULT_PORT

    aws = commands.add_parser("aws", help="the embedded AWS (moto in server mode)")
    aws_commands = aws.add_subparsers(dest="aws_command", metavar="<command>", required=True)
    up = aws_commands.add_parser(
        "up",
        help="run moto server in the foreground until Ctrl-C",
        description="Serve S3, DynamoDB, SQS, SNS, EventBridge, ... locally on the LocalStack port.",
    )
    up.add_argument("--host", default=DEFAULT_HOST, help="address to listen on (default: %(default)s)")
    up.add_argument("--port", type=int, default=DEFAULT_PORT, help="port to listen on (default: %(default)s)")
    up.set_defaults(handler=_aws_up)


# Command groups, in the order ``--help`` lists them. Add a group by adding a builder here.
COMMANDS: dict[str, CommandBuilder] = {
    "aws": _build_aws,
}


def build_parser() -> argparse.ArgumentParser:
    """The full ``zaindari`` argument parser."""
    from zaindari import __version__

    parser = argparse.ArgumentParser(
        prog="zaindari",
        description="Stateless, event-driven functions for industrial predictive maintenance.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="<command>", required=True)
    for build in COMMANDS.values():
        build(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``zaindari`` command with ``argv`` (default: ``sys.argv[1:]``); return the exit code."""
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
