"""Peak memory of a block of work: CUDA's allocator peak on a GPU, the process's resident peak on a CPU."""

import torch


class Memory:
    """Peak memory of a block: CUDA's allocator peak, or the process's resident peak on a CPU."""

    def __init__(self, device):
        self.device = device

    def measure(self, work):
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            before = torch.cuda.memory_allocated(self.device)
            work()
            return torch.cuda.max_memory_allocated(self.device) - before
        trim_heap()
        before = proc_status("VmRSS")
        if before is None or not reset_peak_rss():
            work()
            return None
        work()
        return proc_status("VmHWM") - before


def return_freed_memory():
    """Make glibc hand large freed blocks back to the system, so resident size tracks use.

    By default glibc raises its mmap threshold as blocks are freed and then keeps freed
    tensors' memory in its heap: a peak measured by resident size would miss new use.
    The setting lasts for the process, so only bench.py run as a script asks for it.
    """
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 256 * 1024)  # M_MMAP_THRESHOLD: fixed, 256 KiB
        libc.malloc_trim(0)  # and give back what the heap holds free now
    except (OSError, AttributeError):
        pass


def trim_heap():
    """Hand the heap's free memory back to the system (glibc), so that a block's new use shows as growth."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def proc_status(field):
    """A field of /proc/self/status in bytes, or None."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def reset_peak_rss():
    try:  # Linux: writing 5 resets the process's peak resident size to its current one
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False
