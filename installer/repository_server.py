"""``python -m installer.repository_server --log-level LEVEL [nx-27017 args]``: the embedded repository, quieter.

nx-27017 logs every command at INFO (each ping included) and has no level option, only ``-v`` for DEBUG. Its
``main()`` configures logging with ``basicConfig``, which does nothing once the root logger has a handler, so
configuring it here first sets the level of everything it writes.
"""

from __future__ import annotations

import argparse
import logging
import sys

from nx_27017.nx_27017 import main as nx_main

# Aggregations nx-27017 cannot run in SQL fall back to Python and it warns each time: how it works, not a fault.
_FALLBACK_LOGGERS = ("neosqlite.collection.query_engine", "neosqlite.collection.temporary_table_aggregation")


def main(argv: list[str] | None = None) -> int:
    """Configure logging at the given level, then run nx-27017 with the remaining arguments."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    args, rest = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=args.log_level,
                        format="%(asctime)s - %(name)s - %(levelname)s - [%(process)d] - %(message)s")
    if args.log_level == "WARNING":
        for name in _FALLBACK_LOGGERS:
            logging.getLogger(name).setLevel(logging.ERROR)
    sys.argv = ["nx-27017", *rest]
    return int(nx_main() or 0)


if __name__ == "__main__":
    sys.exit(main())
