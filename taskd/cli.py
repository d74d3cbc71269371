"""The `taskd` command: `serve` (API + workers) and `worker` (workers only)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Coroutine
from typing import Any

import shtab

from taskd import cli_admin, cli_client, logs
from taskd.config import ConfigError, load_config, warn_if_everyone_reads_secrets
from taskd.version import version

# The exit status of a command whose output's reader went away: a shell's for SIGPIPE.
SIGPIPE_EXIT = 141
DESCRIPTION = """\
taskd runs GPU-heavy and long-running work submitted over HTTP.

  taskd serve    the HTTP API and the workers of every queue, in one process;
                 with no redis.url it starts its own Valkey in the data dir
  taskd worker   workers only, joining the Redis of a `taskd serve` (redis.url,
                 or the embedded server of the same data dir on this host)
  taskd submit|run|status|wait|cancel|retry|tasks|health
                 a client of a running taskd (--url, --api-key; `taskd wait -h`)
  taskd workers|queues|purge|retry-failed
                 operator commands, on the Redis of the config (like `taskd worker`)
  taskd config show|check
                 the effective config (secrets masked), or whether it is valid
  taskd completion bash|zsh
                 a shell completion script, e.g. eval "$(taskd completion bash)"

Config: --config FILE, then $TASKD_CONFIG, ./taskd.toml, /etc/taskd/taskd.toml;
every key can be set as TASKD_<SECTION>__<KEY>, e.g. TASKD_HTTP__PORT=8001.
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="taskd", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"taskd {version()}")
    _add_global_options(parser, None)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the HTTP API and the workers")
    serve.add_argument("--no-worker", action="store_true", help="run the API only (an API node)")
    serve.add_argument("--queues", help="comma-separated queues to work on (default: all)")
    serve.add_argument(
        "--print-key",
        action="store_true",
        help="print an API key taskd makes on this start even when stdout is not a terminal (make run)",
    )

    worker = commands.add_parser("worker", help="run workers only, against the same Redis as a serve")
    worker.add_argument("--queues", help="comma-separated queues to work on, e.g. gpu_heavy,gpu_medium")
    cli_client.add_commands(commands)
    cli_admin.add_commands(commands)
    completion = commands.add_parser("completion", help="print a shell completion script for bash or zsh")
    completion.add_argument("shell", choices=("bash", "zsh"))
    # `taskd serve --config F` as well as `taskd --config F serve`: the order people (and unit files)
    # write. SUPPRESS: a command's parser sets them only when given, never over the global ones.
    for command in _commands(commands):
        _add_global_options(command, argparse.SUPPRESS)
    return parser


def _add_global_options(parser: argparse.ArgumentParser, default: Any) -> None:
    parser.add_argument("--config", default=default, help="path of taskd.toml").complete = shtab.FILE  # type: ignore[attr-defined]
    parser.add_argument(
        "--log-level",
        type=str.upper,
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        default=default,
        help="DEBUG, INFO, WARNING or ERROR (default: logging.level, INFO)",
    )
    parser.add_argument(
        "--log-format",
        choices=logs.FORMATS,
        default=default,
        help="json (one object per line), text, or auto: text on a terminal (default: logging.format)",
    )


def _commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> list[argparse.ArgumentParser]:
    """The parsers of the commands that run (`config show`, not `config`)."""
    found = []
    for command in dict.fromkeys(commands.choices.values()):  # an alias maps to the same parser
        nested = [action for action in command._actions if isinstance(action, argparse._SubParsersAction)]
        found.extend(_commands(nested[0]) if nested else [command])
    return found


def _queues(raw: str | None) -> list[str] | None:
    return [name.strip() for name in raw.split(",") if name.strip()] if raw else None


def _run_loop(main_coroutine: Coroutine[Any, Any, None]) -> None:
    # uvloop where it is installed (Linux and macOS wheels): a faster loop for the same code.
    try:
        import uvloop
    except ImportError:
        asyncio.run(main_coroutine)
    else:
        uvloop.run(main_coroutine)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        code: int | None = None
        if getattr(args, "client_command", None) is not None:
            code = cli_client.run(args)
        elif args.command in cli_admin.COMMANDS:
            code = cli_admin.run(args)
        elif args.command == "completion":
            print(shtab.complete(parser, shell=args.shell), end="")
            code = 0
        if code is not None:
            # A pipe's stdout is block-buffered: the last 8 KiB of output (all of a short one) are
            # written by this flush, not by the interpreter at exit, which would report a reader
            # gone away as `Exception ignored … BrokenPipeError` and exit 120 (or 0, output lost).
            # None: started with no stdout at all (`>&-`), where print writes nothing.
            if sys.stdout is not None:
                sys.stdout.flush()
            return code
    except BrokenPipeError:
        # The reader went away (`taskd tasks films --json | head`, `taskd config show | head`): stop
        # quietly, as a tool that SIGPIPE ends would, and keep the interpreter's last flush from
        # failing again.
        logs.discard_stdout()
        return SIGPIPE_EXIT
    try:
        # Here, not at the top: the client commands above run on the base install, without the
        # server's packages (the `server` extra).
        from taskd.service import StartFailed, run
    except ModuleNotFoundError as exc:
        print(
            f"taskd {args.command}: {exc.name} is not installed: pip install 'taskd[server]'", file=sys.stderr
        )
        return 2
    except KeyboardInterrupt:
        # Ctrl-C while the server's modules load (a few tenths of a second, longer on a cold cache):
        # the same quiet end as one during start-up, not a traceback of the import machinery.
        return 130
    try:
        config = load_config(args.config)
        logs.configure(
            args.log_format or config.logging.format,
            args.log_level or config.logging.level,
            secrets=logs.secrets_of(config),
        )
        warn_if_everyone_reads_secrets(args.config)
        serve = args.command == "serve"
        workers = not args.no_worker if serve else True
        print_key = serve and args.print_key
        _run_loop(run(config, http=serve, workers=workers, queues=_queues(args.queues), print_key=print_key))
    except (ConfigError, StartFailed) as exc:
        # The log lines still waiting for their writer thread first: the reason is the last line.
        logs.flush()
        print(f"taskd: {exc}", file=sys.stderr)
        return exc.exit_status if isinstance(exc, StartFailed) else 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
