"""Hugging Face text models on a worker: unpack a checked archive, load it on the pool's device, encode or generate.

Only the worker of a pool that serves these models imports torch and transformers, when the first one loads
(runtime/loader.py imports this module lazily), so the API and pools serving other formats never pay for them.
"""

from __future__ import annotations

import copy
import logging
import os
import queue
import shutil
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Any, Hashable

from runtime.batching import Batcher
from runtime.loader import InputRejectedError
from runtime.packing import packed_feeds
from server.core.hf_archive import extract
from server.core.settings import Settings

logger = logging.getLogger(__name__)
# Nothing may be fetched from a model hub at run time: every file comes from the uploaded archive.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # the worker's threads already run requests side by side


# torch's random generator is global: a seeded generate holds it for its whole run.
_SEED_LOCK = threading.Lock()


class TextModel:
    """A loaded embedding model or causal LM with its tokenizer, device and batcher."""

    def __init__(self, task: str, model: Any, tokenizer: Any, device: str, dtype: str, max_input_tokens: int,
                 context: int, settings: Settings, onnx: OnnxTransformer | None = None) -> None:
        self.task = task
        self.model = model
        self.onnx = onnx  # an embedding model's transformer exported to ONNX Runtime (CPU), else None: torch runs it
        self.runtime = "onnxruntime" if onnx is not None else "torch"
        self.tokenizer = tokenizer
        self.device = device
        self.dtype = dtype
        self.max_input_tokens = max_input_tokens
        self.context = context  # prompt plus new tokens, for a causal LM
        lanes = batch_lanes(settings, device) if task == "embedding" else 1
        self.batcher = Batcher(self._run_batch, settings.genai_batch_size, settings.genai_batch_wait_ms, lanes)
        # One replica per lane, sharing the weights: each batch runs on a replica of its own, so that no two batches
        # use one tokenizer at once.
        self._replicas: queue.SimpleQueue[Any] = queue.SimpleQueue()
        for replica in _replicas(model, lanes):
            self._replicas.put(replica)
        # A fast tokenizer is not thread-safe: each call sets its padding and truncation on the shared Rust object, so
        # a length check on one thread while a batch pads on another broke that batch ("Unable to create tensor").
        # Checks use a copy of their own; each batch lane its replica's own, and generate (under its lock) the original.
        self._check_tokenizer = copy.deepcopy(tokenizer)
        self._check_lock = threading.Lock()
        self._generate_lock = threading.Lock()

    def check_lengths(self, texts: list[str], extra: int = 0) -> None:
        """Refuse a text over the token bound, naming its row."""
        with self._check_lock:
            lengths = [len(ids) for ids in self._check_tokenizer(texts, add_special_tokens=True)["input_ids"]]
        for i, n in enumerate(lengths):
            if n > self.max_input_tokens:
                raise InputRejectedError(f"row {i}: {n} tokens is over the limit of {self.max_input_tokens} tokens per "
                                     "input (the model's maximum, capped by MODELDECK_GENAI_MAX_INPUT_TOKENS)")
            if n + extra > self.context:
                raise InputRejectedError(f"row {i}: {n} tokens plus max_new_tokens {extra} is over this model's context "
                                     f"of {self.context} tokens; shorten the prompt or ask for fewer new tokens")

    def encode(self, texts: list[str], normalize: bool) -> tuple[list[list[float]], int]:
        """Return one vector per text (float32 as floats) and the size of the batch they ran in."""
        self.check_lengths(texts)
        return self.batcher.submit(("encode", normalize), texts)

    def _run_batch(self, key: Hashable, texts: list[str]) -> list[Any]:
        _, normalize = key  # type: ignore[misc]
        model = self._replicas.get()  # never waits: a lane per replica, and at most one batch per lane
        try:
            if self.onnx is not None:
                vectors = self.onnx.encode(model, texts, normalize)
            else:
                vectors = model.encode(texts, batch_size=len(texts), normalize_embeddings=normalize,
                                       convert_to_numpy=True, show_progress_bar=False)
        finally:
            self._replicas.put(model)
        return [row.tolist() for row in vectors.astype("float32")]

    def generate(self, prompts: list[str], params: dict[str, Any]) -> list[str]:
        """Continue each prompt: greedy unless a temperature is given, reproducible with a seed."""
        import torch

        max_new = int(params.get("max_new_tokens", 32))
        self.check_lengths(prompts, extra=max_new)
        temperature = float(params.get("temperature", 0) or 0)
        options: dict[str, Any] = {"max_new_tokens": max_new, "pad_token_id": self.tokenizer.pad_token_id
                                   if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id}
        if temperature > 0:
            options.update(do_sample=True, temperature=temperature)
            for name in ("top_p", "top_k"):
                if name in params:
                    options[name] = params[name]
        else:
            options["do_sample"] = False
        out = []
        # Prompts run one at a time: padding a batch would change a greedy continuation. One generate at a time per
        # model: the tokenizer is shared, and a seeded run holds torch's global generator anyway.
        for prompt in prompts:
            with self._generate_lock, torch.no_grad():
                encoded = self.tokenizer(prompt, return_tensors="pt").to(self.device)
                if "seed" in params:
                    with _SEED_LOCK:
                        torch.manual_seed(int(params["seed"]))
                        ids = self.model.generate(**encoded, **options)
                else:
                    ids = self.model.generate(**encoded, **options)
                new = ids[0][encoded["input_ids"].shape[1]:]
                out.append(self.tokenizer.decode(new, skip_special_tokens=True))
        return out

    def memory(self) -> tuple[int, int]:
        """Return the bytes of the model's parameters and buffers, and how many of them are on a CUDA device."""
        total = cuda = 0
        module = self.model
        for tensor in [*module.parameters(), *module.buffers()]:
            size = tensor.numel() * tensor.element_size()
            total += size
            if tensor.device.type == "cuda":
                cuda += size
        return total, cuda


class OnnxTransformer:
    """An embedding model's transformer run by ONNX Runtime; tokenizing, pooling and normalising stay the
    SentenceTransformer's own modules. One session serves every lane (its run() is thread-safe). A packed graph
    takes a batch's texts end to end in rows, without padding (runtime/packing.py); else it takes the padded batch."""

    def __init__(self, session: Any, inputs: list[str], packed: bool) -> None:
        self.session = session
        self.inputs = inputs
        self.packed = packed

    def encode(self, replica: Any, texts: list[str], normalize: bool) -> Any:
        """Return the vectors of texts as a float32 array, tokenized by replica and pooled by its other modules."""
        import torch

        features = _preprocess(replica)(texts)
        if self.packed:
            layout, feeds = packed_feeds(features, self.inputs)
            tokens = layout.unpack(self.session.run(None, feeds)[0], tuple(features["attention_mask"].shape))
        else:
            tokens = self.session.run(None, {name: features[name].numpy() for name in self.inputs})[0]
        features["token_embeddings"] = torch.from_numpy(tokens)
        with torch.inference_mode():
            for module in list(replica)[1:]:
                features = module(features)
            vectors = features["sentence_embedding"]
            if normalize:
                vectors = torch.nn.functional.normalize(vectors, p=2, dim=1)
        return vectors.numpy()


def _preprocess(model: Any) -> Any:
    """Return the SentenceTransformer's tokenizing step (``preprocess`` since sentence-transformers 6)."""
    return getattr(model, "preprocess", None) or model.tokenize


# Texts an export is checked on: lengths that pack into two rows, one of them with two texts, so that padding and
# packing are both exercised.
_EXPORT_PROBES = ["ModelDeck checks the exported graph against the model.", "Short one.",
                  "A longer probe sentence makes the packed layout spill into a second row, and a padded batch pad the "
                  "short ones up to its length, so that both ways are checked on texts of different lengths."]
EXPORT_TOLERANCE = 1e-4  # largest difference allowed between torch's and ONNX Runtime's vectors


def export_to_onnxruntime(model: Any, workdir: Path, threads: int) -> OnnxTransformer | None:
    """Export a SentenceTransformer's transformer to ONNX and open it in ONNX Runtime on the CPU: packed where the
    model takes it (position ids and an attention mask per token pair, as BERT does), else padded; None (torch serves
    the model, and the log says why) where the model is not a plain text transformer, or neither export passes: it
    fails, or the exported graph's vectors differ from torch's by more than EXPORT_TOLERANCE."""
    modules = list(model)
    if type(modules[0]).__name__ != "Transformer" or getattr(modules[0], "module_output_name",
                                                              "token_embeddings") != "token_embeddings":
        logger.info("ONNX Runtime not used: the model's first module is %s, not a text Transformer",
                    type(modules[0]).__name__)
        return None
    for packed in (True, False):
        try:
            onnx, gap = _export(model, workdir, threads, packed)
        except Exception as exc:  # any model the exporter or ONNX Runtime cannot take is still served
            why = f"the export failed ({exc!r})"
        else:
            if gap <= EXPORT_TOLERANCE:
                logger.info("ONNX Runtime serves this model, %s (its vectors within %.1e of torch's)",
                            "packed" if packed else "padded", gap)
                return onnx
            why = f"its vectors differ from torch's by {gap:.1e} (more than {EXPORT_TOLERANCE:.0e})"
        logger.warning("ONNX Runtime %s not used for this model, %s: %s", "packed" if packed else "padded",
                       "the padded graph is tried next" if packed else "torch serves it", why)
    return None


def _export(model: Any, workdir: Path, threads: int, packed: bool) -> tuple[OnnxTransformer, float]:
    """Export the model's transformer, packed or padded, open it, and return it with the largest difference between
    its vectors and torch's on the probe texts."""
    import numpy as np
    import onnxruntime as ort
    import torch

    sample = _preprocess(model)(_EXPORT_PROBES)
    auto_model = list(model)[0].auto_model
    if packed:
        inputs = ["input_ids", "position_ids", "segments", *(["token_type_ids"] if "token_type_ids" in sample else [])]
        _, feeds = packed_feeds(sample, inputs)
        example = tuple(torch.from_numpy(feeds[n]) for n in inputs)
    else:
        inputs = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in sample]
        example = tuple(sample[n] for n in inputs)
    dtype = next(auto_model.parameters()).dtype

    class TokenEmbeddings(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.auto_model = auto_model

        def forward(self, *tensors: Any) -> Any:
            named = dict(zip(inputs, tensors))
            if packed:
                # Each token sees the tokens of its own text only (a row's padding sees its padding): an additive 4D
                # mask, which transformers passes to the attention as it is.
                segments = named.pop("segments")
                apart = segments[:, :, None] != segments[:, None, :]
                named["attention_mask"] = torch.zeros(apart.shape, dtype=dtype).masked_fill(
                    apart, torch.finfo(dtype).min)[:, None]
            return self.auto_model(**named)[0]

    path = workdir / ("packed.onnx" if packed else "padded.onnx")
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notices
        torch.onnx.export(TokenEmbeddings(), example, str(path), input_names=inputs,
                          output_names=["token_embeddings"], opset_version=17, dynamo=False,
                          dynamic_axes={n: {0: "batch", 1: "tokens"} for n in [*inputs, "token_embeddings"]})
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads  # 0: one per core
    options.inter_op_num_threads = 1
    onnx = OnnxTransformer(ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]), inputs,
                           packed)
    expected = model.encode(_EXPORT_PROBES, batch_size=len(_EXPORT_PROBES), convert_to_numpy=True,
                            show_progress_bar=False)
    return onnx, float(np.abs(onnx.encode(model, _EXPORT_PROBES, False) - expected).max())


def batch_lanes(settings: Settings, device: str) -> int:
    """Return how many batches of one embedding model may run at once on this worker (see genai_batch_lanes)."""
    if device.startswith("cuda"):
        return 1  # one device: batches queue on it anyway
    if settings.genai_batch_lanes:
        return settings.genai_batch_lanes
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // (settings.genai_torch_threads or cores))


def _replicas(model: Any, n: int) -> list[Any]:
    """Return the model and n - 1 copies of it that share its parameters and buffers (their tokenizers are copies)."""
    shared = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    return [model, *(copy.deepcopy(model, dict(shared)) for _ in range(n - 1))]


def load_text_model(data: bytes, device: str, settings: Settings) -> TextModel:
    """Unpack an archive and load it onto device; the unpacked files are removed once loaded."""
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        # A GPU pool's model is never run on the CPU behind the caller's back.
        raise RuntimeError("this worker serves a GPU pool but torch sees no CUDA device")
    if settings.genai_torch_threads and torch.get_num_threads() != settings.genai_torch_threads:
        torch.set_num_threads(settings.genai_torch_threads)
    base = settings.home / "hf-models"
    base.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="unpack-", dir=base))
    try:
        root = extract(data, workdir, settings.max_upload_bytes)
        half = device.startswith("cuda") and settings.genai_fp16
        dtype = torch.float16 if half else torch.float32
        if (root / "modules.json").exists():
            return _load_embedding(root, device, dtype, settings)
        return _load_causal(root, device, dtype, settings)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _dtype_keyword() -> str:
    """Return from_pretrained's dtype argument: ``dtype`` since transformers 4.56, ``torch_dtype`` before."""
    import transformers
    from packaging.version import Version

    return "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"


def _load_embedding(root: Path, device: str, dtype: Any, settings: Settings) -> TextModel:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(root), device=device, local_files_only=True, trust_remote_code=False,
                                model_kwargs={_dtype_keyword(): dtype})
    model.eval()
    limit = min(settings.genai_max_input_tokens, int(model.max_seq_length or settings.genai_max_input_tokens))
    onnx = None
    if device == "cpu" and settings.genai_cpu_runtime == "onnxruntime":
        export_dir = Path(tempfile.mkdtemp(prefix="onnx-", dir=root.parent))
        try:
            onnx = export_to_onnxruntime(model, export_dir, settings.genai_torch_threads)
        finally:
            shutil.rmtree(export_dir, ignore_errors=True)  # the session holds the graph in memory
    return TextModel("embedding", model, model.tokenizer, device, str(dtype).removeprefix("torch."), limit, limit,
                     settings, onnx)


def _load_causal(root: Path, device: str, dtype: Any, settings: Settings) -> TextModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(root), local_files_only=True, trust_remote_code=False)
    model = AutoModelForCausalLM.from_pretrained(str(root), local_files_only=True, trust_remote_code=False,
                                                 **{_dtype_keyword(): dtype}).to(device)
    model.eval()
    context = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
    context = int(context or 10**9)
    return TextModel("text-generation", model, tokenizer, device, str(dtype).removeprefix("torch."),
                     min(settings.genai_max_input_tokens, context), context, settings)
