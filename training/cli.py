"""One command-line convention for every petlens tool.

Every tool (``python -m training``, ``python -m export``, ``python -m training.fool``, ...,
and the ``benchmarks``) builds its parser with :func:`make_parser`, takes its shared flags from
the ``add_*`` helpers and starts through :func:`run`, so they all feel alike:

- ``--help`` everywhere, ``prog`` = the console script's name;
- ``--device auto|cpu|cuda`` (default ``auto``), resolved once by :func:`resolve_device`;
- ``--model FILE`` for the one model file a tool reads (``--checkpoint`` stays an alias
  where the tool used to document it);
- a user's mistake (a bad flag, a missing file, an unusable image or model) is **one line on
  stderr (``error: ...``) and exit status 2**, never a traceback; Ctrl-C is exit status 130.

Example::

    def get_args_parser(add_help=True):
        p = make_parser("petlens-thing", "Do a thing to a photo.", add_help=add_help)
        add_model(p, help="checkpoint (.pt)")
        add_device(p)
        return p

    def main(args) -> int: ...

    def cli(argv=None):  # the console script
        run(get_args_parser(), main, argv)
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:  # torch is imported only when a device is resolved: `petlens-bot --help` stays fast
    import torch

DEVICES = ("auto", "cpu", "cuda")
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

# What a person can fix: bad values (ImageError, ModelError, CheckpointError, DatasetError
# are ValueErrors), missing or unreadable files.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError)


class UsageError(ValueError):
    """A mistake in how a tool was called; its message says what to change."""


def make_parser(prog: str, description: str, *, add_help: bool = True, epilog: str | None = None) -> argparse.ArgumentParser:
    """The tool's ``ArgumentParser``; its own errors exit 2 (argparse's convention, kept)."""
    return argparse.ArgumentParser(prog=prog, description=description, epilog=epilog, add_help=add_help,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


def add_device(p: argparse.ArgumentParser, *, what: str = "torch device") -> None:
    """``--device auto|cpu|cuda``: ``auto`` takes the GPU when there is one."""
    p.add_argument("--device", default="auto", choices=DEVICES,
                   help=f"{what}: auto (a CUDA GPU when there is one), cpu or cuda (default auto)")


def add_model(p: argparse.ArgumentParser, *, help: str, required: bool = True, default: Any = None,
              aliases: Sequence[str] = ()) -> None:
    """``--model FILE`` (plus ``aliases`` such as ``--checkpoint`` that older docs name)."""
    p.add_argument("--model", *aliases, dest="model", required=required, default=default, metavar="FILE", help=help)


def add_json(p: argparse.ArgumentParser, *, help: str = "print the result as one JSON line") -> None:
    p.add_argument("--json", action="store_true", help=help)


def positive(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse ``type`` accepting only values > 0 of ``kind``."""
    def convert(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {kind.__name__}, got {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be greater than 0, got {text}")
        return value
    convert.__name__ = f"positive {kind.__name__}"
    return convert


def fraction(text: str) -> float:
    """An argparse ``type``: a float in [0, 1)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


def out_folder(path: str | Path, *, contents: str) -> Path:
    """``--out`` for a tool that writes several files into a FOLDER (created when missing):
    an existing file, or a name with an image suffix (``--out cat.png``, which would become a
    folder called ``cat.png``), is a :class:`UsageError` saying what goes inside, e.g.
    ``contents="<photo name>-cat.png"``."""
    from .images import IMAGE_SUFFIXES  # lazily: numpy and Pillow are not needed for --help

    path = Path(path)
    if path.is_file():
        why = f"{path} is an existing file"
    elif not path.exists() and path.suffix.lower() in IMAGE_SUFFIXES:
        why = f"{path} looks like a file name"
    else:
        return path
    raise UsageError(f"--out is a folder: the files inside it are named {contents}; {why}. "
                     f"Give a folder, e.g. --out {path.with_suffix('')}/")


def out_file(path: str | Path, *, suffixes: Sequence[str], example: str) -> Path:
    """``--out`` for a tool that writes ONE file: an existing folder or another suffix than
    ``suffixes`` is a :class:`UsageError` with an example name (``example``, in the folder given)."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"--out is the file to write, and {path} is a folder; give a file name, e.g. --out {path / example}")
    if path.suffix.lower() not in suffixes:
        raise UsageError(f"--out must end in {' or '.join(suffixes)}, got {path}; e.g. --out {path.with_suffix(suffixes[0])}")
    return path


def resolve_device(name: str | torch.device = "auto", local_rank: int = 0) -> torch.device:
    """``auto`` -> CUDA when there is one, else CPU; ``cuda`` without a GPU is a :class:`UsageError`."""
    import torch

    if isinstance(name, torch.device):
        return name
    kind = name.split(":", 1)[0]
    if kind not in DEVICES:
        raise UsageError(f"unknown device {name!r}; choose {', '.join(DEVICES)}")
    if kind == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu or auto")
    if kind == "cpu" or (kind == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if ":" in name:
        return torch.device(name)
    return torch.device("cuda", local_rank % torch.cuda.device_count())


def report_error(message: object, *, json_record: dict[str, Any] | None = None) -> str:
    """Print ``error: message`` as one line on stderr, and ``json_record`` plus
    ``{"error": message}`` as one JSON line on stdout when given (the tool was asked for
    ``--json``). Does not exit: a tool that goes on with its other inputs (``petlens-fool
    a.jpg b.jpg``) reports each failed one so and exits 2 at the end. Returns the line's text."""
    text = " ".join(str(message).split())
    if json_record is not None:
        print(json.dumps({**json_record, "error": text}), flush=True)
    print("error: " + text, file=sys.stderr, flush=True)
    return text


def fail(message: object, *, status: int = EXIT_USAGE, json_line: bool = False) -> NoReturn:
    """Report a user's mistake the one way: ``error: message`` as one line on stderr, exit 2.
    ``json_line`` (the tool was asked for ``--json``): also ``{"error": message}`` on stdout,
    so a script reading the JSON lines sees why nothing came."""
    report_error(message, json_record={} if json_line else None)
    sys.exit(status)


def run(p: argparse.ArgumentParser, main: Callable[[argparse.Namespace], Any], argv: Sequence[str] | None = None,
        *, failures: tuple[type[BaseException], ...] = (),
        user_errors: tuple[type[BaseException], ...] = USER_ERRORS) -> int:
    """Parse ``argv`` and call ``main(args)``. A non-zero int from ``main`` is the exit status
    (``sys.exit``); anything else returns 0. A user's error (``user_errors``) -> :func:`fail`
    (one line, exit 2); ``failures`` (the tool could not do its job, e.g. an export that fails
    its parity check) -> one line, exit 1; Ctrl-C -> exit 130. Other exceptions are bugs and
    keep their traceback."""
    args = p.parse_args(argv)
    as_json = bool(getattr(args, "json", False))
    try:
        status = main(args)
    except KeyboardInterrupt:
        sys.exit(EXIT_INTERRUPTED)
    except failures as exc:
        fail(describe_error(exc), status=EXIT_FAILED, json_line=as_json)
    except user_errors as exc:
        fail(describe_error(exc), json_line=as_json)
    except Exception as exc:
        torch = sys.modules.get("torch")
        if torch is not None and isinstance(exc, torch.cuda.OutOfMemoryError):
            fail("the GPU ran out of memory; try a smaller --batch-size or --device cpu", json_line=as_json)
        raise
    if isinstance(status, int) and not isinstance(status, bool) and status != 0:
        sys.exit(status)
    return 0


def describe_error(exc: BaseException) -> str:
    """The message of ``exc`` for a person: an OSError as ``file: reason`` (not ``[Errno 2] ...``)."""
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        return f"{exc.filename}: {exc.strerror.lower()}"
    return str(exc).strip() or type(exc).__name__
