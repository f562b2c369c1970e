"""What the GPU ran at while a measurement ran: SM clock, board power, temperature and the
driver's clock event reasons (why the clock was below its maximum), sampled through NVML
(``pynvml`` from the nvidia-ml-py package) in a background thread.

Two tables of the same kernels taken on different lent machines differed by 2-7% for ours
while cuDNN's did not move (experiments/KERNEL_NOTES.md, "Tables from different calls");
these columns say whether clocks or power limits had a part in such a difference.

Usage::

    with GpuState() as st:
        t = bench_ms(fn, rep_ms)
    st.summary()  # {"sm_mhz": 1975.0, "power_w": 652.1, "temp_c": 48, "clock_events": "sw_power_cap"}

Without nvidia-ml-py or an NVIDIA driver, ``summary()`` returns the same keys with None
values (the benchmarks then write empty columns); nothing raises.
"""
from __future__ import annotations

import threading

# NVML clock event reason bits (nvml.h, nvmlClocksEventReason*), in the order they are named.
_EVENTS = [
    (0x1, "idle"),
    (0x2, "app_clocks"),
    (0x4, "sw_power_cap"),
    (0x8, "hw_slowdown"),
    (0x20, "sync_boost"),
    (0x40, "sw_thermal"),
    (0x80, "hw_thermal"),
    (0x100, "hw_power_brake"),
    (0x200, "display_clocks"),
]

EMPTY = {"sm_mhz": None, "power_w": None, "temp_c": None, "clock_events": None}


def _nvml_handle(nvml, cuda_index: int):
    """NVML's handle of CUDA device cuda_index, found by its UUID (CUDA_VISIBLE_DEVICES
    renumbers CUDA's devices, not NVML's); by index where torch gives no UUID."""
    try:
        import torch

        uuid = str(torch.cuda.get_device_properties(cuda_index).uuid)
        return nvml.nvmlDeviceGetHandleByUUID(uuid if uuid.startswith("GPU-") else "GPU-" + uuid)
    except Exception:
        return nvml.nvmlDeviceGetHandleByIndex(cuda_index)


class GpuState:
    """Context manager that samples the GPU every period_s seconds while its block runs.

    cuda_index: the CUDA device (default: torch's current one, else 0). period_s: 20 ms by
    default, about ten samples in a 200 ms timing, so that the sampling thread takes the
    GIL from the timed launches rarely. summary(): mean SM
    clock (MHz) and board power (W) over the samples, the highest temperature (C), and the
    clock event reasons seen in any sample ('+'-joined names, '' when none)."""

    def __init__(self, cuda_index: int | None = None, period_s: float = 0.02):
        self.period_s = period_s
        self.samples: list[tuple[int, float, int, int]] = []
        self._stop = threading.Event()
        self._thread = None
        self._nvml = None
        self._handle = None
        try:
            import pynvml

            pynvml.nvmlInit()
            if cuda_index is None:
                try:
                    import torch

                    cuda_index = torch.cuda.current_device()
                except Exception:
                    cuda_index = 0
            self._handle = _nvml_handle(pynvml, cuda_index)
            # the newer name of the call, the older where nvidia-ml-py predates it
            self._events = (getattr(pynvml, "nvmlDeviceGetCurrentClocksEventReasons", None)
                            or pynvml.nvmlDeviceGetCurrentClocksThrottleReasons)
            self._nvml = pynvml
        except Exception:  # no nvidia-ml-py, no driver: empty columns
            self._nvml = None

    def _sample(self):
        nv, h = self._nvml, self._handle
        clock = nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_SM)
        power = nv.nvmlDeviceGetPowerUsage(h) / 1000.0
        temp = nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU)
        self.samples.append((clock, power, temp, int(self._events(h))))

    def _run(self):
        while not self._stop.is_set():
            try:
                self._sample()
            except Exception:
                return
            self._stop.wait(self.period_s)

    def __enter__(self):
        if self._nvml is not None:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
        return False

    def summary(self) -> dict:
        if not self.samples:
            return dict(EMPTY)
        n = len(self.samples)
        events = 0
        for s in self.samples:
            events |= s[3]
        return {
            "sm_mhz": round(sum(s[0] for s in self.samples) / n, 1),
            "power_w": round(sum(s[1] for s in self.samples) / n, 1),
            "temp_c": max(s[2] for s in self.samples),
            "clock_events": "+".join(name for bit, name in _EVENTS if events & bit),
        }


def csv_columns(summary: dict, prefix: str = "fwd_bwd_") -> dict:
    """A summary() as CSV columns ('' for what was not measured): {prefix}sm_mhz,
    {prefix}power_w, gpu_temp_c, clock_events."""
    cell = lambda v: "" if v is None else v  # noqa: E731
    return {prefix + "sm_mhz": cell(summary["sm_mhz"]), prefix + "power_w": cell(summary["power_w"]),
            "gpu_temp_c": cell(summary["temp_c"]), "clock_events": cell(summary["clock_events"])}


def describe(summary: dict) -> str:
    """A summary() for a table line: '1975 MHz 652 W sw_power_cap', '' when not measured."""
    if summary.get("sm_mhz") in (None, ""):
        return ""
    events = summary.get("clock_events") or ""
    return f"{summary['sm_mhz']:.0f} MHz {summary['power_w']:.0f} W" + (f" {events}" if events else "")
