"""`worker eval FILE` with multi-label data, through the command line, with a fake multi-label classifier
whose per-category probabilities are fixed per text: the report, the JSON, the charts, and one-line errors
(exit 2, no traceback) for bad input."""

import json
import subprocess
import sys

import pytest

import worker.cli
from worker.cli import main
from worker.engines.base import Encoding

# Text -> (true categories, the fake model's P(insult), P(spam)): independent probabilities, not summing to 1.
ROWS = {
    "꺼져 바보야": (["insult"], 0.92, 0.10),
    "지금 가입하면 무료": (["spam"], 0.05, 0.88),
    "바보 광고": (["insult", "spam"], 0.71, 0.64),
    "좋은 글이네요": ([], 0.30, 0.20),
    "별로예요": ([], 0.55, 0.02),
    "멍청한 소리": (["insult"], 0.45, 0.03),
}


class FakeMultiLabel:
    labels = ["insult", "spam"]
    info = {"model": "fake-multi-label", "revision": "0", "device": "cpu", "dtype": "float32"}
    multi_label = True

    def __init__(self):
        self.texts = list(ROWS)

    def encode(self, texts):
        return [Encoding([2, self.texts.index(t) + 5, 3], False) for t in texts]

    def predict(self, batch):
        return [list(ROWS[self.texts[ids[1] - 5]][1:]) for ids in batch]

    def warm_up(self):
        pass


class FakeBinary(FakeMultiLabel):
    labels = ["negative", "positive"]
    multi_label = False


@pytest.fixture
def fake(monkeypatch):
    model = FakeMultiLabel()
    monkeypatch.setattr(worker.cli, "load_classifier", lambda settings: model)
    return model


@pytest.fixture
def jsonl(tmp_path):
    path = tmp_path / "comments.jsonl"
    lines = [json.dumps({"text": text, "labels": truth}, ensure_ascii=False) for text, (truth, *_) in ROWS.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_eval_multi_label_jsonl_prints_tables_and_writes_json(fake, jsonl, tmp_path, capsys):
    out = tmp_path / "report.json"
    assert main(["eval", str(jsonl), "--output", str(out), "--label-thresholds", "spam=0.6"]) == 0
    printed = capsys.readouterr().out
    assert "category | support | threshold | precision | recall | F1 | flagged | ECE | precision >= 90.0 % from" in printed
    # insult at 0.5: flags 0.92, 0.71 (true) and 0.55 (false): 2 of 3; spam at 0.6: 0.88, 0.64, both spam.
    assert "insult | 3 (50.0 %) | 0.50 | 66.7 % | 66.7 % | 0.667 | 50.0 %" in printed
    assert "spam | 2 (33.3 %) | 0.60 | 100.0 % | 100.0 % | 1.000 | 33.3 %" in printed
    assert "insult: flagged = P(insult) >= threshold" in printed
    report = json.loads(out.read_text(encoding="utf-8"))
    assert report["mode"] == "multi_label" and report["model_multi_label"] is True
    assert report["texts"] == 6 and report["clean_texts"] == 2
    assert report["model"]["model"] == "fake-multi-label"
    insult = report["categories"]["insult"]
    assert insult["lowest_threshold_for_precision"]["threshold"] == 0.551  # above the false 0.55
    assert [row["threshold"] for row in insult["thresholds"]][:3] == [0.05, 0.1, 0.15]
    assert report["summary"]["micro"] == {
        "precision": 4 / 5, "recall": 4 / 5, "f1": 4 / 5, "true_positives": 4, "flagged": 5, "support": 5
    }


def test_eval_multi_label_tsv_json_target_precision_and_plots(fake, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    tsv = tmp_path / "comments.tsv"
    tsv.write_text(
        "id\tdocument\tlabels\n" + "".join(f"{i}\t{t}\t{','.join(c)}\n" for i, (t, (c, *_)) in enumerate(ROWS.items())),
        encoding="utf-8",
    )
    charts = tmp_path / "charts"
    argv = ["eval", str(tsv), "--json", "--target-precision", "1.0", "--thresholds", "0.5,0.9", "--plots", str(charts)]
    assert main(argv) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert [row["threshold"] for row in report["categories"]["spam"]["thresholds"]] == [0.5, 0.9]
    assert report["categories"]["insult"]["lowest_threshold_for_precision"]["threshold"] == 0.551
    assert report["categories"]["spam"]["lowest_threshold_for_precision"]["threshold"] == 0.201  # above the false 0.20
    assert sorted(p.name for p in charts.iterdir()) == [
        "insult-precision-recall-threshold.png", "insult-reliability.png",
        "spam-precision-recall-threshold.png", "spam-reliability.png",
    ]
    assert captured.err.count("wrote ") == 4


def test_thresholds_from_the_settings_and_the_flag(fake, jsonl, monkeypatch, capsys):
    """WORKER_LABEL_THRESHOLDS where the settings have it (label_thresholds); --label-thresholds wins."""
    from worker.settings import load_settings

    settings = load_settings()
    object.__setattr__(settings, "label_thresholds", {"insult": 0.6, "spam": 0.7})
    monkeypatch.setattr(worker.cli, "load_settings", lambda: settings)
    assert main(["eval", str(jsonl), "--json", "--label-thresholds", "spam=0.3"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["categories"]["insult"]["threshold"] == 0.6 and report["categories"]["spam"]["threshold"] == 0.3


def one_line_error(capsys, argv) -> str:
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("worker: error: "), captured.err
    assert "Traceback" not in captured.err and captured.out == ""
    return lines[0]


def test_bad_input_is_one_line_and_exit_2(fake, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a", "labels": []}\n{"text": "b", "labels": "insult"}\n', encoding="utf-8")
    assert f"{bad}:2: \"labels\" must be a list" in one_line_error(capsys, ["eval", str(bad)])
    unknown = tmp_path / "unknown.jsonl"
    unknown.write_text('{"text": "a", "labels": ["insult"]}\n{"text": "b", "labels": ["threat"]}\n', encoding="utf-8")
    line = one_line_error(capsys, ["eval", str(unknown)])
    assert line.endswith(f"{unknown}:2: unknown category 'threat'; the model's categories are insult, spam")
    tsv = tmp_path / "bad.tsv"
    tsv.write_text("id\tdocument\tlabels\n1\ta\tspam\n2\tb\tinsult\textra\n", encoding="utf-8")
    assert f"{tsv}:3: expected 3 tab-separated columns" in one_line_error(capsys, ["eval", str(tsv)])
    assert "missing.jsonl: No such file" in one_line_error(capsys, ["eval", str(tmp_path / "missing.jsonl")])
    good = tmp_path / "good.jsonl"
    good.write_text('{"text": "a", "labels": ["insult"]}\n', encoding="utf-8")
    line = one_line_error(capsys, ["eval", str(good), "--label-thresholds", "threat=0.5"])
    assert "--label-thresholds: unknown category 'threat'" in line


def test_binary_data_with_a_multi_label_model_and_bad_nsmc_are_one_line(fake, tmp_path, capsys):
    from harness.paths import NSMC_SAMPLE

    assert "is binary NSMC data" in one_line_error(capsys, ["eval", str(NSMC_SAMPLE), "--limit", "5"])
    nsmc = tmp_path / "nsmc.tsv"
    nsmc.write_text("id\tdocument\tlabel\n1\t좋다\t3\n", encoding="utf-8")
    assert f"{nsmc}:2: expected 3 columns with label 0 or 1" in one_line_error(capsys, ["eval", str(nsmc)])


def test_multi_label_data_with_a_single_label_model_says_so(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(worker.cli, "load_classifier", lambda settings: FakeBinary())
    data = tmp_path / "d.jsonl"
    data.write_text('{"text": "꺼져 바보야", "labels": ["negative"]}\n', encoding="utf-8")
    assert main(["eval", str(data), "--json"]) == 0
    captured = capsys.readouterr()
    assert "the model is single-label (softmax)" in captured.err
    assert json.loads(captured.out)["model_multi_label"] is False


@pytest.mark.parametrize("flag", [["--target-precision", "0"], ["--target-precision", "x"],
                                  ["--label-thresholds", "insult"], ["--label-thresholds", "insult=1.5"]])
def test_bad_flags_exit_2(flag):
    with pytest.raises(SystemExit) as stop:
        main(["eval", "x.jsonl", *flag])
    assert stop.value.code == 2


def test_console_eval_of_bad_data_has_no_traceback(tmp_path):
    """The real entry point, as a user runs it: the data error comes before any model is loaded."""
    bad = tmp_path / "bad.jsonl"
    bad.write_text("not json\n", encoding="utf-8")
    done = subprocess.run([sys.executable, "-m", "worker.cli", "eval", str(bad)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2 and done.stderr.strip() == f"worker: error: {bad}:1: not JSON (Expecting value at column 1)"
