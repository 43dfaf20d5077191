"""The serving contract: what every export answers to and what every client sends.

Exports (retrieval, ranking, the cascade), the clients, the warmup files, the server configs
and the local test server all take their names from this module, so a renamed signature or
input cannot drift between the side that writes a model and the side that calls it.

What a client sends. Every input is a batch of strings, one row per user (B users):

* `user_id`: string [B].
* `history`: string [B, N], the user's item ids oldest first, most recent last.
* `exclude_item_ids`: string [B, W] (only `recommend_with_exclusions`), ids that must not come
  back; any width W, ids outside the catalogue are ignored.
* `item_ids`: string [B, S] (ranking only), the candidates to score.

Signatures: `serving_default(user_id, history)` returns the top k as `item_ids` [B, k] and
`scores` [B, k]; `recommend_with_exclusions(user_id, history, exclude_item_ids)` returns the
same outputs without the excluded ids; a ranking export's `serving_default(user_id, history,
item_ids)` returns `scores` [B, S]. An empty `signature_name` means `serving_default`, as in
TF Serving.

How padding is read. Rows of one batch share a width, so shorter rows are padded with `PAD`
(""). Real ids may be padded with "" anywhere (left, right, between ids): the graph moves the
real ids of a `history` row to the end, keeping their order, before reading it, so the most
recent id is always last and a user gets the same answer alone or batched with a longer
history. "" in `exclude_item_ids` excludes nothing; "" in a ranking `item_ids` row scores
-inf; an output slot holding "" (score -inf) is empty. The clients pad on the left, which keeps
a request readable the way the model reads it.

Layout of a version directory: `metadata.json` beside `saved_model.pb` and in `assets.extra/`,
with the warmup records TF Serving replays at load in `assets.extra/tf_serving_warmup_requests`.
Model names (and version labels) are one path component of letters, digits, "_", "." and "-".

Nothing here imports TensorFlow: the REST helpers use these names without loading it;
`tensor_spec` imports it when a signature is being built.
"""
from __future__ import annotations

import re
from typing import Any

# ---- signatures -----------------------------------------------------------------------------

SERVING_DEFAULT = "serving_default"  # TF Serving's default signature key
WITH_EXCLUSIONS = "recommend_with_exclusions"
SIGNATURE_NAMES = (SERVING_DEFAULT, WITH_EXCLUSIONS)
# SavedModel entries such as __saved_model_init_op are not serving signatures.
INTERNAL_SIGNATURE_PREFIX = "__"

# ---- inputs ---------------------------------------------------------------------------------

USER_ID = "user_id"
HISTORY = "history"
EXCLUDE_INPUT = "exclude_item_ids"
ITEM_IDS = "item_ids"  # ranking input (candidates) and retrieval output (the top k)
HISTORY_RATING = "history_rating"  # float32, the user's rating of each history item

# Shapes of the inputs whose spec is fixed, all tf.string; None is any size.
INPUT_SHAPES: dict[str, tuple[None, ...]] = {
    USER_ID: (None,),
    HISTORY: (None, None),
    EXCLUDE_INPUT: (None, None),
    ITEM_IDS: (None, None),
    HISTORY_RATING: (None, None),
}
# Inputs that are not tf.string.
INPUT_DTYPES = {HISTORY_RATING: "float32"}
RETRIEVAL_INPUTS = (USER_ID, HISTORY)
EXCLUSION_INPUTS = (USER_ID, HISTORY, EXCLUDE_INPUT)
RANKING_INPUTS = (USER_ID, HISTORY, ITEM_IDS)
# A rating model that reads what the user thought of their history (`RatingContext`).
RATED_RANKING_INPUTS = (USER_ID, HISTORY, HISTORY_RATING, ITEM_IDS)
# Inputs whose order carries meaning (recency, most recent last): compacted in the graph so
# the answer is the same wherever a client puts the padding.
ORDERED_ID_LISTS = (HISTORY,)

# ---- outputs --------------------------------------------------------------------------------

SCORES = "scores"
RETRIEVAL_OUTPUTS = (ITEM_IDS, SCORES)
RANKING_OUTPUTS = (SCORES,)

# ---- padding and order ----------------------------------------------------------------------

PAD = ""
ID_ORDER_NOTE = ("history: item ids oldest first, most recent last; \"\" entries are padding "
                 "and may sit anywhere (left, right or between ids): the graph moves the real "
                 "ids to the end, keeping their order, before reading them.")
RATING_NOTE = ("history_rating: float32, the same shape as history, the user's rating of the "
               "history id at the same position; values at padding positions are ignored.")
EXCLUSION_NOTE = ("exclude_item_ids: [B, W] with any width W (pad rows with \"\"); ids outside "
                  "the catalogue are ignored; k real items are returned whenever the catalogue "
                  "minus the excluded ids holds k.")

# ---- files and metadata ---------------------------------------------------------------------

METADATA_FILE = "metadata.json"
ASSETS_EXTRA = "assets.extra"
WARMUP_FILE = "tf_serving_warmup_requests"
META_PAD_ITEM_ID = "pad_item_id"
META_INPUT_ORDER = "input_order"
# Set by the local test server only (REST header, gRPC trailing metadata); TF Serving does
# not send it, so clients treat it as optional.
MODEL_SECONDS_HEADER = "x-model-seconds"

# ---- model names ----------------------------------------------------------------------------

MODEL_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def is_valid_model_name(name: Any) -> bool:
    """Whether `name` can be a model name or version label (one path component)."""
    return isinstance(name, str) and MODEL_NAME_PATTERN.fullmatch(name) is not None


def check_model_name(name: Any) -> str:
    """`name` if it is a valid model name.

    Raises:
        ValueError: naming the rule it breaks.
    """
    if not is_valid_model_name(name):
        raise ValueError(f"Model name {name!r} must be one path component of letters, digits, "
                         "'_', '.', '-'.")
    return name


# ---- specs and metadata entries ---------------------------------------------------------------


def tensor_spec(name: str):
    """The `tf.TensorSpec` of a fixed input, named so that the name becomes the request key.

    Raises:
        KeyError: `name` is not one of `INPUT_SHAPES`.
    """
    import tensorflow as tf

    return tf.TensorSpec(list(INPUT_SHAPES[name]), INPUT_DTYPES.get(name, tf.string), name=name)


def tensor_specs(names=RETRIEVAL_INPUTS) -> dict:
    """{name: `tensor_spec(name)`} in the given order."""
    return {name: tensor_spec(name) for name in names}


def input_order_metadata(with_exclusions: bool, rated: bool = False) -> dict[str, Any]:
    """The metadata entries telling a client how padding and order are read."""
    order = {HISTORY: ID_ORDER_NOTE}
    if rated:
        order[HISTORY_RATING] = RATING_NOTE
    if with_exclusions:
        order[EXCLUDE_INPUT] = EXCLUSION_NOTE
    return {META_PAD_ITEM_ID: PAD, META_INPUT_ORDER: order}
