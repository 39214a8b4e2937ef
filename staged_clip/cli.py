"""A script's main, run from the command line: user errors as one line, SIGTERM as Ctrl-C."""

import functools
import signal
import sys
import threading

from .errors import UserError, out_of_memory_message


def _terminate(signum, frame):
    raise KeyboardInterrupt


def cli(main):
    """Wrap a script's main(argv) so user errors exit non-zero with one line on stderr.

    SIGTERM (a scheduler's kill) is turned into Ctrl-C while main runs, so it saves alike.
    """

    @functools.wraps(main)
    def wrapper(argv=None):
        in_main_thread = threading.current_thread() is threading.main_thread()
        if in_main_thread:
            previous = signal.signal(signal.SIGTERM, _terminate)
        try:
            return main(argv)
        except UserError as e:
            raise SystemExit(f"error: {e}") from None
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            raise SystemExit(130) from None
        except (MemoryError, RuntimeError) as e:
            message = out_of_memory_message(e)
            if message is None:
                raise
            raise SystemExit(f"error: {message}") from None
        finally:
            if in_main_thread:
                signal.signal(signal.SIGTERM, previous)

    return wrapper
