"""GPU errors that poison the process: after a device-side assert or an illegal memory access the
CUDA context is dead, and every later kernel in this process fails too. Such a process must exit
(Celery's prefork pool replaces it, with a fresh context) instead of failing every later job."""

from __future__ import annotations

# The CUDA runtime's own wording of its sticky errors, as torch surfaces them.
STICKY_MARKERS = (
    "device-side assert triggered",
    "an illegal memory access was encountered",
    "illegal instruction was encountered",
    "misaligned address",
    "unspecified launch failure",
    "CUDA error: uncorrectable ECC error",
    "CUBLAS_STATUS_EXECUTION_FAILED",
)

# The pool process's exit status when its device context is lost (EX_SOFTWARE).
DEVICE_LOST_EXIT_CODE = 70


class DeviceLost(RuntimeError):
    """The row never finished: the device context died under it. Its job is retried elsewhere."""


def is_sticky_device_error(error: BaseException) -> bool:
    if not isinstance(error, RuntimeError) or isinstance(error, DeviceLost):
        return False
    text = str(error)
    return any(marker in text for marker in STICKY_MARKERS)
