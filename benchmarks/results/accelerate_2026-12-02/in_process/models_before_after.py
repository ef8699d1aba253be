# Session record (not a maintained benchmark): both code versions in one process.
# Set-up, from the repository root:
#   git worktree add /tmp/before 6b560e2 && mkdir -p /tmp/pkgs
#   cp -r /tmp/before/src/vitmix /tmp/pkgs/vitmix_before
# Run: .venv/bin/python benchmarks/results/accelerate_2026-12-02/in_process/models_before_after.py 25
"""Whole-model inference before (6b560e2, kernels inside the layers) and after (vitmix.accelerate),
both code versions in one process, interleaved. Throwaway session script."""
import copy, statistics, sys, warnings
sys.path.insert(0, "/tmp/pkgs")
import torch, timm
warnings.filterwarnings("ignore")
torch.manual_seed(0)
import vitmix_before
from vitmix_before.convert import deploy as deploy_before
S, D = "schemeformer_ppaa_s12_e8_g4", "metaformer_ppaa_s12"
models = {}
for n in (S, D):
    torch.manual_seed(0)
    m = timm.create_model(n); deploy_before(m); models[(n, "before")] = m
import vitmix
for n in (S, D):
    torch.manual_seed(0)
    m = timm.create_model(n); vitmix.deploy(m); models[(n, "after")] = m
    assert type(models[(n, "before")]).__module__.startswith("vitmix_before"), type(models[(n, "before")]).__module__
    assert type(m).__module__.startswith("vitmix."), type(m).__module__
print({k: type(v).__module__ for k, v in models.items()})
print("accelerated after:", len(__import__("vitmix.accelerate.transform", fromlist=["x"]).accelerated_modules(models[(S, "after")])))
x = torch.randn(32, 3, 224, 224).contiguous(memory_format=torch.channels_last)
cands = {}
for k, m in models.items():
    m = m.to(memory_format=torch.channels_last)
    with torch.inference_mode():
        y = m(x[:2])
    cands[k] = (lambda m=m: (lambda: m(x)))()
with torch.inference_mode():
    for n in (S, D):
        a, b = models[(n, "before")](x[:4]), models[(n, "after")](x[:4])
        print(n, "max |before - after| =", (a - b).abs().max().item())
from vitmix.bench.speed import time_interleaved
reps = int(sys.argv[1]) if len(sys.argv) > 1 else 7
with torch.inference_mode():
    samples = time_interleaved(cands, repeats=reps, warmup=1)
for k, v in samples.items():
    print(k, "median %.1f ms" % (statistics.median(v) * 1e3), " ".join("%.0f" % (s * 1e3) for s in v))
for ver in ("before", "after"):
    r = [d / s for d, s in zip(samples[(D, ver)], samples[(S, ver)])]
    print(f"{ver}: throughput ratio SCHEME/dense median-of-medians {statistics.median(samples[(D, ver)]) / statistics.median(samples[(S, ver)]):.3f}x, per-repeat {min(r):.3f}-{max(r):.3f} median {statistics.median(r):.3f}")
for n in (S, D):
    r = [b / a for b, a in zip(samples[(n, 'before')], samples[(n, 'after')])]
    print(f"{n}: after speed / before speed, per-repeat median {statistics.median(r):.3f} ({min(r):.3f}-{max(r):.3f})")
rr = [(samples[(D, 'after')][i] / samples[(S, 'after')][i]) / (samples[(D, 'before')][i] / samples[(S, 'before')][i]) for i in range(reps)]
print(f"ratio after / ratio before, per repeat: median {statistics.median(rr):.3f}, quartiles {statistics.quantiles(rr, n=4)[0]:.3f}-{statistics.quantiles(rr, n=4)[2]:.3f}")
