# Session record (not a maintained benchmark): both code versions in one process.
# Set-up, from the repository root:
#   git worktree add /tmp/before 6b560e2 && mkdir -p /tmp/pkgs
#   cp -r /tmp/before/src/vitmix /tmp/pkgs/vitmix_before
# Run: .venv/bin/python benchmarks/results/accelerate_2026-12-02/in_process/layers_before_after.py 15
"""BD-MLP, grouped conv and GMA ratios, before (6b560e2) and after (vitmix.accelerate), one process."""
import statistics, sys, warnings
sys.path.insert(0, "/tmp/pkgs"); sys.path.insert(0, __file__.rsplit("/benchmarks/", 1)[0] + "/benchmarks")
warnings.filterwarnings("ignore")
import torch, timm
from timm.layers import Mlp
import vitmix_before
from vitmix_before.layers import SchemeMlp as SchemeMlpB
torch.manual_seed(0)
b, n, c, e, g = 32, 196, 320, 8, 4
hidden = e * c
tokens = torch.randn(b, n, c)
maps_cl = tokens.transpose(1, 2).reshape(b, c, 14, 14).contiguous(memory_format=torch.channels_last)
def dep_before(cf):
    m = SchemeMlpB(c, hidden, groups=g, cca=True, channels_first=cf); m.fuse_mixing(); return m.eval()
gma_before_fast = timm.create_model("groupmixformer_t", impl="fast").eval()
gma_before_ref = timm.create_model("groupmixformer_t", impl="reference").eval()
gma_before_ref.load_state_dict(gma_before_fast.state_dict())
sb_tok, sb_map = dep_before(False), dep_before(True)
import vitmix
from vitmix.accelerate import accelerate
from bdmlp import deployed_scheme_mlp, GroupedConvMlp
sa_tok, sa_map = deployed_scheme_mlp(c, hidden, g, False), deployed_scheme_mlp(c, hidden, g, True)
for m in (sb_tok, sb_map, sa_map): m.load_state_dict(sa_tok.state_dict())
dense = Mlp(c, hidden).eval()
conv_cl = GroupedConvMlp(c, hidden, g).eval().to(memory_format=torch.channels_last)
gma_after_fast = accelerate(timm.create_model("groupmixformer_t", impl="fast").eval())
gma_after_ref = timm.create_model("groupmixformer_t", impl="reference").eval()
gma_after_fast.load_state_dict(gma_before_fast.state_dict()); gma_after_ref.load_state_dict(gma_before_fast.state_dict())
x = torch.randn(8, 3, 224, 224)
with torch.inference_mode():
    assert (sb_tok(tokens) - sa_tok(tokens)).abs().max() < 1e-4
    print("gma before/after logits diff", (gma_before_fast(x) - gma_after_fast(x)).abs().max().item())
def call(m, inp):
    return lambda: m(inp)
c1 = {"dense timm Mlp": call(dense, tokens), "before SchemeMlp tok": call(sb_tok, tokens),
      "after SchemeMlp tok": call(sa_tok, tokens), "conv cl": call(conv_cl, maps_cl),
      "before SchemeMlp map cl": call(sb_map, maps_cl), "after SchemeMlp map cl": call(sa_map, maps_cl)}
c2 = {"before gma fast": call(gma_before_fast, x), "before gma ref": call(gma_before_ref, x),
      "after gma fast": call(gma_after_fast, x), "after gma ref": call(gma_after_ref, x)}
from vitmix.bench.speed import time_interleaved
reps = int(sys.argv[1])
with torch.inference_mode():
    s1 = time_interleaved(c1, repeats=reps * 2, warmup=3)
    s2 = time_interleaved(c2, repeats=reps, warmup=1)
md = {k: statistics.median(v) * 1e3 for k, v in {**s1, **s2}.items()}
for k, v in md.items(): print(f"  {k:28s} {v:8.2f} ms")
for ver in ("before", "after"):
    print(f"{ver}: SchemeMlp G4 / dense timm Mlp time {md[ver + ' SchemeMlp tok'] / md['dense timm Mlp']:.3f}x;"
          f" grouped conv cl / SchemeMlp map cl {md['conv cl'] / md[ver + ' SchemeMlp map cl']:.3f}x;"
          f" GMA ref / fast {md[ver + ' gma ref'] / md[ver + ' gma fast']:.3f}x"
          f" (paired median {statistics.median(r / f for f, r in zip(s2[ver + ' gma fast'], s2[ver + ' gma ref'])):.3f}x)")
