"""User errors, interruptions and status lines: the bottom of the package, importing nothing of it."""

import pickle
import signal
import struct
import sys
from pathlib import Path

# what torch.load and torch.jit.load raise on a file they cannot read: pickled code refused by
# weights_only, a truncated or foreign archive, and the legacy reader's errors on arbitrary bytes
READ_ERRORS = (pickle.UnpicklingError, RuntimeError, KeyError, EOFError, ValueError, OSError, AttributeError,
               IndexError, TypeError, ImportError, OverflowError, struct.error)


class UserError(Exception):
    """A problem with the user's input: reported as one line, without a traceback."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's kill), raised where Ctrl-C would be, so that it saves alike."""


class Interrupted(Exception):
    """A run stopped by Ctrl-C or a kill once it saved what it had: the script says what (one line
    starting "interrupted: ") and exits 128 + the signal's number, 130 for SIGINT and 143 for
    SIGTERM, so that a scheduler or a shell tells a partial result from a finished one."""

    def __init__(self, what, signum=signal.SIGINT):
        super().__init__(what)
        self.what, self.signum = what, int(signum)

    def message(self):
        return f"interrupted: {self.what}"

    @property
    def exit_code(self):
        return 128 + self.signum


def signal_of(interrupt):
    """The signal a KeyboardInterrupt stands for: SIGTERM for a Terminated, else SIGINT."""
    return signal.SIGTERM if isinstance(interrupt, Terminated) else signal.SIGINT


def log(*parts):
    """Print a status line to stderr, above any progress bar."""
    from tqdm import tqdm
    tqdm.write(" ".join(str(p) for p in parts), file=sys.stderr)


def out_of_memory_message(error):
    """What to tell the user about an out-of-memory error, or None for any other error."""
    torch = sys.modules.get("torch")  # an error of torch's can only come once torch is loaded
    if torch is not None and isinstance(error, torch.cuda.OutOfMemoryError):
        return ("out of GPU memory: lower --size or --cutn (or --steps for an unrolled bake), "
                "or use --device cpu")
    if isinstance(error, MemoryError) or "DefaultCPUAllocator" in str(error):
        return "out of memory: lower --size, --cutn or --save-size (or --steps for an unrolled bake)"
    return None


def unreadable_reason(path, error):
    """Why torch.load could not read a file, in words a user can act on."""
    if "unsupported global" in str(error).lower():  # weights_only refused a class or function
        return "it holds pickled code, which is never run"
    head = Path(path).read_bytes()[:512]
    if not head:
        return "it is empty"
    if head.startswith(b"PK"):  # torch.save writes a zip archive
        return "the archive is truncated or damaged"
    try:
        head.decode("utf-8")
        return "it is a text file, not one that torch.save wrote"
    except UnicodeDecodeError:
        return "it is not a file that torch.save wrote"
