"""`python -m pbgan_core` and the `pbgan` command. The heavy modules load inside `run`, so a
Ctrl-C while they load ends with a message too, not a traceback."""
import sys


def run() -> None:
    try:
        from .cli import main
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted while starting; nothing was changed\n")
        sys.exit(130)
    sys.exit(main())


if __name__ == "__main__":
    run()
