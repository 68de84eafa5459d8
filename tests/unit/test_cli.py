import re
import shutil
import subprocess
import sys

import pytest

from worker.cli import SEED_SENTENCES, main


def test_classify_prints_seed_format(monkeypatch, tiny_model_dir, capsys):
    monkeypatch.setenv("WORKER_MODEL", str(tiny_model_dir))
    monkeypatch.setenv("WORKER_DTYPE", "float32")
    assert main(["classify"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4
    for line, sentence in zip(lines, SEED_SENTENCES):
        assert re.fullmatch(r"(긍정|부정) \(\d\.\d\d\): " + re.escape(sentence), line), line


def test_default_sentences_are_the_seed_examples():
    """The seed document's `pipeline()` example, in its order (../shared/seed/, not shipped with the repo)."""
    assert SEED_SENTENCES == (
        "이 영화 정말 재밌다!",
        "연기도 별로고 스토리도 엉망이네",
        "배우들 연기력이 대단하다",
        "시간 낭비했다 다신 안 봄",
    )


def test_classify_given_texts_json(monkeypatch, tiny_model_dir, capsys):
    import json

    monkeypatch.setenv("WORKER_MODEL", str(tiny_model_dir))
    assert main(["classify", "--json", "좋아요"]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    value = json.loads(line)
    assert value["text"] == "좋아요" and value["label"] in ("positive", "negative")


def test_console_script_is_installed():
    script = shutil.which("worker") or str(__import__("pathlib").Path(sys.executable).parent / "worker")
    result = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    for command in ("run", "classify", "eval"):
        assert command in result.stdout


def test_eval_reports_accuracy(monkeypatch, tiny_model_dir, tmp_path, capsys):
    import json

    from harness.paths import NSMC_SAMPLE

    monkeypatch.setenv("WORKER_MODEL", str(tiny_model_dir))
    monkeypatch.setenv("WORKER_DTYPE", "float32")
    out = tmp_path / "report.json"
    assert main(["eval", str(NSMC_SAMPLE), "--limit", "200", "--output", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["texts"] == 200
    assert 0 <= report["accuracy"] <= 1
    assert sum(map(sum, report["confusion_matrix"]["values"])) == 200


@pytest.mark.parametrize("script, flag", [("bench.py", "--skip-kafka"), ("bench.py", "--only-worker"),
                                          ("bench.py", "--latency-runs"), ("soak.py", "--warm-up"),
                                          ("soak.py", "--largest")])
def test_benchmark_script_starts(script, flag):
    """The benchmarks are scripts, not timed tests; this only checks they still import and parse their flags."""
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / script
    result = subprocess.run([sys.executable, str(path), "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "--messages" in result.stdout and flag in result.stdout


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_eval_reports_thresholds_calibration_and_writes_plots(monkeypatch, tiny_model_dir, tmp_path, capsys):
    import json

    from harness.paths import NSMC_SAMPLE
    from worker.plots import CHART_FILES

    monkeypatch.setenv("WORKER_MODEL", str(tiny_model_dir))
    monkeypatch.setenv("WORKER_DTYPE", "float32")
    plots = tmp_path / "charts"
    out = tmp_path / "nested" / "report.json"
    argv = ["eval", str(NSMC_SAMPLE), "--limit", "300", "--plots", str(plots), "--output", str(out)]
    assert main([*argv, "--review-below", "0.7", "--thresholds", "0.9,0.5,0.75"]) == 0
    printed = capsys.readouterr().out
    assert "threshold | precision | recall | flagged | review" in printed and "ECE" in printed
    report = json.loads(out.read_text())
    table = report["negative_thresholds"]
    assert [row["threshold"] for row in table["rows"]] == [0.5, 0.75, 0.9]
    assert table["review_below"] == 0.7 and report["review_band"]["review_below"] == 0.7
    assert 0 <= report["calibration"]["ece"] <= 1
    assert sum(b["count"] for b in report["calibration"]["bins"]) == 300
    for name in CHART_FILES:
        data = (plots / name).read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 10_000, name


def test_eval_plots_without_matplotlib_fails_before_the_run(monkeypatch, tiny_model_dir, tmp_path, capsys):
    from harness.paths import NSMC_SAMPLE

    monkeypatch.setenv("WORKER_MODEL", str(tiny_model_dir))
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    assert main(["eval", str(NSMC_SAMPLE), "--limit", "10", "--plots", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert "matplotlib" in captured.err and "koelectra-worker[plots]" in captured.err
    assert "threshold" not in captured.out  # nothing was classified


def test_eval_rejects_bad_threshold_arguments(capsys):
    import pytest

    for argv in (["--thresholds", "0.5,x"], ["--thresholds", "1.5"], ["--review-below", "0.3"]):
        with pytest.raises(SystemExit) as stop:
            main(["eval", "x.tsv", *argv])
        assert stop.value.code == 2


def test_signal_watcher_tells_a_hangup_from_a_stop():
    """The wakeup fd carries each signal's number: SIGHUP reloads the rules and never counts as a stop."""
    import signal
    import socket
    import threading
    import time

    from worker.cli import SignalWatcher

    calls: list[str] = []
    watcher = SignalWatcher(lambda: calls.append("stop"), lambda: calls.append("exit"), lambda: calls.append("reload"))
    reader, writer = socket.socketpair()
    threading.Thread(target=watcher._watch, args=(reader,), daemon=True).start()
    writer.send(bytes([signal.SIGHUP, signal.SIGHUP, signal.SIGTERM, signal.SIGHUP, signal.SIGINT]))
    deadline = time.monotonic() + 5
    while len(calls) < 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert calls == ["reload", "reload", "stop", "reload", "exit"]
    writer.close()


# --- issue 18 finding 8: setup errors are one line and exit 2, never a traceback ---

UNKNOWN_LABEL_ROUTE = '[{"name": "flagged", "topic": "flagged", "labels": ["toxic"]}]'


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "no such file"),
        ("", "expected header id, document, label"),
        ("a\tb\n1\t2\n", "expected header id, document, label"),
        ("id\tdocument\tlabel\n1\t좋아요\t7\n", "expected 3 columns with label 0 or 1"),
        (b"id\tdocument\tlabel\n1\t\xff\xfe\t1\n", "not utf-8"),
    ],
)
def test_eval_bad_input_is_one_line_and_exit_2(monkeypatch, tiny_model_dir, tmp_path, capsys, content, expected):
    monkeypatch.setenv("WORKER_MODEL", str(tiny_model_dir))
    path = tmp_path / "input.tsv"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content, encoding="utf-8")
    assert main(["eval", str(path)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("worker: error: ") and "input.tsv" in line and expected.lower() in line.lower(), line


def test_eval_with_a_model_that_does_not_fit_is_one_line_and_exit_2(monkeypatch, tiny_model_dir, capsys):
    from harness.paths import NSMC_SAMPLE
    from worker import cli

    class ThreeLabels:
        labels = ("negative", "neutral", "positive")

        def warm_up(self):
            pass

    monkeypatch.setenv("WORKER_MODEL", str(tiny_model_dir))
    monkeypatch.setattr(cli, "load_classifier", lambda settings: ThreeLabels())
    assert main(["eval", str(NSMC_SAMPLE), "--limit", "5"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("worker: error: ") and "binary" in line


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (["run"], {"WORKER_ROUTES": UNKNOWN_LABEL_ROUTE}, "worker: error: WORKER_ROUTES: route 'flagged' names label(s) toxic"),
        (["run"], {"WORKER_KAFKA_NO_SUCH_PROPERTY": "1"}, "worker: error: WORKER_KAFKA_NO_SUCH_PROPERTY: "),
        (["eval", "missing.tsv"], {}, "worker: error: missing.tsv: "),
    ],
    ids=["route-label", "kafka-property", "eval-input"],
)
def test_setup_errors_end_the_process_with_one_line_and_exit_2(tiny_model_dir, tmp_path, args, env, expected):
    """The process as an orchestrator sees it: exit 2, and stderr's last line says why (no traceback)."""
    import os
    from pathlib import Path

    child_env = {k: v for k, v in os.environ.items() if not k.startswith("WORKER_")}
    child_env.update({"WORKER_MODEL": str(tiny_model_dir), "WORKER_DEVICE": "cpu", "WORKER_DTYPE": "float32",
                      "WORKER_METRICS_PORT": "0", "WORKER_BOOTSTRAP_SERVERS": "127.0.0.1:9",
                      # a named engine: `auto` would first measure the engines (minutes on a busy 2-vCPU machine)
                      "WORKER_ENGINE": "torch",
                      # the session's cache (tests/conftest.py): the tokenizer snapshot is prepared once, not per test
                      "WORKER_ENGINE_CACHE_DIR": os.environ.get("WORKER_ENGINE_CACHE_DIR", str(tmp_path / "engines")),
                      **env})
    repo = Path(__file__).resolve().parents[2]
    child_env["PYTHONPATH"] = os.pathsep.join([str(repo), child_env.get("PYTHONPATH", "")])
    result = subprocess.run([sys.executable, "-m", "worker.cli", *args], env=child_env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1].startswith(expected), result.stderr[-3000:]
