"""The `flowers` click group: settings on the context, `FlowersError` turned into one clear line."""

from __future__ import annotations

import logging
import signal
from typing import Any

import click

from flowers.cli.context import CliContext
from flowers.models.dataset import printable
from flowers.models.errors import TRAIN_EXTRA, FlowersError, SettingsError, os_error_message
from flowers.worker.embedded import Interrupted
from flowers.worker.redis_client import lost_redis, redis_error
from flowers.worker.settings import Settings

INTERRUPTED = ("its local Redis and worker are stopped; {again} to resume (computed features "
               "and labelled photos are kept)")
INTERRUPTED_REMOTE = ("interrupted: a job already sent to the cluster goes on there "
                      "(flowers status JOB_ID; flowers cancel JOB_ID)")


# Modules of the `train` extra: a command that reaches one on an install without it says so in
# one line (commands check what they surely need up front).
TRAIN_MODULES = frozenset({"tensorflow", "keras", "matplotlib"})


class UsageFailure(click.ClickException):
    """A bad argument found past click's own checks: one line, exit code 2."""

    exit_code = 2


class FlowersGroup(click.Group):
    """Turns expected failures into `error: ...` and an exit code, never a traceback; the line
    is printable (a name in it cannot break it, move the cursor or read reversed)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return self._invoke(ctx)
        except click.ClickException as exc:
            exc.message = printable(exc.message)  # type: ignore[misc]  # click types it Final
            raise

    def _invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except FlowersError as exc:
            if ctx.obj is not None and ctx.obj.debug:
                raise
            failure = UsageFailure if exc.exit_code == 2 else click.ClickException
            raise failure(str(exc)) from None
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except KeyboardInterrupt:  # Ctrl-C with no local cluster running (yet)
            remote = ctx.obj is not None and ctx.obj.settings.broker_url is not None
            click.echo(f"\n{INTERRUPTED_REMOTE if remote else 'interrupted'}", err=True)
            raise SystemExit(128 + signal.SIGINT) from None
        except Interrupted as exc:
            click.echo(f"\ninterrupted by {exc.signal_name}: "
                       f"{INTERRUPTED.format(again=_again(ctx))}", err=True)
            raise
        except Exception as exc:
            if ctx.obj is not None and ctx.obj.debug:
                raise
            again = _again(ctx)
            if (full := redis_error(exc, "OutOfMemoryError")) is not None:  # noeviction
                raise click.ClickException(
                    f"Redis is full and refuses writes ({full}): free memory there or raise "
                    f"its maxmemory (flowers' queues need the noeviction policy), then {again}: "
                    "it resumes"
                ) from None
            if (lost := lost_redis(exc)) is not None:
                raise click.ClickException(  # Redis stopped answering mid-command, past retries
                    f"lost Redis: {lost}; check that it runs, then {again}: it resumes"
                ) from None
            if isinstance(exc, OSError) and (message := os_error_message(exc)) is not None:
                raise click.ClickException(message) from None
            if isinstance(exc, ModuleNotFoundError) and \
                    (exc.name or "").split(".")[0] in TRAIN_MODULES:
                raise click.ClickException(
                    f"flowers {ctx.invoked_subcommand} needs {exc.name}, which this install "
                    f"lacks: {TRAIN_EXTRA}") from None
            raise click.ClickException(
                f"unexpected {type(exc).__name__}: {exc} (run with --debug for a traceback)"
            ) from None


def _again(ctx: click.Context) -> str:
    """How the command's errors say to resume it (`CliContext.again`)."""
    return ctx.obj.again if ctx.obj is not None else CliContext.again


@click.group(cls=FlowersGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True,
              help="Show tracebacks and debug logs (also FLOWERS_DEBUG=1).")
@click.version_option(package_name="flowers")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Retrain an ImageNet network on folders of photos, and label photo collections with it.

    Without FLOWERS_BROKER_URL, each command starts a local Redis and worker for its run.
    """
    try:  # every FLOWERS_* setting, before any work: one line and exit code 2 if one is bad
        settings = Settings.load()
    except SettingsError as exc:
        raise UsageFailure(f"bad FLOWERS_* environment variable: {exc}") from None
    debug = debug or settings.debug
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    ctx.obj = CliContext(settings=settings, debug=debug)


def _register() -> None:
    from flowers.cli.architectures import architectures
    from flowers.cli.cache import cache
    from flowers.cli.cancel import cancel
    from flowers.cli.evaluate import evaluate
    from flowers.cli.export import export
    from flowers.cli.import_poets import import_poets
    from flowers.cli.label import label
    from flowers.cli.label_dir import label_dir
    from flowers.cli.review import review
    from flowers.cli.run_worker import worker
    from flowers.cli.status import status
    from flowers.cli.train import train
    from flowers.cli.workers import workers

    for command in (architectures, train, evaluate, import_poets, label_dir, label, export,
                    review, status, cancel, cache, worker, workers):
        cli.add_command(command)


try:
    _register()
except KeyboardInterrupt:  # Ctrl-C while the command modules load: nothing has started
    raise SystemExit(128 + signal.SIGINT) from None


def main() -> None:
    cli(prog_name="flowers")
