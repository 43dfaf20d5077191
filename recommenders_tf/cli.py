"""Command-line plumbing shared by every `python -m pipelines.<step>`.

A user error (a bad config key, a missing or malformed dataset) ends the run with one line on
stderr, `error: <message>`, and exit status 2, the status argparse already uses for bad flags;
`--debug` shows the full traceback instead. Anything else is a bug and keeps its traceback.

Example:
  def parse_args(argv=None) -> MyConfig:
      parser = cli.make_parser(__doc__.splitlines()[0])
      parser.add_argument("--config")
      ...

  if __name__ == "__main__":
      cli.run(main, parse_args)
"""
from __future__ import annotations

import argparse
import sys
from typing import Any, Callable, Optional, Sequence, Tuple, Type

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
