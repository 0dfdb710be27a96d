"""kvpress's answers on rows exported by `kvpress dataset` (JSONL), to compare with `kvpress eval`.

Runs kvpress 0.5.5's pipeline on the default model (the reference harness's dequantized
checkpoint, see ../shared/reference) for each press expression given, grouped by context as
kvpress's evaluate.py does, and prints {"<press>@<ratio>": [answers...]} as JSON.

Usage (from the reference folder, with its virtualenv):
  KVREF_MODEL_ROOT=model python /path/to/eval_reference.py rows.jsonl N snapkv:0.25 knorm:0.5 ...
KVREF_QUERY_AWARE=1 evaluates as kvpress's `query_aware` (context + question compressed, empty
question).
"""
import json
import os
import sys

import make_golden as M
import kvpress  # noqa: F401  (registers the kv-press-text-generation pipeline)
import torch
from transformers import pipeline


PRESSES = {
    "no_press": lambda r: None,
    "knorm": lambda r: kvpress.KnormPress(compression_ratio=r),
    "snapkv": lambda r: kvpress.SnapKVPress(compression_ratio=r),
    "expected_attention": lambda r: kvpress.ExpectedAttentionPress(compression_ratio=r),
    "streaming_llm": lambda r: kvpress.StreamingLLMPress(compression_ratio=r),
    "tova": lambda r: kvpress.TOVAPress(compression_ratio=r),
}


def main():
    rows_file, n = sys.argv[1], int(sys.argv[2])
    rows = [json.loads(line) for line in open(rows_file)][:n]
    model, tok = M.load_model("sdpa")
    pipe = pipeline("kv-press-text-generation", model=model, tokenizer=tok)
    out = {}
    for spec in sys.argv[3:]:
        name, ratio = spec.split(":")
        answers = []
        for row in rows:
            press = PRESSES[name](float(ratio))
            context, question = row["context"], row["question"]
            if os.environ.get("KVREF_QUERY_AWARE") == "1":
                context, question = context + question, ""
            with torch.inference_mode():
                res = pipe(context, question=question, answer_prefix=row["answer_prefix"],
                           press=press, max_new_tokens=row["max_new_tokens"])
            answers.append(res["answer"])
        out[f"{name}@{ratio}"] = answers
        print(spec, answers, file=sys.stderr, flush=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
