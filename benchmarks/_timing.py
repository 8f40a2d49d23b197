"""Timing helpers of the benchmark scripts (imported by ``bench_pixel_decoder.py`` and
``bench_ms_deform_attn.py``, which run as scripts, so this folder is on ``sys.path``).

torch is imported inside the functions: ``bench_ms_deform_attn.py``'s parent process, which only
starts workers and prints their table, does not need it until it describes the machine.
"""

import os
import platform
import statistics
import time

__all__ = ["Clock", "machine", "median_ms"]


class Clock:
    """Wall-clock readings (``time.perf_counter``) that wait for the device's queued work first:
    CUDA kernels run asynchronously, so a reading without synchronizing would time the launch."""

    def __init__(self, device):
        import torch

        self.device = torch.device(device)

    def sync(self) -> None:
        """Waits until the device has run everything queued (a no-op on CPU)."""
        if self.device.type == "cuda":
            import torch

            torch.cuda.synchronize(self.device)

    def now(self) -> float:
        """Seconds (``perf_counter``) after the device's queued work has finished."""
        self.sync()
        return time.perf_counter()


def median_ms(fn, clock: Clock, warmup: int, repeats: int) -> float:
    """Median wall time of ``repeats`` calls of ``fn()`` in milliseconds, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = clock.now()
        fn()
        times.append(clock.now() - t0)
    return statistics.median(times) * 1e3


def machine(device) -> str:
    """One line for the table header: the GPU's name with the torch / CUDA versions, or the CPU's
    model name, logical CPU count, torch version and torch's thread count."""
    import torch

    if torch.device(device).type == "cuda":
        name = torch.cuda.get_device_name(device) if torch.cuda.is_available() else "no CUDA device"
        return f"{name}, torch {torch.__version__}, CUDA {torch.version.cuda}"
    cpu = platform.processor() or "cpu"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} logical CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads"
