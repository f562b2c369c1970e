"""experiments/gpu_state.py, the GPU clock/power sampler of the benchmarks: on a machine
without NVML it must yield empty columns and never raise (CI); with a GPU and nvidia-ml-py
it must see the clock of a GPU under load."""
from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location(
    "gpu_state", Path(__file__).resolve().parents[2] / "experiments" / "gpu_state.py")
gpu_state = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gpu_state)


def _nvml_works() -> bool:
    try:
        import pynvml

        pynvml.nvmlInit()
        return pynvml.nvmlDeviceGetCount() > 0
    except Exception:
        return False


@pytest.mark.skipif(_nvml_works(), reason="NVML is there: the GPU test below covers it")
def test_without_nvml_empty_columns():
    with gpu_state.GpuState(period_s=0.001) as st:
        time.sleep(0.01)
    assert st.summary() == gpu_state.EMPTY


@pytest.mark.gpu
def test_samples_a_busy_gpu():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available() or not _nvml_works():
        pytest.skip("needs a CUDA device and nvidia-ml-py")
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    with gpu_state.GpuState(period_s=0.005) as st:
        t0 = time.time()
        while time.time() - t0 < 0.3:
            a @ a
        torch.cuda.synchronize()
    s = st.summary()
    assert len(st.samples) >= 5
    assert s["sm_mhz"] > 100 and s["power_w"] > 10 and s["temp_c"] > 0
    assert isinstance(s["clock_events"], str)
