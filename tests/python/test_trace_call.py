"""experiments/trace_call.py's reading of a Chrome trace (no GPU needed): GPU activities
belong to the call whose host range launched them, idle time is the span less the busy
time, and the gaps name the runtime call the host was in."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"


@pytest.fixture(scope="module")
def trace_call():
    sys.path.insert(0, str(EXPERIMENTS))
    try:
        import trace_call as module
    finally:
        sys.path.remove(str(EXPERIMENTS))
    return module


def _events():
    def runtime(name, ts, dur, corr):
        return {"name": name, "cat": "cuda_runtime", "ph": "X", "ts": ts, "dur": dur, "args": {"correlation": corr}}

    def kernel(name, ts, dur, corr):
        return {"name": name, "cat": "kernel", "ph": "X", "ts": ts, "dur": dur, "args": {"correlation": corr}}

    return [
        {"name": "call", "cat": "user_annotation", "ph": "X", "ts": 0, "dur": 100},
        runtime("cudaLaunchKernel", 10, 5, 1), runtime("cudaLaunchKernel", 20, 5, 2),
        runtime("cudaStreamSynchronize", 42, 15, 3),
        kernel("first", 30, 10, 1), kernel("second", 60, 10, 2),
        # the next call: its kernel must not count in the first call's span
        {"name": "call", "cat": "user_annotation", "ph": "X", "ts": 200, "dur": 50},
        runtime("cudaLaunchKernel", 210, 5, 4), kernel("third", 220, 30, 4),
    ]


def test_summarize_spans_gaps_and_runtime_calls(trace_call, capsys):
    trace_call.summarize(_events(), "synthetic", {"sm_mhz": 1980.0, "power_w": 500.0, "temp_c": 40,
                                                  "clock_events": ""})
    out = capsys.readouterr().out
    assert out.startswith("synthetic [1980 MHz 500 W]")
    assert "call 0: host     100.0 us; GPU span      40.0 us, busy      20.0 us, 2 activities; idle     20.0 us" in out
    assert "gap     20.0 us before second (host in: cudaStreamSynchronize)" in out
    assert "call 1: host      50.0 us; GPU span      30.0 us, busy      30.0 us, 1 activities; idle      0.0 us" in out
    assert "runtime calls of this call (count, host us): cudaLaunchKernel 1 5" in out


def test_summarize_without_gpu_state(trace_call, capsys):
    trace_call.summarize(_events(), "synthetic", {"sm_mhz": None, "power_w": None, "temp_c": None,
                                                  "clock_events": None})
    assert capsys.readouterr().out.startswith("synthetic [GPU state not measured]")


def test_parse_shape(trace_call):
    # the shapes' parser and dtype names it shares with bench_gpu_kernels.py
    import torch

    (shape,) = trace_call.parse_shapes("2,32,8,1024,16384,128,bf16")
    assert shape == (2, 32, 8, 1024, 16384, 128, "bf16")
    dtypes = sys.modules["bench_gpu_kernels"].DTYPES
    assert dtypes[shape[6]] == torch.bfloat16
    with pytest.raises(KeyError):
        dtypes["fp8"]
