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
"""

import argparse
import json
import re
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

    rows = compare(ours, ref_grads)
    torch_rows = compare(bf16_grads, ref_grads)
    loss_rel = abs(ours_loss - ref_loss) / abs(ref_loss)
    worst = sorted(rows, key=lambda n: rows[n][0])
    print(f"loss: llmq-rs {ours_loss:.6f}, reference FP32 {ref_loss:.6f} (rel. err {loss_rel:.2e}), "
          f"PyTorch BF16 autocast {bf16_loss:.6f} (rel. err {abs(bf16_loss - ref_loss) / ref_loss:.2e})")
    print(f"{'weight':<50} {'cos':>10} {'rel err':>9} | {'torch bf16 cos':>14} {'rel err':>9}")
    for name in worst if args.verbose else worst[:8]:
        (c, r), (tc, tr) = rows[name], torch_rows[name]
        print(f"{name:<50} {c:>10.6f} {r:>9.2e} | {tc:>14.6f} {tr:>9.2e}")
    min_cos = rows[worst[0]][0]
    ok = loss_rel < args.max_loss_rel and min_cos > args.min_cos
    summary = dict(
        label=args.label, spec=args.spec, device=device, batch=tokens.shape[0], seq=tokens.shape[1],
        loss=ours_loss, reference_loss=ref_loss, loss_rel_err=loss_rel,
        min_grad_cos=min_cos, worst_weight=worst[0], max_grad_rel_err=max(r for _, r in rows.values()),
        torch_bf16_loss_rel_err=abs(bf16_loss - ref_loss) / ref_loss,
        torch_bf16_min_grad_cos=min(c for c, _ in torch_rows.values()),
        thresholds=dict(max_loss_rel=args.max_loss_rel, min_cos=args.min_cos), passed=ok,
    )
    print(json.dumps(summary))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
