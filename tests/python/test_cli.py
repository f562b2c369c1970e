"""The command line: ``make-features`` and the main job ``run`` under mpirun.

These tests start ``mpirun -n 2 python -m lvxattn ...`` themselves (with a timeout,
so a hang is a failure), hence they run in a plain ``python -m pytest``.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import lvxattn
from lvxattn import cli, data, devices, sharding, train
from lvxattn.progress import Progress

TIMEOUT_S = 120
RANKS = 2

if int(os.environ.get("OMPI_COMM_WORLD_SIZE", os.environ.get("PMI_SIZE", "1"))) > 1:
    pytest.skip("test_cli.py starts mpirun itself: run it without mpirun", allow_module_level=True)


def command_env() -> dict:
    env = dict(os.environ)
    package_root = str(Path(list(lvxattn.__path__)[0]).resolve().parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
    env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def mpirun(n: int = RANKS):
    launcher = shutil.which("mpirun", path=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    if launcher is None:
        pytest.skip("mpirun not found")
    return [launcher, "--oversubscribe", "-n", str(n)]


def lvxattn_command(*args: str, ranks: bool = True, n: int = RANKS, cwd=None) -> subprocess.CompletedProcess:
    cmd = (mpirun(n) if ranks else []) + [sys.executable, "-m", "lvxattn", *args]
    try:
        return subprocess.run(cmd, env=command_env(), capture_output=True, text=True, timeout=TIMEOUT_S, cwd=cwd)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{' '.join(cmd)} did not finish in {TIMEOUT_S} s (hang?)\n{exc.stderr}")


def needs_core():
    if not hasattr(lvxattn, "cross_attention"):
        pytest.skip("lvxattn.cross_attention is not built")


@pytest.fixture
def small_file(tmp_path):
    path = tmp_path / "features.h5"
    result = lvxattn_command("make-features", str(path), "--batch", "2", "--frames", "3",
                             "--tokens-per-frame", "5", "--text-len", "7", "--visual-dim", "6",
                             "--text-dim", "8", "--mask", "latest", "--no-progress", ranks=False)
    assert result.returncode == 0, result.stderr
    assert "wrote" in result.stdout
    return path


# ---------------------------------------------------------------------------
# make-features


def test_make_features_writes_the_requested_file(small_file):
    meta = data.read_meta(small_file)
    assert (meta.batch, meta.frames, meta.tokens_per_frame, meta.visual_len) == (2, 3, 5, 15)
    assert (meta.text_len, meta.visual_dim, meta.text_dim, meta.has_q_ranges) == (7, 6, 8, True)
    with h5py.File(small_file) as f:
        want = lvxattn.masks.interleaved_ranges(2, 7, 15, 3, "latest").numpy()
        assert np.array_equal(f["q_ranges"][...], want)
        assert abs(float(f["visual"][...].std()) - 1.0) < 0.3   # standard-normal features


def test_make_features_rejects_missing_length(tmp_path):
    result = lvxattn_command("make-features", str(tmp_path / "f.h5"), "--text-len", "4",
                             "--visual-dim", "2", "--text-dim", "2", ranks=False)
    assert result.returncode == cli.EXIT_BAD_INPUT
    assert "give the visual length: --visual-len N, or --frames N --tokens-per-frame M" in result.stderr


def test_make_features_rejects_frames_without_tokens_per_frame(tmp_path):
    result = lvxattn_command("make-features", str(tmp_path / "f.h5"), "--text-len", "4", "--frames", "3",
                             "--visual-dim", "2", "--text-dim", "2", ranks=False)
    assert result.returncode == cli.EXIT_BAD_INPUT
    assert "--frames and --tokens-per-frame go together" in result.stderr
    assert not (tmp_path / "f.h5").exists()


# ---------------------------------------------------------------------------
# the command line itself


def test_help_shows_defaults():
    _, commands = cli.build_parser()
    text = " ".join(commands["run"].format_help().split())
    for option, default in (("--steps STEPS", "3"), ("--algorithm", "lvx"), ("--layers LAYERS", "2"),
                            ("--seed SEED", "0"), ("--device", "cpu")):
        after = text[text.index(option, text.index("options:")):]
        assert f"(default: {default})" in after[:200], (option, after[:200])
    assert "(default: None)" not in text and "(default: False)" not in text


def test_bad_run_flag_prints_the_run_usage_once(tmp_path):
    result = lvxattn_command("run", "--features", str(tmp_path / "f.h5"), "--stpes", "3")
    assert result.returncode != 0
    assert result.stderr.count("usage: python -m lvxattn run") == 1, result.stderr
    assert result.stderr.count("unrecognized arguments: --stpes 3 (did you mean --steps?)") == 1, result.stderr


def test_unknown_option_far_from_any_gets_no_suggestion(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.parse(["run", "--features", "f.h5", "--zzzzzz"])
    assert exit_info.value.code == cli.EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "unrecognized arguments: --zzzzzz" in err and "did you mean" not in err, err


def test_missing_command_names_the_commands():
    result = lvxattn_command(ranks=False)
    assert result.returncode == cli.EXIT_BAD_INPUT
    assert "required: {make-features,run,info}" in result.stderr, result.stderr


def test_info_says_what_was_built():
    result = lvxattn_command("info", ranks=False)
    assert result.returncode == 0, result.stdout + result.stderr
    for line in ("CPU backend    ON", "MPI transport", "NCCL transport", "mpi4py's MPI", "no problems found"):
        assert line in result.stdout, result.stdout
    assert lvxattn.build_info()["transports"] == lvxattn.available_transports()


# ---------------------------------------------------------------------------
# run: bad input gives a clear error on every rank, a non-zero exit, and no hang


def write_raw(path, **datasets):
    with h5py.File(path, "w") as f:
        for name, value in datasets.items():
            f[name] = value


@pytest.mark.parametrize("case, extra, message", [
    ("missing_file", [], "feature file not found"),
    ("no_text", [], "dataset 'text' is missing"),
    ("bad_visual_shape", [], "'visual' has shape (2, 6)"),
    ("good", ["--visual-dim", "5"], "visual_dim is 4 in the file but 5 was requested (--visual-dim)"),
    ("good", ["--text-dim", "3"], "text_dim is 8 in the file but 3 was requested (--text-dim)"),
    ("good", ["--heads", "3", "--kv-heads", "2"], "--heads 3 must be a multiple of --kv-heads 2"),
    ("good", ["--visual-split", "1,2"], "visual_split [1, 2] must be non-negative and sum to the length 6"),
    ("good", ["--text-split", "3"], "text_split [3] needs one row count per rank: 1 given, 2 ranks"),
])
def test_run_bad_input_fails_cleanly_on_every_rank(tmp_path, case, extra, message):
    path = tmp_path / "f.h5"
    visual, text = np.zeros((2, 6, 4), np.float32), np.zeros((2, 3, 8), np.float32)
    if case == "no_text":
        write_raw(path, visual=visual)
    elif case == "bad_visual_shape":
        write_raw(path, visual=np.zeros((2, 6), np.float32), text=text)
    elif case == "good":
        write_raw(path, visual=visual, text=text)
    result = lvxattn_command("run", "--features", str(path), "--steps", "1", "--no-progress", *extra)
    assert result.returncode != 0
    for rank in range(RANKS):
        lines = [line for line in result.stderr.splitlines() if f"error (rank {rank}/{RANKS})" in line]
        assert lines and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def write_in_types(path, source, visual_type, text_type, ranges_type):
    """A copy of feature file `source` with its datasets stored in the given types."""
    with h5py.File(source, "r") as src, h5py.File(path, "w") as dst:
        for name, stored in (("visual", visual_type), ("text", text_type), ("q_ranges", ranges_type)):
            dst.create_dataset(name, data=src[name][...].astype(stored))
        dst.attrs.update(src.attrs)


@pytest.mark.parametrize("ranks", [1, 2, 3])
def test_run_reads_big_endian_features(tmp_path, small_file, ranks):
    """visual and text stored as '>f4', q_ranges as '>i4': the same first loss as the native file."""
    needs_core()
    path = tmp_path / "big_endian.h5"
    write_in_types(path, small_file, ">f4", ">f4", ">i4")
    report_path = tmp_path / "report.json"
    args = ["--layers", "2", "--heads", "4", "--kv-heads", "2", "--head-dim", "4", "--steps", "1", "--gate-init", "0.5"]
    result = lvxattn_command("run", "--features", str(path), "--report", str(report_path), "--no-progress", *args,
                             n=ranks)
    assert result.returncode == 0, result.stderr
    report = json.loads(report_path.read_text())
    assert report["world_size"] == ranks
    assert report["loss"][0] == pytest.approx(reference_first_loss(small_file, args), rel=1e-5)


@pytest.mark.parametrize("ranks", [1, 2, 3])
def test_run_with_a_feature_type_that_does_not_convert_fails_on_every_rank(tmp_path, small_file, ranks):
    path = tmp_path / "float_ranges.h5"
    write_in_types(path, small_file, ">f4", "<f8", ">f4")
    result = lvxattn_command("run", "--features", str(path), "--steps", "1", "--no-progress", n=ranks)
    assert result.returncode != 0
    for rank in range(ranks):
        lines = [line for line in result.stderr.splitlines() if f"error (rank {rank}/{ranks})" in line]
        assert lines and "'q_ranges' has type float32 big-endian; expected integers" in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_run_without_gpu_says_so_on_every_rank(tmp_path, small_file):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    result = lvxattn_command("run", "--features", str(small_file), "--device", "cuda", "--no-progress")
    assert result.returncode != 0
    for rank in range(RANKS):
        assert f"error (rank {rank}/{RANKS}): RuntimeError: --device cuda but torch sees no CUDA device" \
            in result.stderr


# ---------------------------------------------------------------------------
# run: the job itself


def reference_first_loss(path: Path, args: list[str]) -> float:
    """Step 0's loss computed in this process on the whole file (no ranks, float64 loss)."""
    parsed = cli.parse(["run", "--features", str(path), *args])
    shard = data.load_shard(path)
    model = train.build_model(parsed, shard.meta, None, torch.device("cpu"), torch.float32)
    with torch.no_grad():
        out = model(shard.text, shard.visual, shard.q_ranges)
    return float(out.double().pow(2).mean())


@pytest.mark.parametrize("recompute", ["--recompute", "--no-recompute"])
def test_run_reports_loss_stats_and_memory(tmp_path, small_file, recompute):
    needs_core()
    report_path = tmp_path / "report.json"
    args = ["--layers", "2", "--heads", "4", "--kv-heads", "2", "--head-dim", "4", "--steps", "2",
            recompute, "--gate-init", "0.5"]
    result = lvxattn_command("run", "--features", str(small_file), "--report", str(report_path), *args)
    assert result.returncode == 0, result.stderr
    assert "training |" in result.stderr and "step ms" in result.stdout
    report = json.loads(report_path.read_text())
    assert report["world_size"] == RANKS and len(report["loss"]) == 2
    assert report["config"]["recompute"] == (recompute == "--recompute")
    assert report["loss"][0] == pytest.approx(reference_first_loss(small_file, args), rel=1e-5)
    ranks = report["ranks"]
    assert [r["rank"] for r in ranks] == list(range(RANKS))
    assert [r["visual_rows"] for r in ranks] == sharding.even_counts(15, RANKS)
    assert [r["text_rows"] for r in ranks] == sharding.even_counts(7, RANKS)
    for r in ranks:
        assert r["attention"]["calls_per_step"] == 2
        assert r["step_s"] > 0 and r["peak_memory_bytes"] > 0 and r["saved_activation_bytes"] > 0
        assert r["attention"]["forward"]["bytes_sent"] > 0
        assert r["attention"]["backward"]["bytes_sent"] > 0


def test_run_writes_a_report_by_default_and_says_where(tmp_path, small_file):
    needs_core()
    result = lvxattn_command("run", "--features", str(small_file), "--steps", "1", "--layers", "1",
                             "--heads", "2", "--kv-heads", "1", "--head-dim", "4", "--no-progress", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    reports = list(tmp_path.glob("lvxattn-report-*.json"))
    assert len(reports) == 1
    assert f"report: {reports[0]}" in result.stdout
    assert json.loads(reports[0].read_text())["world_size"] == RANKS
    assert "over 1 step; " in result.stdout and f"{RANKS} ranks" in result.stdout
    assert "blocked ms: " in result.stdout   # the columns are explained under the table


def test_run_recompute_saves_activation_memory(tmp_path, small_file):
    needs_core()
    saved = {}
    for flag in ("--recompute", "--no-recompute"):
        report_path = tmp_path / f"{flag}.json"
        result = lvxattn_command("run", "--features", str(small_file), "--steps", "1", "--layers", "3",
                                 "--heads", "4", "--kv-heads", "2", "--head-dim", "16", flag,
                                 "--no-progress", "--report", str(report_path))
        assert result.returncode == 0, result.stderr
        saved[flag] = [r["saved_activation_bytes"] for r in json.loads(report_path.read_text())["ranks"]]
    for rank, rows in enumerate(sharding.even_counts(15, RANKS)):
        want = 3 * 2 * 2 * rows * 2 * 16 * 4   # layers * (K, V) * B * Lkv_local * Hkv * D * fp32
        got = saved["--no-recompute"][rank] - saved["--recompute"][rank]
        assert abs(got - want) <= 0.1 * want, (rank, got, want)


# ---------------------------------------------------------------------------
# Pieces


def test_summary_table_lists_every_rank():
    stats = {"forward": {"total_s": 0.002, "blocked_s": 0.001, "bytes_sent": 2**20, "bytes_recv": 2**20},
             "backward": {"total_s": 0.004, "blocked_s": 0.0, "bytes_sent": 2**21, "bytes_recv": 2**21}}
    ranks = [{"rank": r, "text_rows": 3, "visual_rows": 7, "step_s": 0.01, "attention": stats,
              "saved_activation_bytes": 2**20, "peak_memory_bytes": 5 * 2**20} for r in range(2)]
    lines = train.summary_table(ranks).splitlines()
    assert len(lines) == 4 and "attn fwd ms" in lines[0]
    assert lines[2].split() == ["0", "3", "7", "10.0", "2.0", "4.0", "1.0", "3.0", "3.0", "1.0", "5.0"]


def test_local_rank_from_launcher_environment(monkeypatch):
    for name in devices.LOCAL_RANK_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert devices.local_rank(comm=None) == 0
    monkeypatch.setenv("SLURM_LOCALID", "3")
    assert devices.local_rank(comm=None) == 3
    monkeypatch.setenv("OMPI_COMM_WORLD_LOCAL_RANK", "1")
    assert devices.local_rank(comm=None) == 1


def test_progress_bar_renders_and_is_silent_when_disabled():
    stream = io.StringIO()
    with Progress(4, "steps", unit="step", stream=stream, min_interval_s=0) as bar:
        for _ in range(4):
            bar.update(1, postfix="loss 1")
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("steps |" + "#" * 8 + "-" * 22 + "| 1/4 [")
    assert lines[-1].startswith("steps |" + "#" * 30 + "| 4/4 [") and lines[-1].endswith("loss 1")
    quiet = io.StringIO()
    with Progress(4, "steps", stream=quiet, enabled=False) as bar:
        bar.update(4)
    assert quiet.getvalue() == ""


def test_master_weights_keep_updates_too_small_for_bf16():
    model = torch.nn.Linear(1, 1, bias=False).to(torch.bfloat16)
    with torch.no_grad():
        model.weight.fill_(1.0)
    optimizer = train.MasterWeights(model, lambda params: torch.optim.SGD(params, lr=1e-3))
    for _ in range(10):   # each update (1e-3) is below bf16's spacing at 1.0 (2^-7)
        model.weight.grad = torch.ones_like(model.weight)
        optimizer.step()
        optimizer.zero_grad()
    master = optimizer.masters[0].detach()
    assert master.dtype == torch.float32 and float(master) == pytest.approx(0.99, abs=1e-6)
    assert float(model.weight.detach()) == float(master.to(torch.bfloat16)) < 1.0


def test_submodules_the_docs_call_work_after_a_plain_import():
    """The README's `lvxattn.calibrate.apply(comm, "cuda")` after `import lvxattn` alone (a
    fresh interpreter: here the test session has imported them already)."""
    code = ("import lvxattn; print(callable(lvxattn.calibrate.apply), lvxattn.integrations.__name__);"
            "import sys; sys.exit(0 if not hasattr(lvxattn, 'no_such_thing') else 1)")
    out = subprocess.run([sys.executable, "-c", code], env=command_env(), capture_output=True, text=True,
                         timeout=TIMEOUT_S)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "lvxattn.integrations"]
