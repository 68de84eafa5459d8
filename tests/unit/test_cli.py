import re
import shutil
import subprocess
import sys

from worker.cli import SEED_SENTENCES, main


def test_classify_prints_seed_format(monkeypatch, tiny_model_dir, capsys):
    monkeypatch.setenv("WORKER_MODEL", str(tiny_model_dir))
    monkeypatch.setenv("WORKER_DTYPE", "float32")
    assert main(["classify"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4
    for line, sentence in zip(lines, SEED_SENTENCES):
        assert re.fullmatch(r"(긍정|부정) \(\d\.\d\d\): " + re.escape(sentence), line), line


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

    from tests.conftest import NSMC_SAMPLE

    monkeypatch.setenv("WORKER_MODEL", str(tiny_model_dir))
    monkeypatch.setenv("WORKER_DTYPE", "float32")
    out = tmp_path / "report.json"
    assert main(["eval", str(NSMC_SAMPLE), "--limit", "200", "--output", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["texts"] == 200
    assert 0 <= report["accuracy"] <= 1
    assert sum(map(sum, report["confusion_matrix"]["values"])) == 200


def test_benchmark_script_starts():
    """The benchmark is a script, not a timed test; this only checks it still imports and parses its flags."""
    from pathlib import Path

    bench = Path(__file__).resolve().parents[2] / "benchmarks" / "bench.py"
    result = subprocess.run([sys.executable, str(bench), "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "--messages" in result.stdout and "--skip-kafka" in result.stdout
