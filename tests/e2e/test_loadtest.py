"""csm-loadtest against a real loopback server with the tiny preset: the JSON report's fields,
counts and percentiles, errors counted by status code, and a run that stops by itself."""

from __future__ import annotations

import csv
import importlib.util
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from csm_client.loadtest import main as loadtest

from .conftest import start_tiny_engine
from .harness import LoopbackServer

QUANTILES = ("p50", "p90", "p95", "p99")
STEP_FIELDS = {"requests", "ok", "errors", "wall_s", "requests_per_s", "throughput_audio_s_per_s", "audio_s",
               "ttfa_ms", "rtf", "total_ms", "chunk_gap_ms", "underruns", "worst_gap_ms", "no_gap_share", "truncated", "slo_met"}


def run_json(tmp_path: Path, *args: str) -> tuple[int, dict]:
    out = tmp_path / "report.json"
    code = loadtest([*args, "--warmup", "0", "--json", str(out), "--json-records", "-q"])
    return code, json.loads(out.read_text())


def assert_counts_add_up(doc: dict) -> None:
    for step in doc["steps"]:
        assert STEP_FIELDS <= step.keys()
        assert step["ok"] + sum(step["errors"].values()) == step["requests"]
        assert all(n > 0 for n in step["errors"].values())
        for key in ("ttfa_ms", "rtf", "total_ms"):
            values = [step[key][q] for q in QUANTILES]
            if step["ok"]:
                assert values == sorted(values), f"{key} percentiles out of order: {values}"
            else:
                assert values == [None] * 4
    assert len(doc["records"]) == sum(step["requests"] for step in doc["steps"])


def test_concurrency_sweep_report(server, tmp_path):
    steps_csv, records_csv, plot = tmp_path / "steps.csv", tmp_path / "records.csv", tmp_path / "sweep.png"
    plot_args = ["--plot", str(plot)] if importlib.util.find_spec("matplotlib") else []
    code, doc = run_json(tmp_path, "--server", server.target, "--concurrency", "1,2", "--requests", "3",
                         "--max-audio-ms", "240", "--slo-ttfa-ms", "60000", "--slo-rtf", "1000",
                         "--csv", str(steps_csv), "--csv-records", str(records_csv), *plot_args)
    assert code == 0
    assert doc["server"]["target"] == server.target and doc["server"]["preset"] == "tiny"
    assert doc["mode"] == "concurrency" and "audio" in doc["rtf_definition"]
    assert [step["concurrency"] for step in doc["steps"]] == [1, 2]
    assert_counts_add_up(doc)
    for step in doc["steps"]:
        assert step["requests"] == 3 and step["ok"] == 3 and step["errors"] == {}
        assert step["throughput_audio_s_per_s"] > 0 and step["requests_per_s"] > 0 and step["slo_met"] is True
        assert 0 < step["ttfa_ms"]["p50"] <= step["total_ms"]["p99"]
        worst = [step["worst_gap_ms"][q] for q in QUANTILES] + [step["worst_gap_ms"]["max"]]
        assert worst == sorted(worst) and worst[0] >= 0 and 0 <= step["no_gap_share"] <= 1
    assert doc["slo_max_concurrency"] == 2 and doc["slo_max_rate"] is None
    assert doc["slo"] == {"ttfa_ms": 60000.0, "rtf": 1000.0, "percentile": 95, "max_error_rate": 0.0}
    for record in doc["records"]:
        assert record["status"] == "OK" and 0 < record["audio_s"] <= 0.24 + 1e-9
        assert record["rtf"] == pytest.approx(record["total_ms"] / 1000 / record["audio_s"], rel=1e-3)
        assert record["ttfa_ms"] <= record["total_ms"] and len(record["gaps_ms"]) == record["chunks"] - 1
        assert 0 <= record["worst_gap_ms"] <= record["total_ms"]
    assert "worst_gap_ms" in doc["definitions"]
    assert doc["truncated"] is False and doc["skipped_steps"] == []

    rows = list(csv.DictReader(steps_csv.open()))
    assert [row["concurrency"] for row in rows] == ["1", "2"]
    assert len(list(csv.DictReader(records_csv.open()))) == 6
    if plot_args:
        assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_rejected_requests_are_counted_by_code(server, tmp_path):
    code, doc = run_json(tmp_path, "--server", server.target, "--concurrency", "2", "--requests", "4",
                         "--speaker", "999", "--max-audio-ms", "240", "--slo-ttfa-ms", "60000")
    assert code == 1, "no request succeeded, so the exit status says so"
    (step,) = doc["steps"]
    assert step["ok"] == 0 and step["errors"] == {"INVALID_ARGUMENT": 4} and step["slo_met"] is False
    assert doc["slo_max_concurrency"] is None
    assert_counts_add_up(doc)
    assert all("speaker" in record["detail"] for record in doc["records"])


@pytest.fixture(scope="module")
def one_slot_server():
    engine = start_tiny_engine(max_slots=1, max_queue=0)
    server = LoopbackServer(engine).start()
    yield server
    server.stop()
    engine.shutdown()


def test_full_server_rejections_are_resource_exhausted(one_slot_server, tmp_path):
    """Through the installed command: 3 streams against 1 slot and no queue."""
    command = shutil.which("csm-loadtest", path=str(Path(sys.executable).parent))
    assert command, "csm-loadtest is not installed: run `uv pip install -e .`"
    out = tmp_path / "full.json"
    done = subprocess.run([command, "--server", one_slot_server.target, "--concurrency", "3", "--requests", "6",
                           "--max-audio-ms", "400", "--warmup", "0", "--json", str(out), "--json-records"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "RESOURCE_EXHAUSTED" in done.stdout, "the table lists the errors by code"
    doc = json.loads(out.read_text())
    (step,) = doc["steps"]
    assert step["requests"] == 6 and step["ok"] >= 1 and step["errors"].get("RESOURCE_EXHAUSTED", 0) >= 1
    assert set(step["errors"]) == {"RESOURCE_EXHAUSTED"}
    assert_counts_add_up(doc)


def test_poisson_rate_step_with_context_audio(server, tmp_path):
    context = tmp_path / "earlier.wav"
    sf.write(context, 0.2 * np.sin(np.arange(12_000) / 9.0), 24_000, subtype="PCM_16")
    code, doc = run_json(tmp_path, "--server", server.target, "--rate", "4", "--duration", "1", "--format", "wav",
                         "--max-audio-ms", "160", "--context", str(context), "--context-text", "Earlier on.",
                         "--text", "One line.", "--text", "Another line.", "--slo-rtf", "1000")
    assert code == 0
    (step,) = doc["steps"]
    assert step["rate"] == 4.0 and "concurrency" not in step and step["requests"] >= 1
    assert step["ok"] == step["requests"]
    assert_counts_add_up(doc)
    assert doc["mode"] == "rate" and doc["slo_max_rate"] == 4.0 and doc["slo_max_concurrency"] is None
    assert doc["settings"]["context_turns"] == 1 and doc["settings"]["format"] == "wav"
    sent = [record["sent_s"] for record in doc["records"]]
    assert sent == sorted(sent) and sent[-1] < 1.0


def test_max_wall_stops_the_run(server, tmp_path):
    start = time.monotonic()
    code, doc = run_json(tmp_path, "--server", server.target, "--concurrency", "1,2", "--requests", "50",
                         "--max-audio-ms", "8000", "--max-wall-s", "2")
    assert time.monotonic() - start < 15
    assert code == 1 and doc["truncated"] is True and doc["skipped_steps"] == ["concurrency 2"]
    (step,) = doc["steps"]
    assert step["truncated"] is True and step["errors"] == {"DEADLINE_EXCEEDED": step["requests"]}
    assert_counts_add_up(doc)

