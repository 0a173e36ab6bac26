"""`sage-jobmanager`: run the JobManager daemon (also `python -m sage_jupyter.jobmanager`)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from typing import Callable

from ..runtime.extras import MissingExtraError, require_extra
from .protocol import (
    DEFAULT_IDLE_TIMEOUT_S,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_PORT,
    TOKEN_ENV,
    is_loopback,
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sage-jobmanager",
        description="Run submitted sage_jupyter pipelines (RemoteEnvironment) with autostop and cleanup. "
                    "SIGTERM or Ctrl-C stops every job, cleans every service and exits within 5 s.",
    )
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1; any other address requires a token)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT,
                   help=f"port to listen on (default {DEFAULT_PORT}; 0 picks a free port, announced on stdout)")
    p.add_argument("--token", default=None,
                   help=f"token clients must send (prefer --token-file or ${TOKEN_ENV}: a command line is visible "
                        "to other local users)")
    p.add_argument("--token-file", default=None, help="read the token from the first line of this file")
    p.add_argument("--log-file", default=None, help="write the log here instead of stderr")
    p.add_argument("--max-body-mb", type=float, default=DEFAULT_MAX_BODY_BYTES / 2**20,
                   help="largest accepted request body in MiB (default %(default)g)")
    p.add_argument("--max-connections", type=int, default=DEFAULT_MAX_CONNECTIONS,
                   help="most connections open at once (default %(default)d); when all are busy, new ones get 503")
    p.add_argument("--idle-timeout", type=float, default=DEFAULT_IDLE_TIMEOUT_S,
                   help="seconds after which an idle connection, slow headers or a slow body are closed "
                        "(default %(default)g)")
    p.add_argument("--state-dir", default=None,
                   help="directory of the job history (SQLite), kept across restarts "
                        "(default $XDG_DATA_HOME/sage_jupyter or ~/.local/share/sage_jupyter)")
    p.add_argument("--announce-fd", type=int, default=None, metavar="FD",
                   help="write the 'listening on HOST:PORT' line to this inherited file descriptor, "
                        "then close it (for programs that start the daemon with --port 0)")
    p.add_argument("--ray-address", default=None, metavar="ADDR",
                   help="attach to this Ray cluster at start (default: $RAY_ADDRESS when a job needs Ray, "
                        "else a local Ray); jobs with backend='ray' place their actors across its nodes")
    p.add_argument("-v", "--verbose", action="count", default=0, help="log more (-v: info, -vv: debug)")
    return p


def resolve_token(args: argparse.Namespace, parser: argparse.ArgumentParser) -> str | None:
    if args.token is not None and args.token_file is not None:
        parser.error("give either --token or --token-file, not both")
    token = args.token
    if args.token_file is not None:
        try:
            with open(args.token_file, encoding="utf-8") as f:
                token = f.readline().strip()
        except OSError as exc:
            parser.error(f"--token-file {args.token_file}: {exc.strerror or exc}")
        if not token:
            parser.error(f"--token-file {args.token_file}: the file's first line is empty")
    if token is None:
        token = os.environ.get(TOKEN_ENV) or None
    if token is not None and not token.strip():
        parser.error("the token must not be empty")
    if token is None and not is_loopback(args.host):
        parser.error(f"--host {args.host} is reachable from other machines: a token is required "
                     f"(--token, --token-file or ${TOKEN_ENV})")
    return token.strip() if token is not None else None


def configure_logging(verbose: int, log_file: str | None) -> None:
    handler: logging.Handler = logging.FileHandler(log_file) if log_file else logging.StreamHandler(sys.stderr)
    # Quiet by default; the handler's level (not only the logger's) filters what propagates.
    handler.setLevel(logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(min(handler.level, logging.INFO))


def announcer(fd: int | None) -> Callable[[str, int], None]:
    def announce(host: str, port: int) -> None:
        # One line, so whoever started us with --port 0 learns the port.
        line = f"sage-jobmanager listening on {host}:{port} (pid {os.getpid()})"
        if fd is None:
            print(line, flush=True)
            return
        with os.fdopen(fd, "w") as f:
            f.write(line + "\n")

    return announce


def attach_ray(address: str, parser: argparse.ArgumentParser) -> None:
    """Connect to the cluster now, on the main thread, so a wrong address fails at start."""
    os.environ["RAY_ADDRESS"] = address  # what the runtime (and its children) attach to
    from ..runtime.ray.cluster import ensure_ray

    try:
        ensure_ray()
    except (ConnectionError, RuntimeError, ImportError) as exc:
        parser.error(f"--ray-address {address}: cannot attach to Ray: {exc}")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        parser.error(f"--port {args.port}: use a port between 0 and 65535")
    if args.max_body_mb <= 0:
        parser.error("--max-body-mb must be > 0")
    if args.max_connections < 1:
        parser.error("--max-connections must be >= 1")
    if not 0 < args.idle_timeout <= 3600:
        parser.error("--idle-timeout must be a number of seconds in (0, 3600]")
    if args.announce_fd is not None:
        try:
            os.fstat(args.announce_fd)
        except OSError:
            parser.error(f"--announce-fd {args.announce_fd}: not an open file descriptor")
    token = resolve_token(args, parser)
    configure_logging(args.verbose, args.log_file)
    try:
        require_extra("tornado", "sage-jobmanager (the JobManager daemon)")
    except MissingExtraError as exc:
        print(f"sage-jobmanager: {exc}", file=sys.stderr)
        return 1
    if args.ray_address is not None:
        attach_ray(args.ray_address, parser)
    from .daemon import serve
    from .history import JobHistory, StateDirError, default_state_dir
    from .manager import JobManager

    state_dir = args.state_dir if args.state_dir is not None else default_state_dir()
    try:
        history = JobHistory(state_dir)
    except StateDirError as exc:
        print(f"sage-jobmanager: {exc}", file=sys.stderr)
        return 1
    manager = JobManager(token, max_body_bytes=int(args.max_body_mb * 2**20), history=history)
    if token is None:
        logging.getLogger("sage_jupyter.jobmanager").warning(
            "no token: any local user can submit jobs to %s:%d", args.host, args.port)
    try:
        asyncio.run(serve(manager, args.host, args.port, announcer(args.announce_fd),
                          max_connections=args.max_connections, idle_timeout=args.idle_timeout))
    except OSError as exc:
        history.close()
        print(f"sage-jobmanager: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
