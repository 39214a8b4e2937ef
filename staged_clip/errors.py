"""User errors and status lines: the bottom of the package, importing nothing of it."""

import sys


class UserError(Exception):
    """A problem with the user's input: reported as one line, without a traceback."""


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
