"""Benchmark: DARA at the cost of a forward, at a published model's widths and a long multimodal prompt.

    python bench/dara_cost.py [--demos 8] [--repeats 1] [--layers all|first] [--methods forward dara]

A random LLaVA-1.5-7B-width model (Llama-2-7B decoder: 4096-d, 32 heads; CLIP ViT-L/14 at 336 px, 576 tokens an
image; cut to 2 decoder layers, 1 vision layer, MLP width = hidden size: bench/real_shapes.py's builder), one episode
of --demos 640x480 demos + a query (8 demos: about 5.3k tokens). Each method runs in its own process, which reports
its best time of --repeats (after a warm-up) and its peak extra memory (RSS):
  forward          the plain model (sdpa)
  dara             forward under a DARA on --layers, the bias folded into the keys (no query x key mask)
  dara (eager)     the same DARA computed with materialised attention weights (the reference kernel)
  dara train step  forward + backward into the DARA factors (the model frozen)
Ratios are against the plain forward of the same run; the last line is the summary. Time it on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import torch

METHODS = ("forward", "dara", "dara-eager", "dara-train")
LABELS = {"forward": "forward", "dara": "dara", "dara-eager": "dara (eager)", "dara-train": "dara train step"}


def worker(method: str, demos: int, repeats: int, which: str):

    from real_shapes import episode, llava
    from timing import best_and_peak

    from micl_probe import DARA, Loaded
    from micl_probe.core import adapter_for

    torch.set_num_threads(2)
    torch.manual_seed(0)
    model, processor = llava()
    model.eval().requires_grad_(False)
    loaded = Loaded(model, processor, adapter_for(model), name="llava-1.5-7b widths")
    batch = loaded.prepare_batch([episode(demos)])
    layers = loaded.adapter.attention_layers(model) if which == "all" else None
    dara = DARA.for_model(loaded, n_images=demos + 1, layers=layers)
    with torch.no_grad():
        dara.set_alpha(2.0, (..., slice(0, demos)))
    labels = torch.full_like(batch.inputs["input_ids"], -100)
    pos = batch.layouts[0].query_answer_positions()
    labels[0, pos] = batch.inputs["input_ids"][0, pos]

    def once():
        if method == "forward":
            with torch.no_grad():
                model(**batch.inputs)
        elif method in ("dara", "dara-eager"):
            kernel = "eager" if method == "dara-eager" else "sdpa"
            with torch.no_grad(), dara.applied(model, batch.layouts, kernel=kernel) as kw:
                model(**batch.inputs, **kw)
        else:
            dara.log_alpha.grad = None
            with dara.applied(model, batch.layouts) as kw:
                model(**batch.inputs, **kw, labels=labels).loss.backward()

    seconds, peak = best_and_peak(once, repeats)
    print(json.dumps({"seconds": seconds, "peak_extra_mb": peak, "seq": batch.layouts[0].seq_len,
                      "layers": list(dara.layers)}))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--demos", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--layers", choices=["all", "first"], default="all", help="DARA layers (default: all)")
    ap.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS), help="(the plain forward always)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args.worker, args.demos, args.repeats, args.layers)
    methods = ["forward"] + [m for m in args.methods if m != "forward"]
    runs = {}
    for method in methods:
        out = subprocess.run([sys.executable, __file__, "--worker", method, "--demos", str(args.demos), "--repeats",
                              str(args.repeats), "--layers", args.layers], capture_output=True, text=True)
        line = [x for x in out.stdout.splitlines() if x.startswith("{")]
        runs[method] = json.loads(line[-1]) if line and not out.returncode else \
            {"error": (out.stderr.strip().splitlines() or ["?"])[-1][:120]}
    base = runs["forward"]
    if "error" in base:
        print(f"the plain forward failed: {base['error']}")
        return
    print(f"LLaVA-1.5-7B widths (2 decoder layers), {args.demos} demos + query: {base['seq']} tokens; DARA on layers "
          f"{runs.get('dara', {}).get('layers')}; threads 2, best of {args.repeats}")
    print(f"{'method':<18}{'s':>9}{'x forward':>11}{'peak MB':>10}{'x forward':>11}")
    for method in methods:
        r = runs[method]
        if "error" in r:
            print(f"{LABELS[method]:<18} failed: {r['error']}")
            continue
        print(f"{LABELS[method]:<18}{r['seconds']:9.2f}{r['seconds'] / base['seconds']:11.2f}"
              f"{r['peak_extra_mb']:10.0f}{r['peak_extra_mb'] / max(base['peak_extra_mb'], 1):11.2f}")
    d = runs.get("dara", {"error": "not run"})
    if "error" not in d:
        print(f"summary: DARA forward {d['seconds'] / base['seconds']:.2f}x a plain forward (target <= 1.05) at "
              f"{base['seq']} tokens, peak {d['peak_extra_mb']:.0f} MB vs {base['peak_extra_mb']:.0f} MB")


if __name__ == "__main__":
    main()
