"""--device and --dtype: bf16 and fp16 run the whole forward and agree with fp32 (on the CPU,
so CI covers the dtype paths), the trace says which numerics ran, and a bad name is one line.

Tolerance, from the tiny models below (llama Q8_0 and gemma3, 3 layers, 4 steps): bf16 logits
come within cosine 0.9997 of fp32 (max error ~3% of the largest |logit|), fp16 within 0.9997
(~2%); the greedy tokens are the same. The checks allow cosine 0.999 and 6%.
"""

import numpy as np
import pytest
import torch

from engine.hooks import HookBus
from engine.llamacpp_reference import cosine
from engine.torch_engine import TorchEngine
from engine.weights import DeviceError
from inspector.cli import main
from tests.tiny_models import write_tiny_llama

PROMPT = "hello the llama"
COSINE = 0.999
MAX_ERR = 0.06  # of the largest |logit|


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("dev")
    return {
        "llama": str(write_tiny_llama(d / "llama.gguf", seed=5, n_layer=3)),
        "gemma3": str(write_tiny_llama(d / "gemma3.gguf", seed=5, n_layer=3, arch="gemma3")),
    }


def run(path: str, device: str = "cpu", dtype: str = "float32", numerics: str = "llamacpp", n: int = 4):
    logits = []
    bus = HookBus()
    bus.add(lambda e: logits.append(e.tensors["logits"].copy()) if e.stop == "logits" else None)
    engine = TorchEngine(path, device=device, dtype=dtype, numerics=numerics, bus=bus)
    tokens = [r.token for r in engine.generate(PROMPT, n)]
    return engine, logits, tokens


def assert_close(logits, ref):
    for a, b in zip(logits, ref):
        assert cosine(a, b) >= COSINE
        assert np.abs(a - b).max() <= MAX_ERR * np.abs(b).max()


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("numerics", ["exact", "llamacpp"])
def test_half_precision_runs_and_agrees_with_float32(models, arch, dtype, numerics):
    _, ref, ref_tokens = run(models[arch], numerics=numerics)
    engine, logits, tokens = run(models[arch], dtype=dtype, numerics=numerics)
    assert all(w.dtype == engine.dtype for w in engine.weights.values())  # dequantized once, in the dtype
    assert len(logits) == 4 and all(np.isfinite(x).all() for x in logits)
    assert_close(logits, ref)
    assert tokens == ref_tokens


def test_the_trace_says_which_numerics_ran(models):
    """ggml's summation order is followed in float32 on the CPU only; elsewhere `llamacpp`
    runs as `llamacpp-fast`, and the trace records both names."""
    bf16 = TorchEngine(models["llama"], dtype="bfloat16").info(PROMPT, 1)["engine"]
    assert (bf16["numerics"], bf16["numerics_requested"], bf16["dtype"]) == ("llamacpp-fast", "llamacpp", "bfloat16")
    fp32 = TorchEngine(models["llama"]).info(PROMPT, 1)["engine"]
    assert (fp32["numerics"], fp32["numerics_requested"]) == ("llamacpp", "llamacpp")
    exact = TorchEngine(models["llama"], dtype="float16", numerics="exact").info(PROMPT, 1)["engine"]
    assert exact["numerics"] == "exact"


@pytest.mark.parametrize("device,dtype,message", [
    ("tpu", "float32", "unknown device 'tpu'"),
    ("cuda:x", "float32", "unknown device 'cuda:x'"),
    ("cpu", "float8", "unknown dtype 'float8'"),
])
def test_a_bad_device_or_dtype_is_a_value_error(models, device, dtype, message):
    with pytest.raises(DeviceError, match=message):
        TorchEngine(models["llama"], device=device, dtype=dtype)


@pytest.mark.parametrize("flags,fragment", [
    (["--device", "tpu"], "unknown device 'tpu' (cpu, cuda or cuda:N)"),
    (["--device", "cpu:1"], "unknown device 'cpu:1'"),
    (["--dtype", "float8"], "float8"),
])
def test_a_bad_device_or_dtype_flag_is_one_line(capsys, models, flags, fragment):
    code = main([models["llama"], "hi", "--headless", "-n", "1", *flags])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith("llm-inspect: error: ") and fragment in err and "Traceback" not in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_a_gpu_is_one_line(capsys, models):
    code = main([models["llama"], "hi", "--headless", "-n", "1", "--device", "cuda"])
    err = capsys.readouterr().err
    assert code == 2 and err.strip() == "llm-inspect: error: --device cuda asked for, but torch sees no CUDA device"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_cuda_agrees_with_the_cpu(models, dtype):
    _, ref, ref_tokens = run(models["llama"], numerics="exact")
    engine, logits, tokens = run(models["llama"], device="cuda", dtype=dtype, numerics="exact")
    assert engine.weights["output.weight"].device.type == "cuda"
    assert_close(logits, ref)
    assert tokens == ref_tokens


@pytest.mark.parametrize("mode", ["exact", "llamacpp"])
def test_float16_rms_norm_of_a_large_residual(mode):
    """Real models' residual streams pass 256 (SmolLM2-135M: ~650 by layer 27); their RMSNorm
    in float16 must still come out as in float32, to float16's rounding."""
    from engine.numerics import Numerics

    x = torch.linspace(-700, 700, 576).reshape(1, 576)
    w = torch.ones(576)
    num = Numerics(mode, {})
    want = num.rms_norm(x, w, 1e-5)
    got = num.rms_norm(x.half(), w.half(), 1e-5).float()
    assert torch.allclose(got, want, rtol=2e-3, atol=1e-3)


def test_an_overflowing_dtype_is_a_clear_error(tmp_path):
    """Logits that come out inf/NaN stop the run with one line, not a crash in the sampler."""
    from engine.torch_engine import NumericalError, TorchEngine
    from tests.tiny_models import write_tiny_llama

    engine = TorchEngine(str(write_tiny_llama(tmp_path / "m.gguf")), numerics="exact", dtype="float16")
    engine.model.w["output_norm.weight"].fill_(60000.0)  # near float16's top: the logits overflow
    with pytest.raises(NumericalError, match="not finite.*bfloat16"):
        for _ in engine.generate("hello", 2):
            pass
