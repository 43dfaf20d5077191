"""Tests of the pretrained sentence encoder (all-MiniLM-L6-v2 via keras-hub) and its vector cache.

The model is loaded once per module; a forward pass of a small batch takes a few hundred ms
on CPU, so these tests encode only a handful of short texts.
"""
import json
import subprocess
import sys

import numpy as np
import pytest

import recommenders_tf  # noqa: F401  (selects tf-keras before TensorFlow is imported)
from recommenders_tf.features.text_cache import TextCacheError, TextVectorCache, text_key
from recommenders_tf.features.text_encoder import (
    SentenceEncoder,
    TextEncoderConfig,
    TextEncoderError,
    measure_throughput,
)


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory):
    return tmp_path_factory.mktemp("text_cache")


@pytest.fixture(scope="module")
def encoder(cache_root):
    return SentenceEncoder(cache_dir=cache_root).load()


# ---- tokenizer ---------------------------------------------------------------------------

def test_tokenizer_gives_standard_bert_uncased_ids(encoder):
    # [CLS]=101, "hello"=7592, "world"=2088, [SEP]=102 in the bert-base-uncased vocabulary.
    assert encoder.token_ids(["hello world", "Hello World"]) == [[101, 7592, 2088, 102]] * 2


def test_tokenizer_follows_hugging_face_normalisation(encoder):
    # Reference ids from the model's tokenizer.json. keras-hub's WordPieceTokenizer case-folds
    # with NFKC ("ﬁ" -> "fi", "ß" -> "ss") and would give [101, 19154, 17076, ...] and
    # [..., 7020, 2358, 8180, 3366, 102] instead.
    assert encoder.token_ids(["ﬁancé Ångström ÉCOLE", "İstanbul ß straße"]) == [
        [101, 1984, 6651, 17076, 15687, 12431, 102],
        [101, 9960, 1096, 2358, 27807, 102],
    ]


def test_long_text_is_truncated_to_max_length(encoder):
    long_text = "word " * 300
    ids = encoder.token_ids([long_text])[0]
    assert len(ids) == encoder.max_length == 128
    assert ids[0] == 101 and ids[-1] == 102
    # 126 content tokens survive, so the 126-word prefix is the same model input.
    vectors = encoder.encode([long_text, "word " * 126], progress=False)
    np.testing.assert_allclose(vectors[0], vectors[1], atol=1e-6)


# ---- vectors -----------------------------------------------------------------------------

def test_matches_published_sentence_transformers_scores(encoder):
    # Cosine similarities printed by sentence-transformers for all-MiniLM-L6-v2 in its
    # "Semantic Textual Similarity" usage guide (sbert.net), to 4 decimals. Rounding allows
    # 5e-5; keras-hub's default tanh-GELU would be off by 1.8e-4, so 1e-4 also guards that fix.
    left = ["The new movie is awesome", "The cat sits outside", "A man is playing guitar"]
    right = ["The dog plays in the garden", "The new movie is so great", "A woman watches TV"]
    published = np.array([[0.0543, 0.8939, -0.0502],
                          [0.2838, -0.0029, 0.1310],
                          [0.2277, -0.0136, -0.0327]])
    vectors = encoder.encode(left + right, progress=False)
    scores = vectors[:3] @ vectors[3:].T
    np.testing.assert_allclose(scores, published, atol=1e-4)
    # Paraphrases close, unrelated sentences far.
    assert scores[0, 1] > 0.7
    assert scores[0, 0] < 0.3 and scores[0, 2] < 0.3


def _numpy_bert_sentence_vector(model_dir, token_ids):
    """Independent float64 BERT forward pass (exact GELU) + mean pooling + L2 norm."""
    from math import erf, sqrt

    from safetensors.numpy import load_file

    weights = {k: v.astype(np.float64) for k, v in
               load_file(str(model_dir / "model.safetensors")).items()}
    config = json.loads((model_dir / "config.json").read_text())
    w = lambda name: weights[name]  # noqa: E731
    dense = lambda x, name: x @ w(name + ".weight").T + w(name + ".bias")  # noqa: E731

    def layer_norm(x, name):
        mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        return (x - mean) / np.sqrt(var + 1e-12) * w(name + ".weight") + w(name + ".bias")

    n, heads = len(token_ids), config["num_attention_heads"]
    x = (w("embeddings.word_embeddings.weight")[token_ids]
         + w("embeddings.position_embeddings.weight")[:n]
         + w("embeddings.token_type_embeddings.weight")[0])
    x = layer_norm(x, "embeddings.LayerNorm")
    for i in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        q, k, v = (dense(x, p + f"attention.self.{m}").reshape(n, heads, -1).transpose(1, 0, 2)
                   for m in ("query", "key", "value"))
        scores = q @ k.transpose(0, 2, 1) / sqrt(q.shape[-1])
        attn = np.exp(scores - scores.max(-1, keepdims=True))
        attn /= attn.sum(-1, keepdims=True)
        context = (attn @ v).transpose(1, 0, 2).reshape(n, -1)
        x = layer_norm(x + dense(context, p + "attention.output.dense"),
                       p + "attention.output.LayerNorm")
        h = dense(x, p + "intermediate.dense")
        h = 0.5 * h * (1 + np.vectorize(erf)(h / sqrt(2)))
        x = layer_norm(x + dense(h, p + "output.dense"), p + "output.LayerNorm")
    mean = x.mean(0)
    return mean / np.linalg.norm(mean)


def test_matches_independent_numpy_reference(encoder):
    text = "A man is eating food."
    expected = _numpy_bert_sentence_vector(encoder.files.directory, encoder.token_ids([text])[0])
    np.testing.assert_allclose(encoder.encode([text], progress=False)[0], expected, atol=1e-6)


def test_shape_dtype_unit_norm_and_determinism(encoder):
    texts = ["Toy Story (1995)", "GoldenEye (1995)", "Four Rooms (1995)"]
    first = encoder.encode(texts, progress=False)
    second = encoder.encode(texts, progress=False)
    assert encoder.dim == 384
    assert first.shape == (3, 384) and first.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-6)
    np.testing.assert_array_equal(first, second)


def test_padding_does_not_leak_into_the_mean(encoder):
    # Lengths 3..24 tokens: in batches of 8 the short texts get many [PAD] positions.
    texts = ["ok", "A short title", "A somewhat longer item description about a film",
             "An epic space opera: rebels, an empire, a farm boy, a princess and a smuggler "
             "who owes money to a gangster", "Comedy", "Drama about family life in a small town",
             "Heat", "Documentary on deep sea creatures and the scientists who study them"]
    original = encoder.batch_size
    try:
        encoder.batch_size = 1
        one_by_one = encoder.encode(texts, progress=False)
        encoder.batch_size = 8
        batched = encoder.encode(texts, progress=False)
    finally:
        encoder.batch_size = original
    np.testing.assert_allclose(one_by_one, batched, atol=1e-5)


def test_empty_input_and_bad_input(encoder):
    assert encoder.encode([], progress=False).shape == (0, 384)
    with pytest.raises(TextEncoderError, match="not a single string"):
        encoder.encode("a single string")
    with pytest.raises(TextEncoderError, match=r"texts\[1\] is NoneType"):
        encoder.encode(["fine", None])


def test_measure_throughput_is_positive(encoder):
    assert measure_throughput(encoder, [f"item {i}" for i in range(8)]) > 0


def test_tf_keras_still_trains_after_encoding(encoder):
    import tensorflow as tf

    vectors = encoder.encode(["a", "b", "c", "d"], progress=False)
    model = tf.keras.Sequential([tf.keras.layers.Dense(1)])
    assert type(model).__module__.startswith("tf_keras")
    model.compile(optimizer=tf.keras.optimizers.SGD(0.1), loss="mse")
    history = model.fit(vectors, np.ones((4, 1), np.float32), epochs=3, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]


def test_importing_the_module_does_not_import_keras_hub_or_tensorflow():
    code = ("import sys, recommenders_tf.features.text_encoder; "
            "print('keras_hub' in sys.modules, 'tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


# ---- cache -------------------------------------------------------------------------------

def test_cache_hits_misses_and_incremental_encoding(encoder, cache_root):
    texts = ["Jumanji (1995)", "Heat (1995)", "Sabrina (1995)", "Heat (1995)"]
    first = encoder.encode_cached(texts, progress=False)
    assert (encoder.last_stats.hits, encoder.last_stats.misses,
            encoder.last_stats.encoded) == (0, 4, 3)  # "Heat" twice is encoded once
    np.testing.assert_array_equal(first[1], first[3])
    np.testing.assert_allclose(first, encoder.encode(texts, progress=False), atol=1e-6)

    second = encoder.encode_cached(texts, progress=False)
    assert (encoder.last_stats.hits, encoder.last_stats.misses,
            encoder.last_stats.encoded) == (4, 0, 0)
    np.testing.assert_array_equal(first, second)

    third = encoder.encode_cached(texts + ["Casino (1995)"], progress=False)
    assert (encoder.last_stats.hits, encoder.last_stats.misses,
            encoder.last_stats.encoded) == (4, 1, 1)
    np.testing.assert_array_equal(third[:4], first)

    # On disk: two shards (3 rows + 1 row), keys are the texts' sha256, no temp files left.
    folder = encoder.vector_cache().directory
    shards = sorted((folder / "shards").glob("*.npy"))
    assert [np.load(s, allow_pickle=False).shape for s in shards] == [(3, 384), (1, 384)]
    keys = (folder / "shards" / (shards[1].stem + ".tsv")).read_text().split()
    assert keys == [text_key("Casino (1995)")]
    assert not list(folder.rglob("*.tmp"))
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["dim"] == 384 and meta["max_length"] == 128
    assert meta["fingerprint"] == encoder.fingerprint

    # A new process-like encoder on the same cache serves everything without loading the model.
    rerun = SentenceEncoder(cache_dir=cache_root)
    again = rerun.encode_cached(texts + ["Casino (1995)"], progress=False)
    assert rerun.last_stats.hits == 5 and rerun._forward is None
    np.testing.assert_array_equal(again, third)


def test_cache_identity_depends_on_max_length(encoder, cache_root):
    other = SentenceEncoder(max_length=64, cache_dir=cache_root)
    assert other.fingerprint != encoder.fingerprint
    assert other.vector_cache().directory != encoder.vector_cache().directory


def test_encode_cached_without_cache_dir_fails_clearly():
    with pytest.raises(TextEncoderError, match="cache_dir"):
        SentenceEncoder().encode_cached(["x"])


def test_vector_cache_roundtrip_and_corruption(tmp_path):
    cache = TextVectorCache(tmp_path / "m", dim=2, identity={"fingerprint": "f1"})
    cache.add([text_key("a"), text_key("b")], np.array([[1, 0], [0, 1]], np.float32))
    reopened = TextVectorCache(tmp_path / "m", dim=2, identity={"fingerprint": "f1"})
    reopened.refresh()
    got = reopened.get_many([text_key("b"), text_key("zzz")])
    assert list(got) == [text_key("b")]
    np.testing.assert_array_equal(got[text_key("b")], [0.0, 1.0])

    with pytest.raises(TextCacheError, match="field 'fingerprint'"):
        TextVectorCache(tmp_path / "m", dim=2, identity={"fingerprint": "other"})

    tsv = next((tmp_path / "m" / "shards").glob("*.tsv"))
    tsv.write_text(tsv.read_text() + text_key("c") + "\n")  # 3 keys, 2 rows
    with pytest.raises(TextCacheError, match=r"shape \(2, 2\), expected float32 \(3, 2\)"):
        TextVectorCache(tmp_path / "m", dim=2, identity={"fingerprint": "f1"}).refresh()
    tsv.write_text("not-a-key\n")
    with pytest.raises(TextCacheError, match="line 1: expected a 64-character sha256"):
        TextVectorCache(tmp_path / "m", dim=2, identity={"fingerprint": "f1"}).refresh()


# ---- model directory errors ----------------------------------------------------------------

_TINY_CONFIG = {"model_type": "bert", "vocab_size": 5, "hidden_size": 4, "num_hidden_layers": 1,
                "num_attention_heads": 2, "intermediate_size": 8, "max_position_embeddings": 16}


def _fake_model_dir(path, config=_TINY_CONFIG, vocab="[PAD]\n[UNK]\n[CLS]\n[SEP]\nhi\n",
                    skip=()):
    path.mkdir()
    files = {"config.json": json.dumps(config) if isinstance(config, dict) else config,
             "vocab.txt": vocab, "model.safetensors": ""}
    for name, content in files.items():
        if name not in skip:
            (path / name).write_text(content)
    return path


def test_valid_fake_dir_passes_validation(tmp_path):
    encoder = SentenceEncoder(_fake_model_dir(tmp_path / "tiny"), max_length=8)
    assert (encoder.dim, encoder.name, encoder.files.pooling) == (4, "tiny", "mean")
    cfg = TextEncoderConfig(model=str(tmp_path / "tiny"), max_length=8, batch_size=2)
    assert SentenceEncoder.from_config(cfg).batch_size == 2


def test_missing_model_directory(tmp_path):
    with pytest.raises(TextEncoderError, match=r"nowhere: model directory not found"):
        SentenceEncoder(tmp_path / "nowhere")


def test_directory_without_model_files(tmp_path):
    path = _fake_model_dir(tmp_path / "m", skip=("vocab.txt", "model.safetensors"))
    with pytest.raises(TextEncoderError, match=r"lacks vocab.txt, model.safetensors") as err:
        SentenceEncoder(path)
    assert str(path) in str(err.value)


def test_malformed_config_json(tmp_path):
    path = _fake_model_dir(tmp_path / "m", config='{"model_type": "bert",\n  "vocab_size": }')
    with pytest.raises(TextEncoderError, match=r"config.json: malformed config.json .*line 2"):
        SentenceEncoder(path)


@pytest.mark.parametrize("change, message", [
    ({"model_type": "roberta"}, "field 'model_type' is 'roberta'"),
    ({"hidden_size": None}, "field 'hidden_size' must be a positive integer, got None"),
    ({"hidden_size": 5}, "not divisible by num_attention_heads 2"),
    ({"vocab_size": 7}, "has 5 tokens but config.json says vocab_size=7"),
])
def test_inconsistent_config(tmp_path, change, message):
    path = _fake_model_dir(tmp_path / "m", config={**_TINY_CONFIG, **change})
    with pytest.raises(TextEncoderError, match=message):
        SentenceEncoder(path)


def test_vocab_without_special_tokens_and_bad_max_length(tmp_path):
    path = _fake_model_dir(tmp_path / "m", vocab="[PAD]\n[UNK]\na\nb\nc\n")
    with pytest.raises(TextEncoderError, match=r"missing special tokens \['\[CLS\]', '\[SEP\]'\]"):
        SentenceEncoder(path)
    good = _fake_model_dir(tmp_path / "g")
    with pytest.raises(TextEncoderError, match=r"max_length must be an integer in \[2, 16\]"):
        SentenceEncoder(good, max_length=17)


def test_hf_handles_fail_clearly_offline_or_unknown():
    with pytest.raises(TextEncoderError, match="hf://<org>/<name>"):
        SentenceEncoder("hf://no-slash")
    with pytest.raises(TextEncoderError, match="could not fetch the model"):
        SentenceEncoder("hf://recommenders-tf-tests/this-model-does-not-exist")
