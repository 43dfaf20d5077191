"""Command-line plumbing shared by every `python -m pipelines.<step>`.

A user error (a bad config key, a missing or malformed dataset) ends the run with one line on
stderr, `error: <message>`, and exit status 2, the status argparse already uses for bad flags;
`--debug` shows the full traceback instead. Anything else is a bug and keeps its traceback.

Every pipeline's config comes from the same three sources, later ones winning: the config
dataclass's defaults, a YAML file (`--config`), `--set key=value` overrides (dotted keys reach
nested configs), and the pipeline's own flags (`--dataset` and the like), which are overrides
of the config field they name.

Example:
  def parse_args(argv=None) -> MyConfig:
      parser = cli.config_parser(__doc__.splitlines()[0], MyConfig, dataset=True)
      parser.add_argument("--run-dir")
      return cli.parse_config(MyConfig, parser, argv, fields=("run_dir",))

  if __name__ == "__main__":
      cli.run(main, parse_args)
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from typing import (Any, Callable, Mapping, Optional, Sequence, Tuple, Type, TypeVar,
                    Union)

T = TypeVar("T")

USAGE_ERROR = 2
DEBUG_FLAG = "--debug"


def user_errors() -> Tuple[Type[BaseException], ...]:
    """Errors whose message already tells the user what to fix."""
    from recommenders_tf.config import ConfigError
    from recommenders_tf.data.registry import DatasetNotFoundError
    from recommenders_tf.data.tfds_loader import TFDSUnavailableError
    from recommenders_tf.data.validation import DataValidationError

    return (ConfigError, DataValidationError, DatasetNotFoundError, TFDSUnavailableError)


def make_parser(description: Optional[str] = None, **kwargs: Any) -> argparse.ArgumentParser:
    """An ArgumentParser with the shared `--debug` flag (read by `run`, listed in --help)."""
    parser = argparse.ArgumentParser(description=description, **kwargs)
    parser.add_argument(DEBUG_FLAG, action="store_true",
                        help="on an error, show the full Python traceback")
    return parser


def config_parser(description: Optional[str], config_cls: type, *, dataset: bool = False,
                  **kwargs: Any) -> argparse.ArgumentParser:
    """`make_parser` plus the flags every pipeline shares: `--config FILE`, `--set KEY=VALUE`
    (repeatable) and, with `dataset`, `--dataset SPEC`."""
    parser = make_parser(description, **kwargs)
    parser.add_argument("--config", help=f"YAML file with {config_cls.__name__} fields")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field (dotted keys reach nested configs); "
                             "repeatable")
    if dataset:
        parser.add_argument("--dataset", help="dataset spec (see recommenders_tf.data."
                                              "load_dataset), overriding the config's")
    return parser


def config_from_args(config_cls: Type[T], args: argparse.Namespace,
                     fields: Union[Sequence[str], Mapping[str, str]] = ()) -> T:
    """The config: defaults <- `args.config` <- `args.set` <- the given flags of `fields`.

    Args:
      config_cls: the pipeline's config dataclass.
      args: parsed arguments of a `config_parser`.
      fields: flags that set a config field: argparse destinations named like the field, or
        {destination: dotted field}; `dataset` is included when the parser has `--dataset`.
        A flag left at None is not applied.
    """
    from recommenders_tf.config import load_config

    mapping = dict(fields) if isinstance(fields, Mapping) else {f: f for f in fields}
    if hasattr(args, "dataset"):
        mapping.setdefault("dataset", "dataset")
    overrides = list(getattr(args, "set", None) or [])
    for dest, field in mapping.items():
        value = getattr(args, dest)
        if value is not None:
            # JSON is YAML: a string flag stays a string ("007", "yes", "a: b") and a typed
            # one (an int, a list) keeps its type through the override parser.
            overrides.append(f"{field}={json.dumps(value)}")
    return load_config(config_cls, getattr(args, "config", None), overrides)


def parse_config(config_cls: Type[T], parser: argparse.ArgumentParser,
                 argv: Optional[Sequence[str]] = None,
                 fields: Union[Sequence[str], Mapping[str, str]] = ()) -> T:
    """`config_from_args(config_cls, parser.parse_args(argv), fields)`."""
    return config_from_args(config_cls, parser.parse_args(argv), fields)


def run(main: Callable[[Any], Any], parse_args: Callable[[Sequence[str]], Any],
        argv: Optional[Sequence[str]] = None,
        extra_errors: Tuple[Type[BaseException], ...] = ()) -> Any:
    """`main(parse_args(argv))`, turning a user error into `error: <message>` and exit 2.

    Args:
      main: the pipeline's `main(config)`.
      parse_args: the pipeline's `parse_args(argv) -> config`.
      argv: the arguments; default `sys.argv[1:]`.
      extra_errors: more exception types this pipeline reports as user errors.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    # Read before parsing, because a bad --set fails inside parse_args and must honour it too.
    debug = DEBUG_FLAG in argv
    try:
        return main(parse_args(argv))
    except user_errors() + tuple(extra_errors) as err:
        if debug:
            raise
        print(f"error: {err}", file=sys.stderr, flush=True)
        sys.exit(USAGE_ERROR)


def command_line(module: str, default_args: str = "") -> str:
    """The command a results file records: `python -m <module>` with this process's arguments
    (quoted) when `module` is the script that was started, else with `default_args` (the run
    was called from another pipeline or a test, whose argv says nothing about it)."""
    if sys.argv and sys.argv[0].endswith(module.rsplit(".", 1)[-1] + ".py"):
        return f"python -m {module} " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    return f"python -m {module} {default_args}".rstrip()
