"""streamer: real-time autoregressive video diffusion over a rolling KV cache."""

import os as _os
import time as _time

# When streamer's code first ran in this process: `cli.process_seconds` counts from here when the
# process's own start (from /proc) is not this command's (a shell that ran other work, then exec'd it)
_IMPORTED = _time.perf_counter()

# OpenMP threads that wait for work sleep instead of spinning. The model's chunk runs thousands of
# small parallel regions; with spinning waits, any other busy process on the same cores (a browser,
# a second stream, a training run) turns each region's barrier into a scheduling fight. Measured on
# the 2-core dev machine with other jobs running (`/tmp/ab_threads.py` in the issue-13 note): the
# shipped model at 2 threads made 0.8-5.6 frames/s with spinning waits (GOMP_SPINCOUNT=10000: 5.6)
# and 16 frames/s with passive ones (1 thread: 17-18 either way). Set before torch loads OpenMP;
# a value the user set wins.
if "OMP_WAIT_POLICY" not in _os.environ and "torch" in __import__("sys").modules:
    # too late for this process: OpenMP read its settings when torch loaded it. Said once, since the
    # variable set below would otherwise hide it (it still reaches the processes this one starts)
    import warnings as _warnings

    _warnings.warn("torch was imported before streamer, so OpenMP keeps spinning waits: with other busy "
                   "processes on the same cores, streaming can run several times slower. Import streamer "
                   "first, or set OMP_WAIT_POLICY=PASSIVE (or ACTIVE) before starting Python.", stacklevel=2)
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
