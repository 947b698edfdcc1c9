"""GPU check: every public path of micl_probe on an accelerator, in bf16, against the fp32 eager reference.

    python bench/gpu_check.py                      # on a CUDA machine (what the device tool lends)
    python bench/gpu_check.py --device cpu         # a dry run of the same script on the CPU

For each family's tiny random model (micl_probe.testing), moved to --device in --dtype:
  capture    nnsight and (bridged families) TransformerLens attention mass vs the fp32 eager reduction on the CPU
  dara       identity at alpha = 1, three training steps (finite gradients, loss moves), applied in generation
  mtv        extract, locate (a few REINFORCE steps), inject (logits move, stay finite)
  mmict      a zero residual hub is the model; two training steps of each placement; +mmict in the harness
  harness    run() on a procedural task, teacher-forced and with generation + exact match
Then, for llava and qwen2_vl, the model loaded with a device_map that puts the decoder's second half on the CPU
and the rest on --device: capture vs the eager reference (per-layer devices). Last, attn_report from the command
line on a shipped organism on --device.

One line a check (family, check, ok / FAIL / skip, max |difference| where there is one); the last line is the
summary. "skip" is an environment limit, said in the line (TransformerLens bridges Qwen2.5-VL only with torchvision).
Tolerance: 1e-3 (fp32 reductions of bf16 attention). Nothing here is timed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

import torch

os.environ.setdefault("TQDM_DISABLE", "1")  # one line a check

from micl_probe import DARA, RunConfig, capture_attention, load, run  # noqa: E402
from micl_probe.core import Loaded, adapter_for, prepared, within  # noqa: E402  # noqa: E402
from micl_probe.evaluation.scoring import generate_answers  # noqa: E402
from micl_probe.interventions import FitConfig, MHub, extract, inject, locate, train_mmict  # noqa: E402
from micl_probe.testing import FAMILIES, noise_episode, tiny_model  # noqa: E402

TOLERANCE = 1e-3
EPISODES = [noise_episode(2), noise_episode(1, seed=3)]


def reference(family: str) -> torch.Tensor:
    model, processor = tiny_model(family)
    return capture_attention(Loaded(model, processor, adapter_for(model)), EPISODES, backend="eager",
                             progress=False).mass


def moved(family: str, device: str, dtype) -> Loaded:
    model, processor = tiny_model(family, dtype=dtype)
    return Loaded(model.to(device), processor, adapter_for(model), name=f"tiny-{family}")


def check_capture(loaded: Loaded, ref: torch.Tensor) -> list[tuple]:
    rows = []
    backends = ["nnsight", "eager"] + (["transformer_lens"] if loaded.adapter.tl_bridge else [])
    for backend in backends:
        try:
            mass = capture_attention(loaded, EPISODES, backend=backend, progress=False).mass
            diff = float((mass - ref).abs().max())
            rows.append((f"capture {backend}", diff <= TOLERANCE, diff))
        except Exception as e:  # noqa: BLE001 — a check that fails is reported, the others still run
            skip = "cannot bridge" in str(e)  # an environment limit (TransformerLens needs torchvision), said so
            rows.append((f"capture {backend}", None if skip else False, f"{type(e).__name__}: {str(e)[:80]}"))
    return rows


def check_dara(loaded: Loaded) -> list[tuple]:
    batch = loaded.prepare_batch([noise_episode(2)], with_answer=True)
    dara = DARA.for_model(loaded, n_images=3, layers=(0, 1))
    with torch.no_grad():
        plain = loaded.model(**batch.inputs).logits.float()
        with dara.applied(loaded.model, batch.layouts) as kw:
            same = loaded.model(**batch.inputs, **kw).logits.float()
    identity = float((same - plain).abs().max())
    labels = torch.full_like(batch.inputs["input_ids"], -100)
    pos = batch.layouts[0].query_answer_positions()
    labels[0, pos] = batch.inputs["input_ids"][0, pos]
    opt = torch.optim.Adam([dara.log_alpha], lr=0.5)
    losses = []
    for _ in range(3):
        opt.zero_grad()
        with dara.applied(loaded.model, batch.layouts) as kw:
            loss = loaded.model(**batch.inputs, **kw, labels=labels.to(loaded.device)).loss
        loss.backward()
        finite = bool(torch.isfinite(dara.log_alpha.grad).all())
        opt.step()
        losses.append(float(loss.detach()))
    ask = loaded.prepare_batch([noise_episode(2)], padding_side="left")
    with dara.applied(loaded.model, ask.layouts) as kw:
        text = generate_answers(loaded, ask, 3, **kw)[0]
    return [("dara identity", identity <= 5e-2, identity),
            ("dara train", finite and losses[-1] != losses[0], f"loss {losses[0]:.3f} -> {losses[-1]:.3f}"),
            ("dara generate", isinstance(text, str), repr(text))]


def check_mtv(loaded: Loaded) -> list[tuple]:
    mtv = extract(loaded, iter([noise_episode(2, seed=s) for s in range(4)]), n_prompts=4, batch_size=2)
    stream = iter([noise_episode(0, seed=s) for s in range(10)])
    mask = locate(loaded, mtv, stream, [noise_episode(0, seed=20)], steps=3, n_masks=4, n_final=2)
    batch = loaded.prepare_batch([noise_episode(0)])
    with torch.no_grad():
        plain = loaded.model(**batch.inputs).logits.float()
        full = torch.ones_like(mask.values, dtype=torch.bool)
        with inject(loaded, mtv.mean, full, batch.layouts):
            out = loaded.model(**batch.inputs).logits.float()
    change = float((out - plain).abs().max())
    return [("mtv extract+locate+inject", bool(torch.isfinite(out).all()) and change > 0, change)]


def check_mmict(loaded: Loaded) -> list[tuple]:
    batch = loaded.prepare_batch([noise_episode(2)], with_answer=True)
    zero = MHub.for_model(loaded, width=16, n_queries=4, layers=1, placement="residual").on(loaded)
    with torch.no_grad():
        plain = loaded.model(**batch.inputs).logits.float()
        with within(zero, prepared(zero, batch).layouts) as kw:
            same = float((loaded.model(**batch.inputs, **kw).logits.float() - plain).abs().max())
    rows = [("mmict zero residual hub", same == 0.0, same)]
    for placement in ("tokens", "residual"):
        hub, history = train_mmict(loaded, ["outlier"], 2, FitConfig(steps=2, batch=2, eval_every=2, n_val=2),
                                   width=16, n_queries=4, layers=1, placement=placement)
        records = run(loaded, ["outlier"], ["2-shot+mmict"], RunConfig(n=2, progress=False, metric="exact",
                                                                       max_new_tokens=3),
                      interventions={"mmict": hub.on(loaded)})
        ok = all(torch.isfinite(p).all() for p in hub.parameters()) and len(records) == 2 and history
        rows.append((f"mmict {placement} train+harness", bool(ok), history[-1]["val_loss"]))
    return rows


def check_harness(loaded: Loaded) -> list[tuple]:
    rows = []
    for metric in ("teacher-forced", "exact"):
        records = run(loaded, ["outlier"], ["zero-shot", "2-shot"], RunConfig(n=2, progress=False, metric=metric,
                                                                            max_new_tokens=3))
        rows.append((f"harness {metric}", len(records) == 4 and all(0 <= r["visual_share"] <= 1 for r in records),
                     len(records)))
    return rows


def split_map(model, decoder_path: str, device: str) -> dict:
    """Every parameter's module -> `device`, but the decoder's second half of layers -> "cpu"."""
    n = len(adapter_for(model).layers(model))
    out = {}
    for name, _ in list(model.named_parameters()) + list(model.named_buffers()):
        module = name.rsplit(".", 1)[0]
        layer = module.removeprefix(f"{decoder_path}.layers.").split(".")[0] if \
            module.startswith(f"{decoder_path}.layers.") else None
        out[module] = "cpu" if layer is not None and int(layer) >= n // 2 else device
    return out


def check_device_map(family: str, device: str, dtype, ref: torch.Tensor) -> list[tuple]:
    model, processor = tiny_model(family)
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        processor.save_pretrained(folder)
        loaded = load(folder, device_map=split_map(model, adapter_for(model).decoder_path, device), dtype=dtype)
        devices = sorted({str(p.device) for p in loaded.model.parameters()})
        return [(f"device_map {'+'.join(devices)} " + name, ok, diff)
                for name, ok, diff in check_capture(loaded, ref)[:2]]


def check_report(device: str, dtype: str, out: Path) -> list[tuple]:
    cmd = [sys.executable, "-m", "micl_probe.attn_report", "--model", "organism:text-shortcut", "--tasks", "outlier",
           "--n", "4", "--device", device, "--dtype", dtype, "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    ok = done.returncode == 0 and (out / "report.html").is_file()
    return [("attn_report", ok, "report written" if ok else done.stderr.strip().splitlines()[-1:])]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--families", nargs="+", default=FAMILIES)
    ap.add_argument("--out", default=tempfile.mkdtemp(prefix="gpu_check_"))
    args = ap.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA device here; run where one is lent, or --device cpu for a dry run")
    dtype = getattr(torch, args.dtype)
    where = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "cpu"
    print(f"gpu_check on {where}, {args.dtype}, torch {torch.__version__}", flush=True)
    results = []

    def report(family, rows):
        for name, ok, detail in rows:
            detail = f"{detail:.2e}" if isinstance(detail, float) else detail
            print(f"{family:16s} {name:36s} {'skip' if ok is None else 'ok' if ok else 'FAIL'}  {detail}", flush=True)
            if ok is not None:
                results.append(ok)

    for family in args.families:
        ref = reference(family)
        for check in (lambda loaded, ref=ref: check_capture(loaded, ref), check_dara, check_mtv, check_mmict,
                      check_harness):
            try:
                report(family, check(moved(family, args.device, dtype)))
            except Exception as e:  # noqa: BLE001
                report(family, [(getattr(check, "__name__", "capture"), False, f"{type(e).__name__}: {e}"[:120])])
                traceback.print_exc(limit=2)
        if family in ("llava", "qwen2_vl"):
            try:
                report(family, check_device_map(family, args.device, dtype, ref))
            except Exception as e:  # noqa: BLE001
                report(family, [("device_map", False, f"{type(e).__name__}: {e}"[:120])])
    report("organism", check_report(args.device, args.dtype, Path(args.out) / "report"))
    print(f"gpu_check: {sum(results)}/{len(results)} checks passed on {where} ({args.dtype})")
    sys.exit(0 if all(results) else 1)


if __name__ == "__main__":
    main()
