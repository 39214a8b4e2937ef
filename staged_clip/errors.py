"""User errors and status lines: the bottom of the package, importing nothing of it."""

import functools
import signal
import sys
import threading

import torch


class UserError(Exception):
    """A problem with the user's input: reported as one line, without a traceback."""


def log(*parts):
    """Print a status line to stderr, above any progress bar."""
    from tqdm import tqdm
    tqdm.write(" ".join(str(p) for p in parts), file=sys.stderr)


def out_of_memory_message(error):
    """What to tell the user about an out-of-memory error, or None for any other error."""
    if isinstance(error, torch.cuda.OutOfMemoryError):
        return ("out of GPU memory: lower --size or --cutn (or --steps for an unrolled bake), "
                "or use --device cpu")
    if isinstance(error, MemoryError) or "DefaultCPUAllocator" in str(error):
        return "out of memory: lower --size, --cutn or --save-size (or --steps for an unrolled bake)"
    return None


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
