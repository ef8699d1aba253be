"""The prepared GPU check: everything vitmix needs to show on a GPU, in one call of a few minutes.

It runs, writing every log and result under ``--out``:

1. ``env``: the GPU, the driver, the versions vitmix runs on.
2. Alone, for the numbers: SCHEMEformer-S12 against MetaFormer-S12 (benchmarks/gpu_tables.py),
   eager, and what --lean-training's functions cost there.
3. At once, side by side (correctness, not speed: they share the GPU and the cores):
   the CUDA tests (``pytest -m cuda``); short real trainings on Fashion-MNIST (bf16 by
   ``--amp auto``, fp16 with gradient scaling, ``--compile inductor``, the DataLoader path with
   RandAugment whose batches are finished on the GPU, a GroupMixFormer with SCHEME); the refusal
   of ``--lean-training`` on a GPU; a run stopped by SIGTERM and resumed, compared with the same
   run uninterrupted; and ``torchrun --nproc_per_node 1`` (DDP over NCCL).
   Beside them, the S12 models are compiled once (inductor caches them; those timings are
   thrown away).
4. Alone again: GPU JPEG decoding against PIL (benchmarks/input_pipeline.py --device cuda);
   then the S12 tables compiled, as far as the time left allows.

``--smoke`` runs every part on the CPU with tiny models and a few batches (the test suite does,
so the script cannot rot). ``--deadline`` bounds the whole check: a part that would start too
late is skipped and says so. The summary (``summary.md``, ``summary.json``) comes last.

    python benchmarks/gpu_check.py --out /tmp/gpu_check --data-dir PATH/fashion-mnist
    python benchmarks/gpu_check.py --smoke --out /tmp/smoke --data-dir TEST_DATA
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TINY = {"depths": [1, 1, 1, 1], "dims": [16, 32, 32, 32]}


@dataclass
class Part:
    name: str
    status: str = "not run"  # ok, failed, timeout, skipped
    seconds: float = 0.0
    detail: dict = field(default_factory=dict)


class Check:
    def __init__(self, args: argparse.Namespace):
        self.args, self.out = args, Path(args.out)
        self.logs = self.out / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.started = time.monotonic()
        self.parts: list[Part] = []
        self.env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONWARNINGS="ignore")
        self.env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO / "src"), str(REPO / "tests"), self.env.get("PYTHONPATH"))
            if p)
        self.device = "cpu" if args.smoke else "cuda"

    # ---- running things -------------------------------------------------------------------
    def left(self) -> float:
        return self.args.deadline - (time.monotonic() - self.started)

    def run(self, name: str, cmd: list[str], timeout: float, expect: int = 0) -> Part:
        """``cmd`` with its output in logs/NAME.log; ok when it exits with ``expect``."""
        part = Part(name)
        self.parts.append(part)
        timeout = min(timeout, self.left())
        if timeout < 5:
            part.status, part.detail["why"] = "skipped", "no time left in the check's deadline"
            return part
        start = time.monotonic()
        with open(self.logs / f"{name}.log", "w") as log:
            log.write("$ " + " ".join(cmd) + "\n")
            log.flush()
            try:
                done = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                      cwd=REPO, timeout=timeout, check=False)
                part.status = "ok" if done.returncode == expect else "failed"
                part.detail["exit"] = done.returncode
            except subprocess.TimeoutExpired:
                part.status = "timeout"
        part.seconds = time.monotonic() - start
        return part

    def vitmix_train(self, name: str, args: list[str], timeout: float, expect: int = 0) -> Part:
        out = self.out / "runs" / name
        part = self.run(name, [sys.executable, "-m", "vitmix", "train", *self.train_args(),
                               *args, "--out", str(out), "--overwrite"], timeout, expect)
        _read_run(part, out)
        return part

    def train_args(self) -> list[str]:
        a = self.args
        common = ["--data", "fashion-mnist", "--data-dir", a.data_dir, "--device", self.device,
                  "--no-progress-bar"]
        if a.smoke:
            return [*common, "--model-kwargs", json.dumps(TINY), "--epochs", "1",
                    "--batch-size", "8", "--max-train-batches", "3", "--max-val-batches", "1",
                    "--val-split", "8", "--threads", "1", "--workers", "0"]
        # Two intra-op threads each: a GPU run's host work is small, and many share the cores.
        return [*common, "--epochs", "1", "--batch-size", "256", "--workers", "2",
                "--threads", "2"]

    # ---- the parts ------------------------------------------------------------------------
    def environment(self) -> None:
        code = (
            "import json, platform, torch, timm, numpy, vitmix\n"
            "cuda = torch.cuda.is_available()\n"
            "info = {'python': platform.python_version(), 'torch': torch.__version__,\n"
            "        'cuda': torch.version.cuda, 'timm': timm.__version__,\n"
            "        'numpy': numpy.__version__, 'gpu': torch.cuda.get_device_name(0) if cuda\n"
            "        else None, 'capability': list(torch.cuda.get_device_capability(0)) if cuda\n"
            "        else None, 'cpus': len(__import__('os').sched_getaffinity(0))}\n"
            "print(json.dumps(info))\n")
        part = self.run("env", [sys.executable, "-c", code], 120)
        log = (self.logs / "env.log").read_text().splitlines()
        if part.status == "ok":
            part.detail.update(json.loads(log[-1]))
        if not self.args.smoke:
            self.run("nvidia_smi", ["nvidia-smi"], 30)

    def correctness_jobs(self) -> list:
        """Everything that checks that vitmix works on the device. The smoke mode runs one
        training of the list (they differ only in their flags) and the CUDA tests of one file,
        to keep the test suite short."""
        smoke = self.args.smoke
        trainings = [
            ("train_bf16", ["--amp", "auto"] if smoke else ["--amp", "auto", "--epochs", "2"]),
            ("train_fp16", ["--amp", "fp16"]),
            ("train_compiled", ["--compile", "inductor"]),
            ("train_dataloader", ["--loader", "dataloader", "--auto-augment",
                                  "rand-m6-mstd0.5-inc1", "--workers", "6",
                                  "--max-train-batches", "60"]),
            ("train_groupmixformer_scheme", ["--model", "groupmixformer_m_scheme_e8_g4",
                                             "--model-kwargs", "{}", "--img-size", "64",
                                             "--max-train-batches", "60"]),
        ]
        jobs = [self.kill_and_resume, self.torchrun,
                lambda: self.run("pytest_cuda", [
                    sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider",
                    "--continue-on-collection-errors",
                    "tests/test_cuda.py" if smoke else "tests/"], 240)]
        if smoke:
            name, flags = trainings[0]
            jobs.append(lambda: self.vitmix_train(name, flags, 240))
            self.parts += [Part(n, "skipped", detail={"why": "smoke mode: one training of the "
                                                              "list"}) for n, _ in trainings[1:]]
        else:
            jobs += [lambda n=n, f=f: self.vitmix_train(n, f, 300) for n, f in trainings]
            jobs.append(lambda: self.vitmix_train("lean_refused", ["--lean-training"], 120,
                                                  expect=2))
        return jobs

    @staticmethod
    def side_by_side(jobs: list, at_once: int) -> None:
        with ThreadPoolExecutor(max_workers=at_once) as pool:
            for future in [pool.submit(job) for job in jobs]:
                future.result()

    def torchrun(self) -> Part:
        out = self.out / "runs" / "torchrun"
        part = self.run("torchrun", [
            sys.executable, "-m", "torch.distributed.run", "--standalone",
            "--nproc_per_node", "1", "-m", "vitmix", "train", *self.train_args(),
            *([] if self.args.smoke else ["--max-train-batches", "60"]),
            "--out", str(out), "--overwrite"], 240)
        _read_run(part, out)
        log = (self.logs / "torchrun.log").read_text()
        part.detail["ddp_backend"] = next(
            (w for w in ("nccl", "gloo") if f"DDP over {w}" in log), None)
        return part

    def kill_and_resume(self) -> Part:
        """The same run twice: uninterrupted, and stopped by SIGTERM at an update, then resumed;
        their final weights compared."""
        part = Part("kill_and_resume")
        self.parts.append(part)
        start = time.monotonic()
        epochs = 1 if self.args.smoke else 2
        settings = ["--amp", "auto", "--loader", "dataloader", "--epochs", str(epochs),
                    "--re-prob", "0.25", "--progress-bar", "--log-interval", "1"]
        if not self.args.smoke:
            settings += ["--max-train-batches", "40", "--workers", "4"]
        straight, stopped = self.out / "runs" / "straight", self.out / "runs" / "stopped"
        base = [sys.executable, "-m", "vitmix", "train", *self.train_args(), *settings]
        log_path = self.logs / "kill_and_resume.log"
        started: list[subprocess.Popen] = []
        try:
            with open(log_path, "w") as log, open(self.logs / "straight.log", "w") as log2:
                # The uninterrupted run beside the stopped one: they share nothing.
                uninterrupted = subprocess.Popen([*base, "--out", str(straight), "--overwrite"],
                                                 stdout=log2, stderr=subprocess.STDOUT,
                                                 env=self.env, cwd=REPO)
                proc = subprocess.Popen([*base, "--out", str(stopped), "--overwrite"],
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        env=self.env, cwd=REPO, text=True)
                started += [uninterrupted, proc]
                for line in proc.stdout:
                    log.write(line)
                    if f"epoch 1/{epochs}: update 2/" in line:
                        proc.send_signal(signal.SIGTERM)
                rest, _ = proc.communicate(timeout=min(120, self.left()))
                log.write(rest or "")
                part.detail["stopped_exit"] = proc.returncode
                log.flush()
                done = subprocess.run([sys.executable, "-m", "vitmix", "train", "--resume",
                                       str(stopped)], stdout=log, stderr=subprocess.STDOUT,
                                      env=self.env, cwd=REPO, timeout=min(300, self.left()))
                part.detail["resumed_exit"] = done.returncode
                part.detail["straight_exit"] = uninterrupted.wait(timeout=max(self.left(), 1))
            part.detail.update(_compare_runs(straight, stopped))
            ok = (part.detail["straight_exit"] == 0 and part.detail["stopped_exit"] == 75
                  and part.detail["resumed_exit"] == 0)
            part.status = "ok" if ok else "failed"
        except (subprocess.TimeoutExpired, OSError, KeyError, ValueError) as err:
            part.status, part.detail["error"] = "failed", f"{type(err).__name__}: {err}"
        finally:
            for process in started:  # none outlives its part
                if process.poll() is None:
                    process.kill()
        part.seconds = time.monotonic() - start
        return part

    def tables(self, parts: list[str], name: str, timeout: float,
               extra: tuple[str, ...] = ()) -> None:
        out = self.out / f"{name}.json"
        cmd = [sys.executable, "benchmarks/gpu_tables.py", "--parts", *parts, "--json", str(out),
               *extra]
        part = self.run(name, [*cmd, *(["--smoke", "--device", "cpu"] if self.args.smoke
                                      else [])], timeout)
        if out.is_file():
            part.detail["results"] = len(json.loads(out.read_text())["results"])

    def input_decode(self) -> None:
        script = REPO / "benchmarks" / "input_pipeline.py"
        if not script.is_file():
            self.parts.append(Part("input_decode", "skipped", detail={"why": "no script"}))
            return
        out = self.out / "input_decode.json"
        cmd = [sys.executable, str(script), "--device", self.device, "--out", str(out)]
        if self.args.smoke:  # its CPU mode at its smallest: the GPU mode needs a GPU
            cmd += ["--images", "8", "--workers", "0", "--batch-size", "4", "--warmup", "0",
                    "--batches", "1", "--repeats", "1", "--sources", "folder", "--stages",
                    "decode"]
        self.run("input_decode", cmd, 90)

    # ---- the summary ----------------------------------------------------------------------
    def summary(self) -> int:
        total = time.monotonic() - self.started
        data = {"seconds": total, "smoke": self.args.smoke,
                "parts": [asdict(p) for p in self.parts]}
        (self.out / "summary.json").write_text(json.dumps(data, indent=1))
        lines = [f"# GPU check ({'CPU smoke mode' if self.args.smoke else 'GPU'}), "
                 f"{total:.0f} s", "", "| part | status | seconds | detail |", "|---|---|---|---|"]
        for p in self.parts:
            detail = ", ".join(f"{k} {v}" for k, v in p.detail.items() if k != "results")
            lines.append(f"| {p.name} | {p.status} | {p.seconds:.0f} | {detail} |")
        for name in ("gpu_tables_eager", "gpu_tables_compiled"):
            path = self.out / f"{name}.json"
            if path.is_file():
                lines += ["", f"## {name}", "", "```",
                          _tables_text(json.loads(path.read_text())), "```"]
        text = "\n".join(lines) + "\n"
        (self.out / "summary.md").write_text(text)
        print(text, flush=True)
        return 0 if all(p.status in ("ok", "skipped") for p in self.parts) else 1


def _read_run(part: Part, out: Path) -> None:
    """The numbers of a finished run (summary.json, metrics.csv) into the part's detail."""
    summary_path = out / "summary.json"
    if not summary_path.is_file():
        return
    summary = json.loads(summary_path.read_text())
    part.detail.update(top1=round(summary["trained"]["top1"], 2), amp=summary.get("amp"),
                       epochs=summary["epochs"], updates=summary["updates"])
    metrics = out / "metrics.csv"
    if metrics.is_file():
        import csv

        with open(metrics) as f:
            rows = list(csv.DictReader(f))
        if rows:
            part.detail["train_images_per_s"] = round(float(rows[-1]["train_images_per_s"]))


def _compare_runs(a: Path, b: Path) -> dict:
    import torch

    x = torch.load(a / "last.pth", map_location="cpu", weights_only=True)
    y = torch.load(b / "last.pth", map_location="cpu", weights_only=True)
    diffs = [(x["model"][k].double() - y["model"][k].double()).abs().max().item()
             for k in x["model"] if x["model"][k].is_floating_point()]
    ta = json.loads((a / "summary.json").read_text())["trained"]["top1"]
    tb = json.loads((b / "summary.json").read_text())["trained"]["top1"]
    return {"updates": (x["num_updates"], y["num_updates"]), "max_weight_diff": max(diffs),
            "identical": max(diffs) == 0.0, "top1": (round(ta, 2), round(tb, 2))}


def _tables_text(data: dict) -> str:
    lines = [f"{data['device']}, torch {data['torch']}"]
    for r in data["results"]:
        lines.append(f"{r['kind']} batch {r['batch']} {r['mode']}: " + "; ".join(
            f"{row['candidate']} {row['ms']:.2f} ms ({row['speed_vs_dense']:.2f}x"
            + (f", peak {row['peak_mib']:.0f} MiB = {row['peak_vs_dense']:.2f}x"
               if "peak_mib" in row else "") + ")" for row in r["rows"]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for logs, runs and the summary")
    parser.add_argument("--data-dir", required=True, help="the Fashion-MNIST idx files")
    parser.add_argument("--deadline", type=float, default=450,
                        help="seconds for the whole check (parts that would start later are "
                             "skipped)")
    parser.add_argument("--smoke", action="store_true", help="every part on the CPU, tiny")
    args = parser.parse_args(argv)
    if not args.smoke:
        import torch

        if not torch.cuda.is_available():
            print("gpu_check: no CUDA device here; --smoke runs the check on the CPU",
                  file=sys.stderr)
            return 2
    check = Check(args)
    if args.smoke:
        # Nothing is timed: every part at once, two at a time (the three table parts in one
        # process: they share their code).
        check.side_by_side([*check.correctness_jobs(), check.environment, check.input_decode,
                            lambda: check.tables(["eager", "lean", "compiled"],
                                                 "gpu_tables_eager", 240)], at_once=2)
        return check.summary()
    check.environment()
    # The eager tables first and alone (the numbers the docs show), then the correctness parts
    # side by side, then the rest as the deadline allows.
    check.tables(["eager", "lean"], "gpu_tables_eager", 150)
    # Compiling the S12 models takes minutes of CPU: it is done once beside the correctness
    # parts (its timings, on a shared GPU, are thrown away), so that the compiled tables timed
    # alone at the end find inductor's caches warm. (On 2026-12-04 the compiled tables, run
    # cold at the end, outran the check's deadline.)
    jobs = [*check.correctness_jobs(),
            lambda: check.tables(["compiled"], "compile_warmup", 400, ("--repeats", "1"))]
    check.side_by_side(jobs, at_once=len(jobs))
    check.input_decode()
    check.tables(["compiled"], "gpu_tables_compiled", 400)
    return check.summary()


if __name__ == "__main__":
    sys.exit(main())
