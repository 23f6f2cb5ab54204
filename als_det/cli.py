"""The command line every tool shares, in detectron2's shape (`tools/train_net.py`):

    python tools/TOOL.py [options] [--config-file FILE] [KEY VALUE ...]

`argument_parser()` makes the parser each `tools/` entry point extends: a help page that shows the
defaults, `--debug`, and for tools that read a config `--config-file FILE` (also spelled
`--config`) with trailing `KEY VALUE` config overrides (also accepted after `--opts`). `run()`
parses, sets up logging (`als_det.logger`) and runs the tool; a user error (a bad config value, a
missing file, a refused checkpoint: `ValueError` and its kin) ends it with one line, `error: ...`,
and exit status 2, the traceback going to the run's log file (or, with `--debug`, the terminal).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import Field, field, fields
from typing import Any

from als_det.logger import close_log_file, log_path, setup_logging

logger = logging.getLogger(__name__)

# What a user can fix: bad values and files (every suite error is a ValueError), a run that
# diverged.
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, FloatingPointError)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """The description as written (examples keep their line breaks) and each option's default,
    where it has one worth showing (not for flags, or options whose help says what unset means)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        default = action.default
        if default is None or default is False or default == "" or default == []:
            return action.help
        return super()._get_help_string(action)


class ArgumentParser(argparse.ArgumentParser):
    """Merges the `--opts` spelling of the config overrides into the trailing ones."""

    def parse_args(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        namespace: argparse.Namespace | None = None,
    ) -> argparse.Namespace:
        ns = super().parse_args(args, namespace)
        if hasattr(ns, "opts_option"):
            ns.opts = [*ns.opts_option, *(o for o in ns.opts if o != "--opts")]
            del ns.opts_option
        return ns


def argument_parser(
    description: str | None,
    *,
    config: str = "none",
    default_config: str | None = None,
    epilog: str | None = None,
    override_example: str = "SOLVER.EPOCHS 2 OUTPUT_DIR out",
) -> ArgumentParser:
    """The parser a tool extends. `config`: "required" or "optional" (with `default_config`) for
    tools that read a YAML config and take `KEY VALUE` overrides, "none" for the others;
    `override_example`: overrides of that tool's own config keys, shown in the help."""
    parser = ArgumentParser(description=description, epilog=epilog, formatter_class=HelpFormatter)
    if config != "none":
        parser.add_argument(
            "--config-file",
            "--config",
            dest="config_file",
            metavar="FILE",
            required=config == "required",
            default=default_config,
            help="YAML config (may inherit others with _BASE_)",
        )
        parser.add_argument(
            "--opts", dest="opts_option", nargs="+", default=[], help=argparse.SUPPRESS
        )
        parser.add_argument(
            "opts",
            nargs=argparse.REMAINDER,
            default=[],
            metavar="KEY VALUE",
            help=f"config overrides, after every option (e.g. {override_example}; also "
            "accepted after --opts)",
        )
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error here")
    return parser


def run(
    main: Callable[[argparse.Namespace], Any],
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None = None,
) -> int:
    """Parse, set up logging, run `main(args)`; its int result (default 0) is the exit status."""
    args = parser.parse_args(argv)
    close_log_file()
    setup_logging()
    try:
        status = main(args)
    except USER_ERRORS as err:
        if args.debug:
            raise
        logger.debug("stopped on this error:", exc_info=True)
        where = log_path()
        hint = f"traceback in {where}" if where else "--debug shows the traceback"
        print(f"error: {err} ({hint})", file=sys.stderr)
        return 2
    finally:
        close_log_file()
    return int(status or 0)


def option(
    default: Any,
    help: str,
    *,
    flag: str | None = None,
    choices: Sequence[Any] | None = None,
    metavar: str | None = None,
) -> Any:
    """A dataclass field that is also a command-line option (`add_options`): its default, help
    text, and optionally another flag than `--field-name`, choices and a metavar."""
    return field(
        default=default,
        metadata={"help": help, "flag": flag, "choices": choices, "metavar": metavar},
    )


def option_flag(f: Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def add_options(parser: argparse.ArgumentParser | argparse._ArgumentGroup, cls: type) -> None:
    """An option per `option()` field of the dataclass `cls` (a bool default makes a flag)."""
    for f in fields(cls):
        if "help" not in f.metadata:
            continue
        kw: dict[str, Any] = {"dest": f.name, "default": f.default, "help": f.metadata["help"]}
        if isinstance(f.default, bool):
            kw["action"] = "store_true"
        else:
            kw.update(
                type=type(f.default), choices=f.metadata["choices"], metavar=f.metadata["metavar"]
            )
        parser.add_argument(option_flag(f), **kw)


def options_from_args(cls: type, args: argparse.Namespace) -> Any:
    """The dataclass `cls` with every field `add_options` made an option for taken from `args`."""
    return cls(**{f.name: getattr(args, f.name) for f in fields(cls) if "help" in f.metadata})
