"""Compares two `llmq-run --dump-step` dumps of the same model, weights and tokens: typically an
FP8 or BF16 plan against an FP32 one, to measure what the recipe's rounding costs without a
PyTorch reference (the CPU backend computes the GPU's FP8 values bit for bit).

    llmq-run MODEL --precision fp32 --dump-step ref/ ...
    llmq-run MODEL --precision fp8  --dump-step fp8/ ...
    python3 tools/compare_dumps.py ref/ fp8/ --min-cos 0.98 --max-loss-rel 1e-2

Prints the loss of both and its relative error, the gradient cosine similarity and relative
norm error of every weight (worst first with --verbose), and one JSON summary line; exits 1
when the loss or any gradient misses the thresholds. Needs numpy only (the safetensors
files are read directly, BF16 decoded from its bits).
"""

import argparse
import json
import struct
import sys

import numpy as np


def load(path):
    """The dump's step tensors (BF16, F32, I32) as float64 arrays, read from the file's bytes
    (numpy has no BF16)."""

    raw = open(f"{path}/step.safetensors", "rb").read()
    (header_len,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + header_len])
    data = raw[8 + header_len :]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        lo, hi = info["data_offsets"]
        buf = data[lo:hi]
        dtype = info["dtype"]
        if dtype == "BF16":
            bits = np.frombuffer(buf, dtype=np.uint16).astype(np.uint32) << 16
            values = bits.view(np.float32)
        elif dtype == "F32":
            values = np.frombuffer(buf, dtype=np.float32)
        elif dtype == "I32":
            values = np.frombuffer(buf, dtype=np.int32)
        else:
            continue
        out[name] = values.astype(np.float64).reshape(info["shape"])
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("reference")
    ap.add_argument("other")
    ap.add_argument("--min-cos", type=float, default=0.98)
    ap.add_argument("--max-loss-rel", type=float, default=1e-2)
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args()
    ref, other = load(args.reference), load(args.other)
    if not np.array_equal(ref["tokens"], other["tokens"]):
        sys.exit("the dumps were made on different tokens")
    loss_ref, loss = float(ref["loss"].ravel()[0]), float(other["loss"].ravel()[0])
    loss_rel = abs(loss - loss_ref) / abs(loss_ref)
    rows = []
    for name in sorted(k for k in ref if k.startswith("grad.")):
        a, b = ref[name].ravel(), other[name].ravel()
        na, nb = np.linalg.norm(a), np.linalg.norm(b)
        cos = float(a @ b / (na * nb)) if na > 0 and nb > 0 else float("nan")
        rel = float(np.linalg.norm(a - b) / na) if na > 0 else float("nan")
        rows.append((cos, rel, name[len("grad.") :]))
    rows.sort()
    shown = rows if args.verbose else rows[:10]
    print(f"loss {loss_ref:.6f} (reference) {loss:.6f} (other), relative error {loss_rel:.2e}")
    print(f"{'cosine':>9} {'rel. err':>9}  weight ({'all' if args.verbose else 'worst 10'} of {len(rows)})")
    for cos, rel, name in shown:
        print(f"{cos:9.5f} {rel:9.2e}  {name}")
    cosines = np.array([r[0] for r in rows])
    summary = dict(
        loss_reference=loss_ref,
        loss=loss,
        loss_rel=loss_rel,
        weights=len(rows),
        cos_min=float(cosines.min()),
        cos_p10=float(np.percentile(cosines, 10)),
        cos_median=float(np.median(cosines)),
        worst=rows[0][2],
    )
    print(json.dumps(summary))
    ok = loss_rel <= args.max_loss_rel and summary["cos_min"] >= args.min_cos
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
