"""Checks one training step of LLMQ-rs against PyTorch + transformers on the same weights and tokens.

    llmq-run plan.bin --dump-step dump/          # forward + backward of the first micro-batch
    python3 tools/hf_step_check.py dump/ models/qwen2.5-0.5b.ron --max-loss-rel 1e-3 --min-cos 0.999

On trained weights (a GGUF or safetensors imported with --init-from, text tokenized by its own
tokenizer; tied embeddings are handled):

    llmq-tokenize --tokenizer SmolLM2.gguf data/pride-and-prejudice.txt -o austen-smollm.bin
    llmq-run models/smollm2-135m.ron --init-from SmolLM2.gguf --data austen-smollm.bin --batch 4 \\
        --seq 1024 --precision fp8 --dump-step dump/
    python3 tools/hf_step_check.py dump/ models/smollm2-135m.ron --max-loss-rel 1e-2 --min-cos 0.98

`dump/` holds what `llmq-run --dump-step` writes: `model.safetensors` (the weights under their
Hugging Face names) and `step.safetensors` (`tokens`, `targets`, `loss`, `grad.<name>`). The model
spec gives the architecture and shapes. The reference runs in FP32 (weights upcast from what LLMQ-rs
holds), so it measures LLMQ-rs's error, not PyTorch's; PyTorch's own BF16 autocast step is measured
against the same reference, as a yardstick of what BF16 rounding alone costs.

Prints a table per weight (cosine similarity and relative norm error of the gradient) and one JSON
line with the summary; exits 1 when the loss or any gradient misses the thresholds.

In FP8 the gradients miss a tight cosine against FP32 by the recipe's own rounding, which compounds
over the blocks. `--emulate-fp8 e4m3` (the gradient format of `llmq-run --grad-fp8`) adds a third
step, the BF16 autocast one with every block linear on an emulation of LLMQ-rs's FP8 matmul, and
`--min-cos` then applies to our gradients against it (the loss is still held to FP32):

    llmq-run models/qwen2.5-0.5b.ron --precision fp8 --batch 1 --seq 256 --dump-step dump/
    python3 tools/hf_step_check.py dump/ models/qwen2.5-0.5b.ron --emulate-fp8 e4m3 \\
        --max-loss-rel 1e-2 --min-cos 0.98

The emulation follows `passes/src/fp8_casts.rs` and `horizontal_fusion.rs`: per-tensor scale
`fmax / amax` (scale 1 for a zero or non-finite abs-max), round to nearest even with saturation,
products of the FP8 values accumulated in FP32 and multiplied by both descales, BF16 results.
Forward `y = q(x)·q(W)ᵀ` with `x` and `W` in e4m3; backward `dx = q(dy)·q(W)` and `dW = q(dy)ᵀ·q(x)`,
one quantisation of `dy` for both, the forward's FP8 `x` and `W`. q/k/v and gate/up are one matmul
over their weights stacked by rows, so they share one weight scale and one `dy` scale; Qwen2's
biases are added in BF16 after the matmul, and their gradient is the sum of the unquantised `dy`.
Embedding, norms, attention, LM head and loss are PyTorch's BF16 autocast ones, whose residual
stream stays FP32 where ours is BF16: the emulation is a close reference, not a bit-exact one. Those
BF16-level differences move values across FP8 rounding boundaries, so the two drift apart as the
same recipe does from itself when only its non-FP8 ops round differently (an emulation with a BF16
residual stream is as far from this one as ours is). At random init on Qwen2.5-0.5B shapes, 1×256
(CPU backend): gradient cosines from 0.913 against FP32, from 0.989 against the emulation; 4×1024
(H200): from 0.915 and 0.958, the floor between two emulations 0.959 (docs/benchmarks.md). The
drift grows with the batch, so pick --min-cos for the shape.
"""

import argparse
import functools
import json
import re
import statistics
import sys

import torch
from safetensors.torch import load_file


def read_spec(path):
    """The arch name, dims, scalars and flags of a model spec (the subset of RON it uses)."""
    text = re.sub(r"//[^\n]*", "", open(path).read())
    arch = re.search(r'arch:\s*"(?:[^"]*/)?([a-z0-9]+)\.ron"', text).group(1)
    section = lambda key: dict(  # noqa: E731
        (k, v) for k, v in re.findall(r'"(\w+)":\s*([-\w.]+)', re.search(key + r":\s*\{([^}]*)\}", text).group(1))
    )
    dims = {k: int(v) for k, v in section("dims").items()}
    scalars = {k: float(v) for k, v in section("scalars").items()}
    flags = {k: v == "true" for k, v in section("flags").items()}
    return arch, dims, scalars, flags


def build_model(arch, dims, scalars, flags, seq):
    import transformers

    config_class, model_class = {
        "llama": ("LlamaConfig", "LlamaForCausalLM"),
        "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
        "qwen3": ("Qwen3Config", "Qwen3ForCausalLM"),
    }[arch]
    config = getattr(transformers, config_class)(
        vocab_size=dims["vocab"],
        hidden_size=dims["hidden"],
        intermediate_size=dims["ffn"],
        num_hidden_layers=dims["layers"],
        num_attention_heads=dims["heads"],
        num_key_value_heads=dims["kv_heads"],
        head_dim=dims["head_dim"],
        rope_theta=scalars["rope_theta"],
        rms_norm_eps=scalars["rms_eps"],
        tie_word_embeddings=flags.get("tie_embeddings", False),
        max_position_embeddings=max(seq, 2048),
        attention_dropout=0.0,
    )
    config._attn_implementation = "sdpa"
    return getattr(transformers, model_class)(config)


def quantize(t, fmt):
    """LLMQ-rs's `quantize`: the FP8 values (held in FP32) of `t · fmax/amax`, and `1/scale`."""
    fmax = torch.finfo(fmt).max
    amax = t.abs().max().float()
    scale = torch.where((amax > 0) & amax.isfinite(), fmax / amax, torch.ones_like(amax))
    return (t.float() * scale).clamp(-fmax, fmax).to(fmt).float(), 1 / scale


class Fp8Linear(torch.autograd.Function):
    """`y = x·Wᵀ` on LLMQ-rs's `fp8_matmul`s, forward and backward (`fp8_casts`): products of the
    FP8 values summed in FP32, times both descales, stored in BF16 (the weight gradient too)."""

    @staticmethod
    def forward(ctx, x, w, grad_fmt):
        with torch.autocast(x.device.type, enabled=False):
            (qx, sx), (qw, sw) = quantize(x, torch.float8_e4m3fn), quantize(w, torch.float8_e4m3fn)
            ctx.save_for_backward(qx, sx, qw, sw)
            ctx.grad_fmt = grad_fmt
            return ((qx @ qw.T) * (sx * sw)).bfloat16()

    @staticmethod
    def backward(ctx, dy):
        qx, sx, qw, sw = ctx.saved_tensors
        with torch.autocast(dy.device.type, enabled=False):
            qdy, sdy = quantize(dy, ctx.grad_fmt)  # one scale for both matmuls
            dx = ((qdy @ qw) * (sdy * sw)).bfloat16()
            dw = ((qdy.flatten(0, -2).T @ qx.flatten(0, -2)) * (sdy * sx)).bfloat16()
        return dx, dw.float(), None


class Fp8Group:
    """Block linears reading one input, packed as horizontal fusion packs them: one FP8 matmul over
    their weights stacked by rows (one abs-max for the weight, one for the output's gradient), the
    bias added after it in BF16. Each linear's forward returns its columns of the packed output."""

    def __init__(self, linears, grad_fmt):
        self.linears, self.grad_fmt, self.input, self.outputs = linears, grad_fmt, None, None
        for i, linear in enumerate(linears):
            linear.forward = functools.partial(self.forward, i)

    def forward(self, i, x):
        if self.input is not x:  # the group's first linear on this input: the packed matmul
            w = torch.cat([linear.weight for linear in self.linears])
            y = Fp8Linear.apply(x.bfloat16(), w, self.grad_fmt)
            if self.linears[0].bias is not None:
                y = y + torch.cat([linear.bias for linear in self.linears]).bfloat16()
            self.input, self.outputs = x, y.split([linear.out_features for linear in self.linears], -1)
        return self.outputs[i]


def emulate_fp8(model, grad_fmt):
    """Puts every block linear of `model` on the FP8 emulation, grouped as LLMQ-rs packs them."""
    for layer in model.model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        for linears in [attn.q_proj, attn.k_proj, attn.v_proj], [attn.o_proj], [mlp.gate_proj, mlp.up_proj]:
            Fp8Group(linears, grad_fmt)
        Fp8Group([mlp.down_proj], grad_fmt)


def step(model, tokens, targets, autocast):
    """Mean cross-entropy over every position (LLMQ-rs's loss) and the gradients, by name."""
    model.zero_grad(set_to_none=True)
    with torch.autocast(tokens.device.type, dtype=torch.bfloat16, enabled=autocast):
        logits = model(input_ids=tokens).logits
    loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
    loss.backward()
    grads = {n: p.grad.detach().float().clone() for n, p in model.named_parameters()}
    return loss.item(), grads


def compare(grads, reference):
    """Per weight: (cosine similarity, |g - ref| / |ref|)."""
    rows = {}
    for name, ref in reference.items():
        g = grads[name].flatten().double()
        r = ref.flatten().double()
        cos = torch.nn.functional.cosine_similarity(g, r, dim=0).item()
        rel = ((g - r).norm() / r.norm().clamp_min(1e-30)).item()
        rows[name] = (cos, rel)
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dump", help="directory written by llmq-run --dump-step")
    ap.add_argument("spec", help="the model spec the plan was made from (models/*.ron)")
    ap.add_argument("--max-loss-rel", type=float, default=1e-3, help="largest loss relative error")
    ap.add_argument("--min-cos", type=float, default=0.999, help="smallest gradient cosine similarity")
    ap.add_argument("--emulate-fp8", choices=["e4m3", "e5m2"],
                    help="also compare with an FP8 emulation of the recipe, gradients in this format; "
                         "--min-cos then applies to our gradients against it")
    ap.add_argument("--label", default="", help="a name for this check in the JSON line")
    ap.add_argument("--verbose", action="store_true", help="print every weight, not only the worst")
    args = ap.parse_args()

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    arch, dims, scalars, flags = read_spec(args.spec)
    weights = load_file(f"{args.dump}/model.safetensors")
    dumped = load_file(f"{args.dump}/step.safetensors")
    tokens = dumped["tokens"].long().to(device)
    targets = dumped["targets"].long().to(device)
    ours_loss = dumped["loss"].item()
    ours = {k[len("grad."):]: v.float().to(device) for k, v in dumped.items() if k.startswith("grad.")}

    model = build_model(arch, dims, scalars, flags, tokens.shape[1]).float().to(device)
    missing, unexpected = model.load_state_dict({k: v.float() for k, v in weights.items()}, strict=False)
    tied = {"lm_head.weight"} if flags.get("tie_embeddings") else set()
    if set(missing) - tied or unexpected:
        sys.exit(f"weights do not match the architecture: missing {missing}, unexpected {unexpected}")

    ref_loss, ref_grads = step(model, tokens, targets, autocast=False)
    bf16_loss, bf16_grads = step(model, tokens, targets, autocast=True)
    ref_grads = {n: g for n, g in ref_grads.items() if n in ours}
    if set(ref_grads) != set(ours):
        sys.exit(f"gradient names differ: {sorted(set(ours) ^ set(ref_grads))}")

    if args.emulate_fp8:
        emulate_fp8(model, {"e4m3": torch.float8_e4m3fn, "e5m2": torch.float8_e5m2}[args.emulate_fp8])
        fp8_loss, fp8_grads = step(model, tokens, targets, autocast=True)

    rel = lambda a, b: abs(a - b) / abs(b)  # noqa: E731
    cosines = lambda rows: [c for c, _ in rows.values()]  # noqa: E731
    rows = compare(ours, ref_grads)
    torch_rows = compare(bf16_grads, ref_grads)
    loss_rel = rel(ours_loss, ref_loss)
    print(f"loss: llmq-rs {ours_loss:.6f}, reference FP32 {ref_loss:.6f} (rel. err {loss_rel:.2e}), "
          f"PyTorch BF16 autocast {bf16_loss:.6f} (rel. err {rel(bf16_loss, ref_loss):.2e})")
    header = f"{'weight':<50} {'cos':>10} {'rel err':>9} | {'torch bf16 cos':>14} {'rel err':>9}"
    checked = rows
    if args.emulate_fp8:
        fp8_rows = compare(ours, fp8_grads)
        emulation_rows = compare(fp8_grads, ref_grads)
        checked = fp8_rows
        print(f"      FP8 emulation ({args.emulate_fp8} gradients) {fp8_loss:.6f} (rel. err "
              f"{rel(fp8_loss, ref_loss):.2e}; llmq-rs against it {rel(ours_loss, fp8_loss):.2e})")
        header += f" | {'vs fp8 emu cos':>14} {'rel err':>9} | {'emu vs fp32 cos':>15}"
    worst = sorted(checked, key=lambda n: checked[n][0])
    print(header)
    for name in worst if args.verbose else worst[:8]:
        (c, r), (tc, tr) = rows[name], torch_rows[name]
        line = f"{name:<50} {c:>10.6f} {r:>9.2e} | {tc:>14.6f} {tr:>9.2e}"
        if args.emulate_fp8:
            (fc, fr), ec = fp8_rows[name], emulation_rows[name][0]
            line += f" | {fc:>14.6f} {fr:>9.2e} | {ec:>15.6f}"
        print(line)
    min_cos = min(cosines(rows))
    ok = loss_rel < args.max_loss_rel and min(cosines(checked)) > args.min_cos
    summary = dict(
        label=args.label, spec=args.spec, device=device, batch=tokens.shape[0], seq=tokens.shape[1],
        loss=ours_loss, reference_loss=ref_loss, loss_rel_err=loss_rel,
        min_grad_cos=min_cos, median_grad_cos=statistics.median(cosines(rows)),
        worst_weight=min(rows, key=lambda n: rows[n][0]), max_grad_rel_err=max(r for _, r in rows.values()),
        torch_bf16_loss_rel_err=rel(bf16_loss, ref_loss),
        torch_bf16_min_grad_cos=min(cosines(torch_rows)),
    )
    if args.emulate_fp8:
        summary.update(
            emulate_fp8=args.emulate_fp8, fp8_emulation_loss=fp8_loss,
            loss_rel_err_vs_fp8_emulation=rel(ours_loss, fp8_loss),
            min_grad_cos_vs_fp8_emulation=min(cosines(fp8_rows)),
            median_grad_cos_vs_fp8_emulation=statistics.median(cosines(fp8_rows)),
            worst_weight_vs_fp8_emulation=worst[0],
            fp8_emulation_loss_rel_err=rel(fp8_loss, ref_loss),
            fp8_emulation_min_grad_cos_vs_fp32=min(cosines(emulation_rows)),
            fp8_emulation_median_grad_cos_vs_fp32=statistics.median(cosines(emulation_rows)),
        )
    summary.update(thresholds=dict(max_loss_rel=args.max_loss_rel, min_cos=args.min_cos), passed=ok)
    print(json.dumps(summary))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
