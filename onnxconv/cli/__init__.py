"""The ``onnxconv`` command: a click group whose subcommands are imported only when used.

Lazy loading keeps ``onnxconv stats`` free of onnxruntime and onnx-graphsurgeon imports, so its wall time stays
close to the cost of parsing the model. Library errors (:class:`~onnxconv.errors.OnnxConvError`) become one
``Error: ...`` line and exit status 1 here, in one place; anything else is a bug and keeps its traceback.

Signals end a run like a shell expects, with one line and no traceback: Ctrl-C (SIGINT) exits 130, SIGTERM 143
(128 + the signal number). SIGTERM's default action would kill the process on the spot and leave the temporary
files of an atomic write behind; the handler installed while a command runs raises :class:`Terminated` instead,
so the writers' cleanup (``except BaseException``: unlink the temporary files) runs first.
"""

from __future__ import annotations

import importlib
import importlib.util
import signal
import sys
import threading
from types import FrameType
from typing import Any, NoReturn

import click

from ..errors import OnnxConvError
from ..text import printable

__all__ = ["main", "Terminated", "INTERRUPT_EXIT", "TERMINATE_EXIT"]

#: Exit statuses after SIGINT and SIGTERM: 128 + the signal number, as a shell reports a process killed by it.
INTERRUPT_EXIT = 128 + signal.SIGINT
TERMINATE_EXIT = 128 + signal.SIGTERM


class Terminated(BaseException):
    """Raised in the main thread on SIGTERM, so that cleanup runs before the process exits.

    A BaseException, like KeyboardInterrupt: ``except Exception`` handlers must not swallow it.
    """


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated()

# command name -> (module, attribute, short help shown by `onnxconv --help` without importing the module)
_COMMANDS = {
    "stats": ("onnxconv.cli.stats_cmd", "stats", "Count params, MACs and FLOPs of every conv layer."),
    "separate": ("onnxconv.cli.separate_cmd", "separate", "Rewrite standard convs as depthwise+pointwise or grouped+shuffle."),
    "bench": ("onnxconv.cli.bench_cmd", "bench", "Time models with onnxruntime and compare their outputs."),
    "quantize": ("onnxconv.cli.quantize_cmd", "quantize",
                 "Static int8 (QDQ) that keeps every output channel alive, measured against fp32."),
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return [n for n, (mod, _, _) in _COMMANDS.items() if importlib.util.find_spec(mod) is not None]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        entry = _COMMANDS.get(cmd_name)
        if entry is None:
            return None
        try:
            module = importlib.import_module(entry[0])
        except ModuleNotFoundError as e:
            if e.name == entry[0]:
                return None
            raise
        return getattr(module, entry[1])

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(n, _COMMANDS[n][2]) for n in self.list_commands(ctx)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        # A process's argv cannot hold a NUL byte; a caller in the same process can pass one, and os.stat (for a
        # path option) would then raise ValueError from inside click.
        for i, arg in enumerate(args):
            if "\x00" in arg:
                raise _escaped(click.UsageError(f"argument {i + 1} ({arg!r}) contains a NUL byte", ctx))
        try:
            return super().parse_args(ctx, args)
        except click.ClickException as e:
            raise _escaped(e) from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except OnnxConvError as e:
            raise click.ClickException(printable(str(e))) from None
        except click.ClickException as e:
            # click's own messages quote what the user typed (a path, a command name): escaped the same way.
            raise _escaped(e) from None
        except (KeyboardInterrupt, Terminated) as e:
            _exit_signalled(e)
        except Exception as e:
            # A signal that lands while a C extension initialises comes back wrapped: pybind11 (onnxruntime) turns
            # any error in a module's init into ImportError("initialization failed") caused by the signal's.
            signalled = _signal_cause(e)
            if signalled is None:
                raise
            _exit_signalled(signalled)

    def main(self, *args: Any, **kwargs: Any) -> Any:
        """click's main with SIGTERM turned into :class:`Terminated` for the duration of the command."""
        if threading.current_thread() is not threading.main_thread():
            return super().main(*args, **kwargs)
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
        try:
            return super().main(*args, **kwargs)
        except Terminated:  # arrived outside a command (while parsing options)
            click.echo("Terminated.", err=True)
            sys.exit(TERMINATE_EXIT)
        finally:
            signal.signal(signal.SIGTERM, previous)


def _signal_cause(e: BaseException) -> KeyboardInterrupt | Terminated | None:
    """The KeyboardInterrupt or :class:`Terminated` in ``e``'s chain of causes and contexts, if any."""
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, (KeyboardInterrupt, Terminated)):
            return cur
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return None


def _exit_signalled(e: KeyboardInterrupt | Terminated) -> NoReturn:
    """One line and exit status 130 (Ctrl-C) or 143 (SIGTERM), no traceback."""
    if isinstance(e, KeyboardInterrupt):
        # click would say "Aborted!" too, but exit 1: a pipeline could not tell Ctrl-C from an error.
        click.echo("\nAborted!", err=True)
        raise click.exceptions.Exit(INTERRUPT_EXIT) from None
    click.echo("Terminated.", err=True)
    raise click.exceptions.Exit(TERMINATE_EXIT) from None


def _escaped(e: click.ClickException) -> click.ClickException:
    """``e`` with its message escaped by :func:`~onnxconv.text.printable`, so that the ``Error: ...`` click prints
    stays one line and a crafted file name cannot forge a second one or drive the terminal."""
    # click annotates ClickException.message Final, yet it is a plain attribute that click reads when printing.
    e.message = printable(e.message)  # type: ignore[misc]
    return e


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="onnxconv", prog_name="onnxconv")
def main() -> None:
    """Analyse and rewrite the convolutions of ONNX models.

    \b
    Conventions: MACs are multiply-accumulates; FLOPs are exact multiplies + additions
    (2*MACs with bias, 2*MACs - outputs without); ConvTranspose MACs are counted over its
    input (scatter view). Params are weight + bias elements.
    """

