"""One retrieval-index interface over TFRS's BruteForce (the exact reference) and ScaNN (fast path).

`build_index` validates its inputs up front (k against the number of candidates, embedding
shapes and dtypes, unique non-empty string ids), sorts the candidates by id, and returns a
`RetrievalIndex`: the TFRS top-k layer plus the arrays it was built from.

Two details the raw TFRS layers leave to the caller, handled here once:

* Ties. `tf.math.top_k` puts the lower index first among equal scores, so storing candidates
  in id order makes BruteForce break score ties by item id (lexicographic string order), as
  the benchmark protocols require.
* Short ScaNN answers. When the searched leaves hold fewer candidates than asked for, or the
  reordering budget is smaller than k, ScaNN returns fewer columns and pads with index 0 and a
  NaN score. `search_tensors` turns such slots into the id `""` with score `-inf` and always
  returns exactly k columns, so callers never mistake a pad for candidate 0.

* Exclusions. `search_excluding` looks the excluded ids up to catalogue rows through a hash
  table, sorts them once per query and tests each returned row by binary search, so excluding
  W ids costs about (k + W) log W per query instead of comparing every result with every
  excluded id. The index is asked for k plus the number of distinct excluded catalogue ids;
  when ScaNN's reordering budget or its searched leaves still leave a row short of what the
  exact search would fill, an exact pass over the whole catalogue fills that row, so ScaNN
  never returns an empty slot that BruteForce would fill.

Queries go through the query tower outside the TFRS layer (the layer is built without a
`query_model`), so the same index answers raw-feature queries and pre-computed embeddings.
"""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

import recommenders_tf  # noqa: F401  (selects tf-keras before TensorFlow loads)
import tensorflow as tf
import tensorflow_recommenders as tfrs

from recommenders_tf.serving.contract import PAD as PAD_ID  # an empty result slot

INDEX_KINDS = ("bruteforce", "scann")


@dataclasses.dataclass(frozen=True)
class ScannParams:
    """Parameters of a ScaNN tree + asymmetric-hashing index with exact reordering.

    Args:
        num_leaves: k-means partitions of the candidates (about sqrt(n) is a good start).
        num_leaves_to_search: partitions scored per query; more is slower and more accurate.
        dimensions_per_block: dimensions quantised together by asymmetric hashing; more is
            faster and coarser.
        num_reordering_candidates: candidates re-scored exactly after the approximate pass, or
            None for no reordering. It caps how many results one query can return, so it must
            be at least the largest k ever asked (k + exclusion width when excluding items).
        training_iterations: k-means iterations when building the tree.
        parallelize_batch_searches: search the queries of a batch on several threads.

    Example:
        >>> ScannParams(num_leaves=300, num_leaves_to_search=15, num_reordering_candidates=100)
    """

    num_leaves: int = 100
    num_leaves_to_search: int = 10
    dimensions_per_block: int = 2
    num_reordering_candidates: int | None = 100
    training_iterations: int = 12
    parallelize_batch_searches: bool = True

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def normalize_ids(ids: Any, field: str) -> np.ndarray:
    """Returns `ids` as a 1-D numpy array of `str`, or raises naming the field and row.

    Accepts lists or arrays of `str` or `bytes` (what TensorFlow hands back). Ids must be
    non-empty (`""` is the padding / "no exclusion" id) and must not contain line breaks (the
    candidate store writes one id per line).
    """
    arr = np.asarray(ids, dtype=object) if not isinstance(ids, np.ndarray) else ids
    if arr.ndim != 1:
        raise ValueError(f"{field} must be a 1-D sequence of string ids, got shape {arr.shape}.")
    if arr.dtype.kind in ("U",):
        out = arr.astype(str)
    elif arr.dtype.kind in ("S", "O"):
        values = []
        for row, value in enumerate(arr.tolist()):
            if isinstance(value, bytes):
                value = value.decode("utf-8")
            if not isinstance(value, str):
                raise TypeError(
                    f"{field}[{row}] is {type(value).__name__} {value!r}; ids must be strings "
                    "(the schema keeps user_id/item_id as str: convert with .astype(str))."
                )
            values.append(value)
        out = np.asarray(values, dtype=str) if values else np.asarray([], dtype=str)
    else:
        raise TypeError(
            f"{field} has dtype {arr.dtype}; ids must be strings (the schema keeps "
            "user_id/item_id as str: convert with .astype(str))."
        )
    for row, value in enumerate(out.tolist()):
        if value == PAD_ID:
            raise ValueError(
                f"{field}[{row}] is the empty string, which is reserved as the padding / "
                "no-exclusion id; drop that row or give it a real id."
            )
        if "\n" in value or "\r" in value:
            raise ValueError(f"{field}[{row}] ({value!r}) contains a line break.")
    return out


def check_unique_ids(ids: np.ndarray, field: str) -> None:
    """Raises if `ids` repeats a value, naming up to five repeated ids and their rows."""
    uniq, counts = np.unique(ids, return_counts=True)
    repeated = uniq[counts > 1]
    if len(repeated):
        details = "; ".join(
            f"{str(value)!r} at rows {np.flatnonzero(ids == value).tolist()}"
            for value in repeated[:5]
        )
        raise ValueError(
            f"{field} must be unique; {len(repeated)} id(s) repeat: {details}. "
            "Deduplicate the candidates (keep one embedding per item) before indexing."
        )


def check_embeddings(embeddings: Any, field: str, num_rows: int | None = None) -> np.ndarray:
    """Returns `embeddings` as a C-contiguous float32 [n, d] array, or raises naming the row."""
    arr = np.asarray(embeddings)
    if arr.ndim != 2:
        raise ValueError(f"{field} must be a 2-D [num_items, dim] array, got shape {arr.shape}.")
    if not np.issubdtype(arr.dtype, np.floating):
        raise TypeError(f"{field} must hold floats, got dtype {arr.dtype}.")
    if num_rows is not None and arr.shape[0] != num_rows:
        raise ValueError(
            f"{field} has {arr.shape[0]} rows but there are {num_rows} ids; "
            "ids and embeddings must be aligned row by row."
        )
    if arr.shape[1] == 0:
        raise ValueError(f"{field} has zero columns; embeddings need at least one dimension.")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    finite = np.isfinite(arr).all(axis=1)
    if not finite.all():
        row = int(np.flatnonzero(~finite)[0])
        raise ValueError(f"{field} row {row} contains NaN or inf: {arr[row][:8].tolist()}...")
    return arr


def check_k(k: int, num_candidates: int, what: str = "k") -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"{what} must be a positive integer, got {k!r}.")
    if k > num_candidates:
        raise ValueError(
            f"{what}={k} is larger than the number of candidates ({num_candidates}); "
            f"ask for at most {num_candidates} results or index more candidates."
        )
    return int(k)


def _check_scann_params(params: ScannParams, num_candidates: int, dim: int, k: int) -> None:
    problems = []
    if not 1 <= params.num_leaves <= num_candidates:
        problems.append(
            f"num_leaves={params.num_leaves} must be between 1 and the number of candidates "
            f"({num_candidates}); about sqrt(n) = {int(np.sqrt(num_candidates))} is typical"
        )
    if not 1 <= params.num_leaves_to_search <= params.num_leaves:
        problems.append(
            f"num_leaves_to_search={params.num_leaves_to_search} must be between 1 and "
            f"num_leaves={params.num_leaves}"
        )
    if not 1 <= params.dimensions_per_block <= dim:
        problems.append(
            f"dimensions_per_block={params.dimensions_per_block} must be between 1 and the "
            f"embedding dim ({dim})"
        )
    reorder = params.num_reordering_candidates
    if reorder is not None and reorder < k:
        problems.append(
            f"num_reordering_candidates={reorder} is smaller than k={k}; ScaNN returns at "
            f"most that many results, so set it to at least k"
        )
    if problems:
        raise ValueError("Invalid ScaNN parameters: " + "; ".join(problems) + ".")


def pad_and_mask(scores: tf.Tensor, rows: tf.Tensor, k) -> tuple[tf.Tensor, tf.Tensor]:
    """Marks ScaNN's NaN-scored pad slots as (-inf, row -1) and pads to exactly k columns."""
    valid = tf.math.logical_not(tf.math.is_nan(scores))
    scores = tf.where(valid, scores, tf.constant(-np.inf, scores.dtype))
    rows = tf.where(valid, rows, tf.constant(-1, rows.dtype))
    missing = tf.maximum(k - tf.shape(scores)[1], 0)
    scores = tf.pad(scores, [[0, 0], [0, missing]], constant_values=-np.inf)
    rows = tf.pad(rows, [[0, 0], [0, missing]], constant_values=-1)
    return tf.reshape(scores[:, :k], [-1, k]), tf.reshape(rows[:, :k], [-1, k])


class CatalogRows(tf.Module):
    """Candidate id -> row lookup (-1 for "" and unknown ids), row -> id, and for approximate
    indexes the exact embeddings that fill rows the approximate search leaves short.

    The TFRS layer is indexed with the row numbers as identifiers, so a search returns rows
    that are tested against excluded rows without hashing every returned id string.

    A `tf.Module`, so a SavedModel that tracks it keeps the table and the variable.
    """

    def __init__(self, ids: np.ndarray, embeddings: np.ndarray | None):
        super().__init__(name="catalog_rows")
        self.table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(
                tf.constant(ids, tf.string), tf.range(len(ids), dtype=tf.int64)),
            default_value=-1)
        self.num_rows = int(len(ids))
        self.ids = tf.Variable(tf.constant(ids, tf.string), trainable=False, name="candidate_ids")
        self.exact = (None if embeddings is None else
                      tf.Variable(embeddings, trainable=False, name="exact_candidates"))

    def lookup(self, ids: tf.Tensor) -> tf.Tensor:
        return self.table.lookup(tf.convert_to_tensor(ids, tf.string))

    def to_ids(self, rows: tf.Tensor) -> tf.Tensor:
        """Rows [B, L] (-1 = empty slot) -> ids ("" for empty slots)."""
        return tf.where(rows >= 0, tf.gather(self.ids, tf.maximum(rows, 0)),
                        tf.constant(PAD_ID))


def _sorted_rows(rows: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Rows [B, W] int64 (-1 = none) -> (sorted [B, W + 1], distinct valid count [B])."""
    rows = tf.concat([rows, tf.fill(tf.stack([tf.shape(rows)[0], 1]),
                                    tf.constant(-1, tf.int64))], 1)
    ordered = tf.sort(rows, axis=-1)
    previous = tf.pad(ordered[:, :-1], [[0, 0], [1, 0]], constant_values=-1)
    distinct = tf.logical_and(ordered >= 0, tf.not_equal(ordered, previous))
    return ordered, tf.reduce_sum(tf.cast(distinct, tf.int32), -1)


def _is_excluded(result_rows: tf.Tensor, excluded_sorted: tf.Tensor) -> tf.Tensor:
    """[B, L] bool: whether each result row is in that query's sorted excluded rows."""
    pos = tf.searchsorted(excluded_sorted, result_rows, side="left")
    pos = tf.minimum(pos, tf.shape(excluded_sorted)[1] - 1)
    found = tf.gather(excluded_sorted, pos, batch_dims=1)
    return tf.logical_and(tf.equal(found, result_rows), result_rows >= 0)


def _masked_top_k(scores: tf.Tensor, ids: tf.Tensor, dropped: tf.Tensor, k,
                  pad: Any = PAD_ID) -> tuple[tf.Tensor, tf.Tensor]:
    """Best k of [B, L] after dropping `dropped` slots; short rows end in (pad, -inf)."""
    neg_inf = tf.constant(-np.inf, scores.dtype)
    masked = tf.where(dropped, neg_inf, scores)
    missing = tf.maximum(k - tf.shape(masked)[1], 0)
    masked = tf.pad(masked, [[0, 0], [0, missing]], constant_values=-np.inf)
    ids = tf.pad(ids, [[0, 0], [0, missing]], constant_values=pad)
    values, positions = tf.math.top_k(masked, k=k)
    kept = tf.gather(ids, positions, batch_dims=1)
    kept = tf.where(tf.math.is_inf(values) & (values < 0), tf.constant(pad, kept.dtype), kept)
    return values, kept


@dataclasses.dataclass
class RetrievalIndex:
    """A built top-k index over candidate embeddings; make it with `build_index`.

    Args:
        kind: "bruteforce" (exact) or "scann" (approximate).
        layer: the TFRS top-k layer, built without a query model (it takes embeddings).
        query_model: tower mapping raw query features to embeddings, or None.
        candidate_ids: [n] str, in index order (sorted by id).
        candidate_embeddings: [n, d] float32, aligned with `candidate_ids`.
        k: default number of results.
        scann_params: the ScaNN parameters, None for brute force.
        build_seconds: wall time of `layer.index(...)`.

    Example:
        >>> index = build_index("bruteforce", tower, ids, embeddings, k=10)
        >>> scores, item_ids = index.query({"user_id": ["u1"], "history": [["i3", ""]]})
    """

    kind: str
    layer: tfrs.layers.factorized_top_k.TopK
    query_model: Any
    candidate_ids: np.ndarray
    candidate_embeddings: np.ndarray
    k: int
    scann_params: ScannParams | None
    build_seconds: float
    rows: CatalogRows | None = None
    _served: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)

    @property
    def num_candidates(self) -> int:
        return int(self.candidate_ids.shape[0])

    @property
    def embedding_dim(self) -> int:
        return int(self.candidate_embeddings.shape[1])

    @property
    def requires_scann_ops(self) -> bool:
        return self.kind == "scann"

    @property
    def max_k(self) -> int:
        """The largest k one query can return (ScaNN is capped by its reordering budget)."""
        reorder = self.scann_params.num_reordering_candidates if self.scann_params else None
        return min(self.num_candidates, reorder) if reorder else self.num_candidates

    def check_query_k(self, k: int, what: str = "k") -> int:
        k = check_k(k, self.num_candidates, what)
        if k > self.max_k:
            raise ValueError(
                f"{what}={k} exceeds this ScaNN index's num_reordering_candidates "
                f"({self.max_k}), which caps the results per query; rebuild the index with "
                f"num_reordering_candidates >= {k}."
            )
        return k

    def search_rows(self, query_embeddings: tf.Tensor, k, per_query: bool = False
                    ) -> tuple[tf.Tensor, tf.Tensor]:
        """Graph-safe search: [B, d] -> (scores [B, k], catalogue rows [B, k] int64, -1 empty).

        `per_query`: search each query on its own. ScaNN's batched search answers a query
        differently depending on the other queries of its batch (about one query in eight
        changed in a test of 200), so the serving path, where a user's answer must not depend
        on who shares the request, searches one query at a time. BruteForce is exact and
        always searches the batch at once.
        """
        if per_query and self.kind == "scann":
            def one(query):
                s, r = self.layer(query[None, :], k=k)
                return pad_and_mask(s, r, k)

            scores, rows = tf.map_fn(one, query_embeddings, fn_output_signature=(
                tf.TensorSpec([1, None], tf.float32), tf.TensorSpec([1, None], tf.int64)))
            return tf.reshape(scores, [-1, tf.shape(scores)[-1]]), \
                tf.reshape(rows, [-1, tf.shape(rows)[-1]])
        scores, rows = self.layer(query_embeddings, k=k)
        return pad_and_mask(scores, rows, k)

    def search_tensors(self, query_embeddings: tf.Tensor, k) -> tuple[tf.Tensor, tf.Tensor]:
        """Graph-safe search: [B, d] float32 -> (scores [B, k] float32, ids [B, k] string)."""
        scores, rows = self.search_rows(query_embeddings, k)
        return scores, self.rows.to_ids(rows)

    def search_excluding(self, query_embeddings: tf.Tensor, exclude_ids: tf.Tensor, k: int
                         ) -> tuple[tf.Tensor, tf.Tensor]:
        """Graph-safe top-k without any id of the query's row of `exclude_ids` [B, W] (any W,
        "" pads and excludes nothing; ids outside the catalogue are ignored).

        Returns exactly what an exact search over the catalogue minus the excluded ids
        returns, up to ScaNN's approximation: k real items whenever that many remain. Cost per
        query: the index search for k + (distinct excluded catalogue ids), plus
        (k + W) log W to drop them; an exact catalogue pass only for rows ScaNN left short.
        """
        if self.rows is None:
            raise ValueError("This index has no catalogue row table; build it with build_index.")
        queries = tf.convert_to_tensor(query_embeddings)
        excluded, n_excluded = _sorted_rows(self.rows.lookup(exclude_ids))
        width = tf.minimum(k + tf.reduce_max(tf.concat([n_excluded, [0]], 0)), self.max_k)
        scores, rows = self.search_rows(queries, width, per_query=True)
        values, kept_rows = _masked_top_k(scores, rows, _is_excluded(rows, excluded), k, pad=-1)
        kept = self.rows.to_ids(kept_rows)
        if self.rows.exact is None:
            return values, kept
        # Rows that an exact search would fill further: the approximate pass ran out (leaves
        # too small, reordering budget used up by excluded ids).
        filled = tf.reduce_sum(tf.cast(kept_rows >= 0, tf.int32), -1)
        needed = tf.minimum(k, self.num_candidates - n_excluded)
        short = filled < needed
        return tf.cond(tf.reduce_any(short),
                       lambda: self._exact_fill(queries, excluded, short, values, kept, k),
                       lambda: (values, kept))

    def _exact_fill(self, queries, excluded, short, values, kept, k):
        where = tf.where(short)  # [S, 1]
        q = tf.gather_nd(queries, where)
        ex = tf.gather_nd(excluded, where)  # [S, W + 1] sorted rows
        scores = tf.matmul(q, self.rows.exact, transpose_b=True)  # [S, n]
        rows = tf.broadcast_to(tf.range(tf.shape(scores)[1], dtype=tf.int64)[None, :],
                               tf.shape(scores))
        scores = tf.where(_is_excluded(rows, ex), tf.constant(-np.inf, scores.dtype), scores)
        # ties: lower row, i.e. id order. A catalogue smaller than k fills what it has and
        # pads the rest (-inf scores become PAD_ID below).
        top = min(int(k), int(self.num_candidates))
        v, positions = tf.math.top_k(scores, k=top)
        if top < k:
            v = tf.pad(v, [[0, 0], [0, k - top]], constant_values=-np.inf)
            positions = tf.pad(positions, [[0, 0], [0, k - top]])
        i = tf.where(tf.math.is_inf(v) & (v < 0), tf.constant(PAD_ID),
                     tf.gather(self.rows.ids, positions))
        return (tf.tensor_scatter_nd_update(values, where, v),
                tf.tensor_scatter_nd_update(kept, where, i))

    def serving_embeddings(self, query_model: Any, features: Mapping[str, tf.Tensor]
                           ) -> tf.Tensor:
        """Query embeddings as the exports compute them for this index.

        ScaNN's candidate selection (leaves, int8 lookup tables, reordering cut) is
        discontinuous: a last-bit change of a query vector, which a batched matmul makes
        depending on the batch size, can swap an item of the top 10. For a ScaNN index the
        tower therefore runs one row at a time, so a user's answer is bit-identical alone or
        batched with anyone. BruteForce is exact and embeds the batch at once.
        """
        if self.kind != "scann":
            return query_model(features)
        names = list(features)

        def one(row):
            return query_model({n: row[i][None] for i, n in enumerate(names)})[0]

        vectors = tf.map_fn(one, [features[n] for n in names],
                            fn_output_signature=tf.TensorSpec([self.embedding_dim], tf.float32))
        return tf.ensure_shape(vectors, [None, self.embedding_dim])

    def embed_queries(self, features: Mapping[str, Any]) -> tf.Tensor:
        if self.query_model is None:
            raise ValueError(
                "This index was built without a query_model; pass query embeddings to "
                "`search` or rebuild with build_index(..., query_model=tower)."
            )
        tensors = {name: tf.convert_to_tensor(value) for name, value in features.items()}
        return check_query_embeddings(self.query_model(tensors), self.embedding_dim)

    def search(self, query_embeddings: Any, k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k for pre-computed query embeddings: (scores [B, k], ids [B, k] str)."""
        k = self.check_query_k(self.k if k is None else k)
        queries = check_query_embeddings(query_embeddings, self.embedding_dim)
        empty = tf.zeros(tf.stack([tf.shape(queries)[0], 0]), tf.string)
        scores, ids = self._serving_search(queries, empty, k)
        return scores.numpy(), _decode(ids.numpy())

    def _serving_search(self, queries: tf.Tensor, exclude: tf.Tensor, k: int):
        """`search_excluding` as the exports run it (ScaNN one query at a time), compiled once
        per k so in-process evaluation, tuning and serving compute the same answers."""
        if k not in self._served:
            self._served[k] = tf.function(
                lambda q, e: self.search_excluding(q, e, k),
                input_signature=[tf.TensorSpec([None, self.embedding_dim], tf.float32),
                                 tf.TensorSpec([None, None], tf.string)])
        return self._served[k](queries, exclude)

    def query(self, features: Mapping[str, Any], k: int | None = None):
        """Top-k for raw query features, through the query tower."""
        return self.search(self.embed_queries(features), k)

    def search_with_exclusions(
        self, query_embeddings: Any, exclude_ids: Any, k: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k that never contains an id of the query's row of `exclude_ids` ([B, W])."""
        k = self.check_query_k(self.k if k is None else k)
        exclude = to_string_tensor(exclude_ids)
        if exclude.shape.rank != 2:
            raise ValueError(f"exclude_ids must be [batch, width], got shape {exclude.shape}.")
        queries = check_query_embeddings(query_embeddings, self.embedding_dim)
        scores, ids = self._serving_search(queries, exclude, k)
        return scores.numpy(), _decode(ids.numpy())


def check_query_embeddings(queries: Any, dim: int) -> tf.Tensor:
    """Returns queries as a float32 [B, dim] tensor or raises with the mismatch spelled out."""
    tensor = tf.convert_to_tensor(queries)
    if tensor.shape.rank != 2 or tensor.shape[-1] != dim:
        raise ValueError(
            f"Query embeddings must be [batch, {dim}] to match the candidate embeddings, got "
            f"shape {tensor.shape}; the query and candidate towers must share an output dim."
        )
    if tensor.dtype != tf.float32:
        if tensor.dtype in (tf.float16, tf.float64, tf.bfloat16) and not isinstance(
            queries, (tf.Tensor, tf.Variable)
        ):
            return tf.cast(tensor, tf.float32)
        raise TypeError(
            f"Query embeddings are {tensor.dtype.name} but candidate embeddings are float32; "
            "make the query tower output float32 (e.g. a final layer with dtype='float32' "
            "under mixed precision)."
        )
    return tensor


def to_string_tensor(values: Any) -> tf.Tensor:
    """Converts nested lists/arrays of str or bytes (or a string tensor) to a tf.string tensor."""
    if isinstance(values, tf.Tensor):
        return values
    arr = np.asarray(values, dtype=object)
    flat = [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in arr.ravel().tolist()]
    return tf.constant(np.asarray(flat, dtype=str).reshape(arr.shape), dtype=tf.string)


def _decode(ids: np.ndarray) -> np.ndarray:
    return np.vectorize(lambda b: b.decode("utf-8"), otypes=[object])(ids).astype(str)


def _check_query_model_output(query_model: Any, dim: int) -> None:
    """Checks a functional tower's declared output against the candidates, when it declares one."""
    try:
        shape = tf.TensorShape(query_model.output_shape)
        dtype = tf.as_dtype(query_model.outputs[0].dtype)
    except (AttributeError, ValueError, TypeError, IndexError):
        return  # subclassed towers declare nothing; checked at the first query instead
    if shape.rank != 2 or shape[-1] != dim:
        raise ValueError(
            f"query_model outputs shape {shape} but candidate embeddings have dim {dim}; the "
            "query and candidate towers must share an output dim."
        )
    if dtype != tf.float32:
        raise TypeError(f"query_model outputs {dtype.name}; candidate embeddings are float32.")


def build_index(
    kind: str,
    query_model: Any,
    candidate_ids: Sequence[str] | np.ndarray,
    candidate_embeddings: Any,
    k: int = 10,
    scann_params: ScannParams | None = None,
) -> RetrievalIndex:
    """Validates the candidates and builds a top-k index over them.

    Args:
        kind: "bruteforce" (exact reference) or "scann" (approximate, fast).
        query_model: tower mapping raw query features to [B, d] float32, or None to query
            with embeddings only.
        candidate_ids: n unique, non-empty string ids.
        candidate_embeddings: [n, d] float array aligned with `candidate_ids`.
        k: default number of results; must not exceed n.
        scann_params: ScaNN settings (see `tune_scann`); defaults to `ScannParams()` capped
            at n, with a reordering budget of at least k. Ignored for brute force.

    Returns:
        A `RetrievalIndex` whose candidates are sorted by id (so exact ties break by id).
    """
    if kind not in INDEX_KINDS:
        raise ValueError(f"Unknown index kind {kind!r}; choose one of {INDEX_KINDS}.")
    ids = normalize_ids(candidate_ids, "candidate_ids")
    embeddings = check_embeddings(candidate_embeddings, "candidate_embeddings", len(ids))
    if len(ids) == 0:
        raise ValueError("No candidates to index: candidate_ids is empty.")
    check_unique_ids(ids, "candidate_ids")
    k = check_k(k, len(ids))
    if query_model is not None:
        _check_query_model_output(query_model, embeddings.shape[1])

    order = np.argsort(ids, kind="stable")
    ids, embeddings = ids[order], np.ascontiguousarray(embeddings[order])

    params = None
    if kind == "bruteforce":
        layer = tfrs.layers.factorized_top_k.BruteForce(k=k)
    else:
        params = scann_params or ScannParams(
            num_leaves=min(ScannParams.num_leaves, len(ids)),
            num_leaves_to_search=min(ScannParams.num_leaves_to_search, len(ids)),
            num_reordering_candidates=min(len(ids), max(100, k)),
        )
        _check_scann_params(params, len(ids), embeddings.shape[1], k)
        layer = tfrs.layers.factorized_top_k.ScaNN(
            k=k,
            distance_measure="dot_product",
            num_leaves=params.num_leaves,
            num_leaves_to_search=params.num_leaves_to_search,
            training_iterations=params.training_iterations,
            dimensions_per_block=params.dimensions_per_block,
            num_reordering_candidates=params.num_reordering_candidates,
            parallelize_batch_searches=params.parallelize_batch_searches,
        )
    start = time.perf_counter()
    # Rows as identifiers: searches return catalogue rows (see CatalogRows).
    layer.index(tf.constant(embeddings), tf.range(len(ids), dtype=tf.int64))
    build_seconds = time.perf_counter() - start
    rows = CatalogRows(ids, embeddings if kind == "scann" else None)
    index = RetrievalIndex(kind, layer, query_model, ids, embeddings, k, params, build_seconds,
                           rows)
    # A TFRS index layer must be called once before it can be saved; doing it here also
    # surfaces ScaNN failures at build time rather than at export.
    index.search_tensors(tf.zeros([1, embeddings.shape[1]], tf.float32), k)
    return index
