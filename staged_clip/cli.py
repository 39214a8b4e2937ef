"""A script's main, run from the command line: user errors as one line, SIGTERM as Ctrl-C, and an
interrupted run's exit status 130 (SIGINT) or 143 (SIGTERM)."""

import functools
import signal
import sys
import threading

from .errors import Interrupted, Terminated, UserError, out_of_memory_message, signal_of


def _terminate(signum, frame):
    raise Terminated


def cli(main):
    """Wrap a script's main(argv) so user errors exit non-zero with one line on stderr.

    SIGTERM (a scheduler's kill) is turned into Ctrl-C while main runs, so it saves alike; an
    interrupted run (errors.Interrupted, or Ctrl-C anywhere else) exits 130, or 143 for SIGTERM.
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
        except Interrupted as stop:
            print(stop.message(), file=sys.stderr)
            raise SystemExit(stop.exit_code) from None
        except KeyboardInterrupt as e:
            print("interrupted", file=sys.stderr)
            raise SystemExit(128 + signal_of(e)) from None
        except (MemoryError, RuntimeError) as e:
            message = out_of_memory_message(e)
            if message is None:
                raise
            raise SystemExit(f"error: {message}") from None
        finally:
            if in_main_thread:
                signal.signal(signal.SIGTERM, previous)

    return wrapper
