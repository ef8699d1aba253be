"""`vitmix bench` and what it measures: the timing harness, the report (JSON, markdown, charts)
and the command line."""

import json

import pytest
import timm

from vitmix import deploy
from vitmix.bench.report import (
    Accuracy,
    known_accuracies,
    load_accuracy_json,
    markdown_table,
    parse_accuracy,
    plot_accuracy_vs_macs,
    plot_throughput_vs_macs,
)
from vitmix.bench.speed import ModelSpeed, SpeedRun, benchmark_models, time_interleaved
from vitmix.cli import main
from vitmix.complexity import count_macs, count_params

TINY = "schemeformer_ppaa_t_e8_g4"


# ---- timing harness ------------------------------------------------------------------------

def test_time_interleaved_runs_round_robin_after_warmup():
    order = []
    candidates = {name: (lambda n=name: order.append(n)) for name in "abc"}
    samples = time_interleaved(candidates, repeats=3, warmup=2)
    assert order == ["a", "a", "b", "b", "c", "c"] + ["a", "b", "c"] * 3
    assert {k: len(v) for k, v in samples.items()} == {"a": 3, "b": 3, "c": 3}
    assert all(t >= 0 for v in samples.values() for t in v)
    with pytest.raises(ValueError, match="repeats"):
        time_interleaved(candidates, repeats=0)
    with pytest.raises(ValueError, match="warmup"):
        time_interleaved(candidates, warmup=-1)


def test_benchmark_models_reports_the_deployed_model():
    (res,) = benchmark_models([TINY], img_size=32, batch_sizes=[1, 3], repeats=2, warmup=0)
    model = timm.create_model(TINY, img_size=32)
    deploy(model)  # drops the CCA logits: params are those of the inference model
    assert res.name == TINY
    assert res.params == count_params(model) < count_params(timm.create_model(TINY))
    assert res.macs == count_macs(model, 32)
    assert [r.batch_size for r in res.runs] == [1, 3]
    for run in res.runs:
        assert len(run.samples_ms) == 2
        assert run.memory_format in ("channels_first", "channels_last")
        assert run.throughput == pytest.approx(run.batch_size / (run.latency_ms / 1e3))
    with pytest.raises(ValueError, match="unknown model"):
        benchmark_models(["no_such_model"], batch_sizes=[1], repeats=1)
    with pytest.raises(ValueError, match=r"batch_sizes\[0\] must be a positive integer, got 0"):
        benchmark_models([TINY], batch_sizes=[0])
    with pytest.raises(ValueError, match="img_size must be a positive integer, got 32.5"):
        benchmark_models([TINY], img_size=32.5, batch_sizes=[1])
    with pytest.raises(ValueError, match="repeats must be a positive integer, got 0"):
        benchmark_models([TINY], img_size=32, batch_sizes=[1], repeats=0)
    with pytest.raises(ValueError, match="memory_format"):
        benchmark_models([TINY], img_size=32, memory_format="nhwc")


# ---- report --------------------------------------------------------------------------------

def speed(name: str, macs: float, throughputs: dict[int, float]) -> ModelSpeed:
    runs = [SpeedRun(b, b / t * 1e3, t, "channels_last") for b, t in throughputs.items()]
    return ModelSpeed(name=name, params=int(2e6), macs=int(macs), img_size=224, runs=runs)


def test_markdown_table_and_accuracies():
    results = [speed("metaformer_ppaa_s12", 2.5e9, {1: 10.0, 32: 20.0}),
               speed("my_model", 1.0e9, {1: 30.0})]
    acc = known_accuracies(["metaformer_ppaa_s12", "my_model", "other"], {"my_model": 55.5})
    assert acc == {"metaformer_ppaa_s12": Accuracy(81.0, "published"),
                   "my_model": Accuracy(55.5, "given")}
    assert known_accuracies(["metaformer_ppaa_s12"], published=False) == {}
    assert known_accuracies(["metaformer_ppaa_s12"], img_size=64) == {}  # published at 224
    lines = markdown_table(results, acc).splitlines()
    assert lines[0].split(" | ")[3:5] == ["img/s (batch 1)", "latency ms (batch 1)"]
    assert lines[2].startswith("| metaformer_ppaa_s12 | 2.00 | 2.500 | 10.0 | 100.0 | 20.0 |")
    assert lines[2].endswith("| 81.0 (published) |")
    assert lines[3].startswith("| my_model | 2.00 | 1.000 | 30.0 | 33.3 |  |  |")


def test_parse_accuracy_and_json(tmp_path):
    assert parse_accuracy("m=79.5") == ("m", 79.5)
    for bad, message in [("m79", "NAME=ACC"), ("m=high", "not a number"),
                         ("m=120", "percentage"), ("=5", "NAME=ACC")]:
        with pytest.raises(ValueError, match=message):
            parse_accuracy(bad)
    path = tmp_path / "acc.json"
    path.write_text(json.dumps({"a": 70, "b": 71.5}))
    assert load_accuracy_json(path) == {"a": 70.0, "b": 71.5}
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match="object"):
        load_accuracy_json(path)
    with pytest.raises(FileNotFoundError):
        load_accuracy_json(tmp_path / "none.json")


def test_charts_are_written(tmp_path):
    results = [speed("a", 1e9, {32: 50.0}), speed("b", 2e9, {32: 30.0})]
    png = plot_throughput_vs_macs(results, 32, "test machine", tmp_path / "t.png")
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert plot_accuracy_vs_macs(results, {}, tmp_path / "a.png") is None
    png = plot_accuracy_vs_macs(results, {"a": Accuracy(70.0, "given")}, tmp_path / "a.png")
    assert png.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="batch size 8"):
        plot_throughput_vs_macs(results, 8, "m", tmp_path / "x.png")


# ---- command line --------------------------------------------------------------------------

def test_cli_bench_writes_json_table_and_charts(tmp_path, capsys):
    out = tmp_path / "bench"
    code = main(["bench", "--models", TINY, "metaformer_ppaa_t", "--img-size", "32",
                 "--batch-size", "1", "2", "--repeats", "1", "--warmup", "0",
                 "--memory-format", "channels_last", "--out", str(out), "--plot",
                 "--accuracy", f"{TINY}=61.5"])
    assert code == 0
    printed = capsys.readouterr().out
    assert f"| {TINY} | " in printed and "img/s (batch 2)" in printed
    data = json.loads((out / "bench.json").read_text())
    assert [m["name"] for m in data["models"]] == [TINY, "metaformer_ppaa_t"]
    assert data["models"][0]["top1"] == 61.5 and data["models"][1]["top1"] is None
    assert data["settings"]["batch_sizes"] == [1, 2]
    assert [r["batch_size"] for r in data["models"][0]["runs"]] == [1, 2]
    assert (out / "bench.md").read_text().startswith("| model |")
    assert (out / "throughput_vs_macs.png").is_file()
    assert (out / "accuracy_vs_macs.png").is_file()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporaries left


def test_cli_bench_refuses_an_out_folder_under_a_file(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert main(["bench", "--models", TINY, "--out", str(tmp_path / "file" / "bench")]) == 2
    assert capsys.readouterr().err == (f"vitmix bench: error: --out {tmp_path / 'file' / 'bench'} "
                                       f"cannot be made: {tmp_path / 'file'} is a file\n")


@pytest.mark.parametrize("extra,message", [
    (["--models", "no_such_model"], "unknown model"),
    (["--models", TINY, TINY], "repeat"),
    (["--models", TINY, "--batch-size", "0"], "positive"),
    (["--models", TINY, "--accuracy", "other_model=50"], "not benchmarked"),
    (["--models", TINY, "--accuracy", f"{TINY}=fast"], "not a number"),
    (["--models", TINY, "--device", "tpu"], "cpu or cuda"),
])
def test_cli_bench_errors_before_any_timing(tmp_path, capsys, extra, message):
    out = tmp_path / "bench"
    assert main(["bench", "--out", str(out), *extra]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()
