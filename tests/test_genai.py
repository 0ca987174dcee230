"""Hugging Face text models on the live stack: all-MiniLM-L6-v2 embeddings and a tiny GPT-2, served by a real worker.

The worker runs from the genai environment (torch, transformers, sentence-transformers: ``./modeldeck test`` builds
it as .venv-genai); the API and the CPU pool keep running without torch. What the answers are compared with is
computed by tests/genai_reference.py in that same environment, straight from the model directory.
"""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import tarfile
import threading
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest

from conftest import ROOT, Client, Proc, Stack, unique, wait_for
from genai_env import genai_python, reference
from modeldeck_client import ModelDeck

TOL = 1e-5
POOL = "text"
CACHE_MB = 256
SENTENCES = [
    "A man is eating food.",
    "The new movie is awesome.",
    "Workers keep hot models loaded.",
    "Das Wetter ist heute schön.",
    "RabbitMQ carries requests to the pool.",
    "A cheetah runs after its prey.",
]


def tar_dir(directory: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as archive:
        archive.add(directory, arcname="model")
    return buf.getvalue()


def zip_dir(directory: Path) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as archive:
        for path in sorted(directory.rglob("*")):
            if path.is_file():
                archive.write(path, path.relative_to(directory).as_posix())
    return buf.getvalue()


def upload(client: Client, name: str, data: bytes, filename: str = "model.zip", **meta: Any) -> Any:
    return client.upload(name, data, fmt="huggingface", filename=filename, **{"pool": POOL, **meta})


@pytest.fixture(scope="module")
def text_worker(stack: Stack) -> Any:
    """One worker of pool 'text' from the genai environment, shared by every test here."""
    log = stack.tmp / "worker-text.log"
    env = {**stack.env, "MODELDECK_WORKER_POOL": POOL, "MODELDECK_WORKER_CONCURRENCY": "16",
           "MODELDECK_MODEL_CACHE_MB": str(CACHE_MB), "HF_HUB_OFFLINE": "1"}
    proc = Proc([genai_python(), "-m", "runtime.worker"], env, log)
    serving = {"pool": POOL, "state": {"$in": ["idle", "busy"]}}
    wait_for(lambda: not proc.alive() or stack.db.workers.find_one(serving) is not None, 120, "text worker", log)
    if not proc.alive():
        pytest.fail(f"text worker exited:\n{log.read_text()[-3000:]}")
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def minilm_dir() -> Path:
    return Path(reference("minilm-dir"))


@pytest.fixture(scope="module")
def minilm(admin: Client, text_worker: Proc, minilm_dir: Path) -> str:
    name = unique("minilm")
    resp = upload(admin, name, zip_dir(minilm_dir))
    assert resp.status_code == 201, resp.text
    return name


@pytest.fixture(scope="module")
def vectors(minilm_dir: Path) -> dict[str, np.ndarray]:
    """SentenceTransformer(<dir>).encode(SENTENCES), plain and normalized."""
    found = reference("encode", str(minilm_dir), payload={"texts": SENTENCES})
    return {k: np.asarray(v) for k, v in found.items()}


@pytest.fixture(scope="module")
def expected(vectors: dict[str, np.ndarray]) -> np.ndarray:
    return vectors["plain"]


PROMPT = "the model answers"
GENERATE_RUNS = [{"max_new_tokens": 8}, {"max_new_tokens": 8, "temperature": 0.9, "seed": 7}]


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """A tiny GPT-2 directory and what transformers' generate answers for GENERATE_RUNS on PROMPT."""
    target = tmp_path_factory.mktemp("tiny-gpt2")
    texts = reference("build-gpt2", str(target), payload=[{"prompt": PROMPT, **run} for run in GENERATE_RUNS])
    return target, texts


def test_an_embedding_model_is_recorded_with_its_task_size_and_method(admin: Client, minilm: str) -> None:
    detail = admin.get(f"/api/v1/models/{minilm}/versions/1").json()
    assert detail["format"] == "huggingface" and detail["task"] == "embedding"
    assert detail["methods"] == ["encode"]
    # all-MiniLM-L6-v2's tensors, counted from the safetensors header: 22,713,216 float32 weights and 512 int64
    # position ids
    assert detail["parameters"] == 22_713_728
    assert detail["weights_bytes"] == 4 * 22_713_216 + 8 * 512
    assert detail["serving"]["device"] == "cpu" and detail["serving"]["dtype"] == "float32"


def test_encode_through_rest_equals_sentence_transformers(admin: Client, minilm: str, expected: np.ndarray) -> None:
    resp = admin.post(f"/api/v1/models/{minilm}/predict", json={"inputs": SENTENCES, "method": "encode"})
    assert resp.status_code == 200, resp.text
    got = np.asarray(resp.json()["predictions"])
    assert got.shape == (len(SENTENCES), 384)
    np.testing.assert_allclose(got, expected, rtol=0, atol=TOL)


def test_encode_normalizes_when_asked(admin: Client, minilm: str, vectors: dict[str, np.ndarray]) -> None:
    resp = admin.post(f"/api/v1/models/{minilm}/predict",
                      json={"inputs": SENTENCES, "method": "encode", "parameters": {"normalize": True}})
    assert resp.status_code == 200, resp.text
    np.testing.assert_allclose(resp.json()["predictions"], vectors["normalized"], rtol=0, atol=TOL)
    np.testing.assert_allclose(np.linalg.norm(resp.json()["predictions"], axis=1), 1.0, atol=1e-5)


def test_the_python_client_encodes(api_url: str, admin_key: str, minilm: str, expected: np.ndarray) -> None:
    vectors = ModelDeck(api_url, admin_key).encode(minilm, SENTENCES)
    assert vectors.dtype == np.float32 and vectors.shape == (len(SENTENCES), 384)
    np.testing.assert_allclose(vectors, expected, rtol=0, atol=TOL)


def test_oip_v2_takes_bytes_and_answers_fp32(admin: Client, minilm: str, expected: np.ndarray) -> None:
    meta = admin.get(f"/v2/models/{minilm}").json()
    assert meta["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert meta["outputs"] == [{"name": "encode", "datatype": "FP32", "shape": [-1, -1]}]
    resp = admin.post(f"/v2/models/{minilm}/infer", json={
        "inputs": [{"name": "text", "shape": [3], "datatype": "BYTES", "data": SENTENCES[:3]}]})
    assert resp.status_code == 200, resp.text
    (out,) = resp.json()["outputs"]
    assert out["name"] == "encode" and out["datatype"] == "FP32" and out["shape"] == [3, 384]
    np.testing.assert_allclose(np.reshape(out["data"], (3, 384)), expected[:3], rtol=0, atol=TOL)


def test_concurrent_requests_are_batched_and_each_gets_its_own_vector(
        admin: Client, stack: Stack, minilm: str, expected: np.ndarray) -> None:
    clients = 16
    answers: dict[int, Any] = {}
    for _ in range(3):  # on a busy machine one round may not overlap; each round is a few hundred ms
        barrier = threading.Barrier(clients)

        def call(i: int) -> None:
            barrier.wait()
            resp = Client(admin.base, admin.key).post(f"/api/v1/models/{minilm}/predict",
                                                      json={"inputs": [SENTENCES[i % len(SENTENCES)]], "method": "encode"})
            answers[i] = resp

        threads = [threading.Thread(target=call, args=(i,)) for i in range(clients)]
        [t.start() for t in threads]
        [t.join() for t in threads]
        for i, resp in answers.items():
            assert resp.status_code == 200, resp.text
            np.testing.assert_allclose(resp.json()["predictions"][0], expected[i % len(SENTENCES)], rtol=0, atol=TOL)
        if max(r.json()["timings"]["batch_size"] for r in answers.values()) > 1:
            break
    assert max(r.json()["timings"]["batch_size"] for r in answers.values()) > 1
    # The worker's own counters, as its heartbeat reports them.
    time.sleep(1.2)
    beat = stack.db.workers.find_one({"pool": POOL})
    (cached,) = [m for m in beat["cached_models"] if m["format"] == "huggingface" and m.get("batching", {}).get("inputs", 0) > 20]
    assert cached["batching"]["max_batch"] > 1
    assert cached["runtime"] == "onnxruntime"  # the CPU default: its export passed the load-time check
    assert cached["batching"]["requests"] > cached["batching"]["batches"]
    assert cached["memory_mb"] >= 4 * 22_713_216 / 2**20  # at least its weights, measured after load


def test_too_many_tokens_is_422_naming_the_row(admin: Client, minilm: str) -> None:
    long = " ".join(["word"] * 300)
    resp = admin.post(f"/api/v1/models/{minilm}/predict", json={"inputs": ["short", long], "method": "encode"})
    assert resp.status_code == 422, resp.text
    assert resp.json()["error"]["message"] == (
        f"model '{minilm}' version 1: row 1: 302 tokens is over the limit of 256 tokens per input (the model's "
        "maximum, capped by MODELDECK_GENAI_MAX_INPUT_TOKENS)")


@pytest.mark.parametrize(("body", "status", "message"), [
    ({"inputs": ["a", 3], "method": "encode"}, 422, "row 1: expected a string, got 3"),
    ({"inputs": ["a", ""], "method": "encode"}, 422, "row 1: expected a non-empty string, got ''"),
    ({"inputs": [], "method": "encode"}, 422, "field 'inputs': expected a non-empty list of strings, one text per row"),
    ({"inputs": ["a"] * 65, "method": "encode"}, 413,
     "field 'inputs': 65 texts is over the limit of 64 per request (MODELDECK_GENAI_MAX_INPUTS); split them over several requests"),
    ({"inputs": ["a"], "method": "encode", "parameters": {"normalize": "yes"}}, 400,
     "field 'parameters.normalize': expected true or false, got 'yes'"),
    ({"inputs": ["a"], "method": "encode", "parameters": {"temperature": 1}}, 400,
     "field 'parameters.temperature': unknown parameter for method 'encode'; expected normalize"),
    ({"inputs": ["a"], "method": "predict"}, 400, "field 'method': model '{name}' version 1 has no method 'predict'; available: encode"),
])
def test_bad_text_inputs_are_refused_naming_the_field(admin: Client, minilm: str, body: dict[str, Any], status: int,
                                                      message: str) -> None:
    resp = admin.post(f"/api/v1/models/{minilm}/predict", json=body)
    assert resp.status_code == status, resp.text
    assert resp.json()["error"]["message"] == message.format(name=minilm)


@pytest.fixture(scope="module")
def gpt2_model(admin: Client, text_worker: Proc, gpt2: tuple[Path, list[str]]) -> str:
    name = unique("gpt2")
    resp = upload(admin, name, zip_dir(gpt2[0]))
    assert resp.status_code == 201, resp.text
    assert resp.json()["methods"] == ["generate"]
    return name


def test_a_tiny_gpt2_generates_what_transformers_generates(admin: Client, gpt2_model: str,
                                                             gpt2: tuple[Path, list[str]], api_url: str,
                                                             admin_key: str) -> None:
    name = gpt2_model
    _, expected_texts = gpt2
    assert admin.get(f"/api/v1/models/{name}/versions/1").json()["task"] == "text-generation"
    prompt = PROMPT
    for params, want in zip(GENERATE_RUNS, expected_texts):
        resp = admin.post(f"/api/v1/models/{name}/predict", json={"inputs": [prompt], "method": "generate",
                                                                  "parameters": params})
        assert resp.status_code == 200, resp.text
        assert resp.json()["predictions"] == [want] and want
    # The same directory as a tar.gz (files under model/): a second version that answers the same.
    assert upload(admin, name, tar_dir(gpt2[0]), filename="model.tar.gz").status_code == 201
    second = admin.post(f"/api/v1/models/{name}/predict", json={"inputs": [prompt], "method": "generate", "version": 2,
                                                                "parameters": GENERATE_RUNS[0]})
    assert second.status_code == 200 and second.json()["predictions"] == [expected_texts[0]], second.text
    # The same seed gives the same text again; through the client too.
    again = ModelDeck(api_url, admin_key).generate(name, prompt, max_new_tokens=8, temperature=0.9, seed=7)
    assert again == resp.json()["predictions"]
    v2 = admin.post(f"/v2/models/{name}/infer", json={
        "inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [prompt]}],
        "parameters": {"max_new_tokens": 8, "temperature": 0.9, "seed": 7}})
    assert v2.status_code == 200, v2.text
    assert v2.json()["outputs"][0]["datatype"] == "BYTES" and v2.json()["outputs"][0]["data"] == again
    # Bounds: new tokens (API setting) and the model's context of 64 positions.
    over = admin.post(f"/api/v1/models/{name}/predict", json={"inputs": [prompt], "method": "generate",
                                                              "parameters": {"max_new_tokens": 257}})
    assert over.status_code == 400
    assert over.json()["error"]["message"] == (
        "field 'parameters.max_new_tokens': expected 1 to 256 (MODELDECK_GENAI_MAX_NEW_TOKENS), got 257")
    context = admin.post(f"/api/v1/models/{name}/predict", json={"inputs": [prompt], "method": "generate",
                                                                 "parameters": {"max_new_tokens": 62}})
    assert context.status_code == 422
    assert context.json()["error"]["message"].startswith(f"model '{name}' version 2: row 0: ")  # the latest: the tar.gz
    assert "plus max_new_tokens 62 is over this model's context of 64 tokens" in context.json()["error"]["message"]


def _safetensors(shape: list[int], truncate: int = 0) -> bytes:
    header = json.dumps({"w": {"dtype": "F32", "shape": shape, "data_offsets": [0, 4 * int(np.prod(shape))]}}).encode()
    body = struct.pack("<Q", len(header)) + header + b"\0" * (4 * int(np.prod(shape)))
    return body[:len(body) - truncate] if truncate else body


def _archive(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buf.getvalue()


GPT_CONFIG = json.dumps({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}).encode()


@pytest.mark.parametrize(("files", "message"), [
    ({"config.json": GPT_CONFIG, "model.safetensors": _safetensors([4]), "../evil.txt": b"x"},
     "archive member '../evil.txt' points outside the archive; refused"),
    ({"config.json": GPT_CONFIG, "pytorch_model.bin": b"\x80\x04pickle"},
     "archive member 'pytorch_model.bin' holds pickled weights, which run code when loaded; save the model with "
     "safetensors (save_pretrained(..., safe_serialization=True)), or have an admin upload it on a server with "
     "MODELDECK_ALLOW_PICKLE=true"),
    ({"config.json": json.dumps({"architectures": ["GPT2LMHeadModel"],
                                 "auto_map": {"AutoModelForCausalLM": "modeling_evil.Evil"}}).encode(),
      "model.safetensors": _safetensors([4])},
     "config.json has 'auto_map': the model needs its own Python code (custom code, trust_remote_code), which "
     "ModelDeck never runs; use a model whose architecture transformers ships"),
    ({"config.json": GPT_CONFIG, "model.safetensors": _safetensors([4, 4], truncate=8)},
     "'model.safetensors': tensor 'w' ends at byte 64 of a data section of 56 bytes (the file is truncated)"),
    ({"model.safetensors": _safetensors([4])},
     "archive has no config.json: expected a Hugging Face model directory (config.json, tokenizer files, *.safetensors)"),
    ({"config.json": GPT_CONFIG, "modeling_evil.py": b"import os"},
     "archive member 'modeling_evil.py' is code; ModelDeck never runs code shipped with a model"),
    ({"config.json": b"{not json", "model.safetensors": _safetensors([4])},
     "archive member 'config.json' is not valid JSON: Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"),
])
def test_bad_archives_are_refused_with_the_reason(admin: Client, files: dict[str, bytes], message: str) -> None:
    resp = upload(admin, unique("bad-hf"), _archive(files))
    assert resp.status_code == 422, resp.text
    assert resp.json()["error"]["message"] == message


def test_a_model_larger_than_the_worker_holds_is_refused_with_507(admin: Client, text_worker: Proc) -> None:
    # 300 MiB of zeros: its weights fit the upload limit (and compress to almost nothing) but not this worker's cache.
    big = _archive({"config.json": GPT_CONFIG, "model.safetensors": _safetensors([75 * 2**20])})
    name = unique("too-big")
    resp = upload(admin, name, big)
    assert resp.status_code == 201, resp.text
    answer = admin.post(f"/api/v1/models/{name}/predict", json={"inputs": ["hi"], "method": "generate"})
    assert answer.status_code == 507, answer.text
    assert answer.json()["error"]["message"] == (
        f"model '{name}' version 1 cannot be served by this worker: its weights need 300.0 MiB and this worker's "
        f"model cache holds at most {CACHE_MB:.1f} MiB (MODELDECK_MODEL_CACHE_MB); serve it from a pool whose "
        "workers have more memory")
    assert text_worker.alive()


def _loads_torch(pid: int) -> bool:
    """Tell whether a process (or any of its children) has torch's library mapped."""
    procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    return any("libtorch" in Path(f"/proc/{p.pid}/maps").read_text() for p in procs)


def test_the_api_and_a_cpu_worker_never_load_torch(admin: Client, worker: Proc, text_worker: Proc, minilm: str,
                                                   iris_skops: bytes, api_url: str) -> None:
    name = unique("iris-no-torch")
    assert admin.upload(name, iris_skops).status_code == 201  # the API checks and inspects a skops file
    assert admin.post(f"/api/v1/models/{name}/predict", json={"inputs": [[5.1, 3.5, 1.4, 0.2]]}).status_code == 200
    assert admin.post(f"/api/v1/models/{minilm}/predict", json={"inputs": ["x"], "method": "encode"}).status_code == 200
    port = int(api_url.rsplit(":", 1)[1])
    api_pids = {c.pid for c in psutil.net_connections("tcp") if c.laddr and c.laddr.port == port
                and c.status == psutil.CONN_LISTEN and c.pid}
    assert api_pids and not any(_loads_torch(pid) for pid in api_pids)
    assert not _loads_torch(worker.popen.pid)
    assert _loads_torch(text_worker.popen.pid)  # the check can see torch where it is loaded


def test_the_console_tries_an_embedding_model_and_a_generator(api_url: str, admin: Client, minilm: str,
                                                              gpt2_model: str, gpt2: tuple[Path, list[str]],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("MODELDECK_CONSOLE_API_URL", api_url)
    st.cache_resource.clear()
    at = AppTest.from_file(str(ROOT / "console" / "app.py"), default_timeout=120)
    at.session_state.credential = admin.key
    at.session_state.me = admin.get("/api/v1/me").json()
    at.run()
    at.switch_page("pages/predict.py")
    at.run()
    next(s for s in at.selectbox if s.label == "Model").select(minilm)
    at.run()
    at.text_area(key="text-input").input("A man is eating food.\nThe new movie is awesome.")
    next(b for b in at.button if b.label == "Encode").click()
    at.run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert [(m.label, m.value) for m in at.metric] == [("Vector length", "384")]
    assert at.dataframe[0].value["text"].tolist() == ["A man is eating food.", "The new movie is awesome."]
    next(s for s in at.selectbox if s.label == "Model").select(gpt2_model)
    at.run()
    at.text_area(key="text-input").input(PROMPT)
    next(n for n in at.number_input if n.label == "Max new tokens").set_value(8)
    next(b for b in at.button if b.label == "Generate").click()
    at.run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert at.text_area(key="text-output").value == gpt2[1][0]  # greedy, as transformers generates it
    st.cache_resource.clear()


def test_batch_scoring_refuses_a_text_model_naming_it(admin: Client, minilm: str) -> None:
    resp = admin.post("/api/v1/jobs", json={"model": minilm, "source": {"datasource": "nowhere", "table": "t"},
                                            "destination": {"format": "csv"}})
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["message"] == (
        f"model '{minilm}' is a text model (format huggingface): batch scoring does not serve text models yet; "
        "call predict with method encode or generate, or ?async=true")


def test_an_async_encode_job_answers_the_same_vectors(admin: Client, minilm: str, expected: np.ndarray) -> None:
    resp = admin.post(f"/api/v1/models/{minilm}/predict?async=true", json={"inputs": SENTENCES[:2], "method": "encode"})
    assert resp.status_code == 202, resp.text
    job_id = resp.json()["job_id"]
    deadline = time.monotonic() + 60
    while (job := admin.get(f"/api/v1/jobs/{job_id}").json())["status"] not in ("succeeded", "failed"):
        assert time.monotonic() < deadline, job
        time.sleep(0.2)
    assert job["status"] == "succeeded", job
    np.testing.assert_allclose(job["result"]["predictions"], expected[:2], rtol=0, atol=TOL)


def test_a_pool_without_the_genai_libraries_is_refused_before_sending(admin: Client, stack: Stack, worker: Proc,
                                                                      minilm_dir: Path) -> None:
    name = unique("minilm-cpu")
    assert upload(admin, name, zip_dir(minilm_dir), pool="cpu").status_code == 201
    env = stack.db.workers.find_one({"pool": "cpu", "state": {"$in": ["idle", "busy"]}})["environment"]
    if "transformers" in env:  # the suite runs from an environment with the extra: the CPU pool can serve it
        resp = admin.post(f"/api/v1/models/{name}/predict", json={"inputs": ["hi"], "method": "encode"})
        assert resp.status_code == 200, resp.text
        return
    resp = admin.post(f"/api/v1/models/{name}/predict", json={"inputs": ["hi"], "method": "encode"})
    assert resp.status_code == 503, resp.text
    missing = "torch" if "torch" not in env else "transformers"
    assert resp.json()["error"]["message"] == (
        f"model '{name}' version 1 needs {missing}; pool cpu has no {missing} installed. Serve the pool from an "
        "environment that has it (see docs/runtime.md) or upload the model to a pool that does")


def test_a_link_in_a_tar_archive_is_refused(admin: Client) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as archive:
        for name, data in {"config.json": GPT_CONFIG, "model.safetensors": _safetensors([4])}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("tokenizer.json")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        archive.addfile(link)
    resp = upload(admin, unique("bad-tar"), buf.getvalue(), filename="model.tar.gz")
    assert resp.status_code == 422, resp.text
    assert resp.json()["error"]["message"] == "archive member 'tokenizer.json' is a link; links are refused"


_RUNTIMES_SCRIPT = """
import json, sys, torch
from pathlib import Path
from runtime import genai
from server.core.settings import Settings

root, home, texts = Path(sys.argv[1]), Path(sys.argv[2]), json.loads(sys.argv[3])
out = {}


def served(model):
    layout = "" if model.onnx is None else (" packed" if model.onnx.packed else " padded")
    return [model.runtime + layout, model.encode(texts, False)[0]]


for runtime in ("onnxruntime", "torch"):
    out[runtime] = served(genai._load_embedding(root, "cpu", torch.float32, Settings(home=home, genai_cpu_runtime=runtime)))
export = torch.onnx.export


def no_packing(module, args, path, input_names, **kwargs):
    if "segments" in input_names:  # a model whose attention takes no mask per token pair
        raise RuntimeError("Exporting the operator 'aten::made_up_mask' to ONNX opset version 17 is not supported")
    return export(module, args, path, input_names=input_names, **kwargs)


torch.onnx.export = no_packing
out["packed export fails"] = served(genai._load_embedding(root, "cpu", torch.float32, Settings(home=home)))


def unsupported(*args, **kwargs):
    raise RuntimeError("Exporting the operator 'aten::made_up' to ONNX opset version 17 is not supported")


torch.onnx.export = unsupported  # a model whose graph the exporter cannot take
out["export fails"] = served(genai._load_embedding(root, "cpu", torch.float32, Settings(home=home)))
print(json.dumps(out))
"""


def test_the_cpu_runtime_is_chosen_by_setting_and_torch_serves_what_the_export_cannot_take(
        minilm_dir: Path, expected: np.ndarray, tmp_path: Path) -> None:
    done = subprocess.run([genai_python(), "-c", _RUNTIMES_SCRIPT, str(minilm_dir), str(tmp_path),
                           json.dumps(SENTENCES)], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    # BERT takes position ids and a mask per token pair: its batches run packed, without padding (runtime/packing.py).
    assert {case: runtime for case, (runtime, _) in found.items()} == {
        "onnxruntime": "onnxruntime packed", "torch": "torch", "packed export fails": "onnxruntime padded",
        "export fails": "torch"}
    for case, (_, vectors) in found.items():
        np.testing.assert_allclose(np.asarray(vectors), expected, rtol=0, atol=TOL, err_msg=case)
    assert "the padded graph is tried next" in done.stderr and "aten::made_up_mask" in done.stderr
    assert "torch serves it: the export failed" in done.stderr and "aten::made_up" in done.stderr
