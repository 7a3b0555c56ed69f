"""PyTorch reference throughput for docs/benchmarks.md: a randomly initialised Qwen2 model
trained with torch.compile, BF16 autocast over FP32 parameters (the same split as LLMQ-rs's
BF16 plans: BF16 compute, FP32 master weights and moments), fused AdamW and SDPA attention.

    python3 tools/torch_bench.py --model qwen2.5-0.5b --batch 8 --seq 1024 --steps 10

With `--grad-accum N` a step runs N micro-batches of `--batch` sequences (the loss scaled by
1/N), then clipping and one AdamW update, as `llmqc plan --grad-accum N` plans it. Prints one
JSON line: model, batch, accumulation, seq, tokens per second, step time, peak memory (or the
error, when the batch does not fit).
"""

import argparse
import json
import time

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

# The shapes of models/qwen2.5-*.ron (Qwen2.5's config.json files).
QWEN25 = {
    "qwen2.5-0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                         num_attention_heads=14, num_key_value_heads=2, tie_word_embeddings=True),
    "qwen2.5-1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                         num_attention_heads=12, num_key_value_heads=2, tie_word_embeddings=True),
    "qwen2.5-3b": dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
                       num_attention_heads=16, num_key_value_heads=2, tie_word_embeddings=True),
    "qwen2.5-7b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                       num_attention_heads=28, num_key_value_heads=4, tie_word_embeddings=False),
}
COMMON = dict(vocab_size=151936, rope_theta=1e6, rms_norm_eps=1e-6, max_position_embeddings=32768)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", choices=sorted(QWEN25), default="qwen2.5-0.5b")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--grad-accum", type=int, default=1)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--no-compile", action="store_true")
    args = ap.parse_args()

    torch.manual_seed(0)
    config = Qwen2Config(**QWEN25[args.model], **COMMON, attn_implementation="sdpa")
    model = Qwen2ForCausalLM(config).cuda().train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95),
                            weight_decay=0.1, fused=True)
    step_fn_model = model if args.no_compile else torch.compile(model)
    tokens = torch.randint(0, config.vocab_size, (args.batch, args.seq + 1), device="cuda")
    inputs, targets = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()

    def step():
        for _ in range(args.grad_accum):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                logits = step_fn_model(input_ids=inputs).logits
                loss = torch.nn.functional.cross_entropy(
                    logits.float().view(-1, logits.size(-1)), targets.view(-1))
            (loss / args.grad_accum).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    try:
        for _ in range(args.warmup):
            step()
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(args.steps):
            loss = step()
        torch.cuda.synchronize()
    except torch.OutOfMemoryError as e:
        print(json.dumps({"model": args.model, "batch": args.batch, "error": str(e)[:200]}))
        return
    seconds = (time.perf_counter() - start) / args.steps
    print(json.dumps({
        "model": f"{args.model} (random init)",
        "framework": f"torch {torch.__version__}" + ("" if args.no_compile else " compile"),
        "batch": args.batch,
        "grad_accum": args.grad_accum,
        "seq": args.seq,
        "step_ms": round(seconds * 1e3, 2),
        "tokens_per_second": round(args.batch * args.seq * args.grad_accum / seconds),
        "loss": float(loss),
        "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
    }))


if __name__ == "__main__":
    main()
