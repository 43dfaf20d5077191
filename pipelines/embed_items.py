"""Pipeline step: encode every catalog item's text with the pretrained language model, and build
user profile vectors from the train split.

    python -m pipelines.embed_items --dataset synthetic-tiny
    python -m pipelines.embed_items --dataset ml-100k --set batch_size=128 --set text_fields=text
    python -m pipelines.embed_items --config configs/embed.yaml --set out_dir=runs/x

Writes to `out_dir` (default `runs/embed_items/<dataset name>`)::

    item_vectors/        ItemVectors store: every catalog item, cold ones included (P3 needs them)
    user_profiles/       UserVectors store: profile of every user from the TRAIN split only
    split_manifest.json  counts and sha256 of the split the profiles and the text come from
    config.yaml          the resolved config
    metrics.json         counts, cache hits/misses, model load time, encoding throughput
    summary.md           the same in a few lines

Vectors go through the on-disk text cache (`cache_dir`), so a re-run with the same model and
texts encodes nothing.
"""
from __future__ import annotations

import dataclasses
import logging
import sys
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np

import recommenders_tf  # noqa: F401  (selects tf-keras before anything imports TensorFlow)
from recommenders_tf import cli
from recommenders_tf.data import items_for_train, load_dataset, split_for_protocol
from recommenders_tf.data.schema import ITEM_ID, USER_ID
from recommenders_tf.features.item_encoding import encode_item_texts
from recommenders_tf.features.profiles import WEIGHTINGS, build_user_profiles
from recommenders_tf.features.text_encoder import DEFAULT_MODEL
from recommenders_tf.runs import default_run_dir, record_run

logger = logging.getLogger(__name__)

PROFILE_PROTOCOLS = ("P1", "P3", "P4")


@dataclasses.dataclass
class EmbedItemsConfig:
    """Settings of the embed_items step.

    Args:
        dataset: `load_dataset` spec ("synthetic", "synthetic-tiny", "ml-100k", "dir:<path>",
            "file:<path>,items=<path>", ...).
        text_fields: item columns joined (". ") into the encoded text; the "text" column holds
            title + genres (+ description), and the tags the split's train part allows.
        model: "all-MiniLM-L6-v2" (bundled), a local BERT-family folder or "hf://org/name".
        batch_size: texts per forward pass.
        max_length: tokens per text, [CLS]/[SEP] included.
        cache_dir: root of the text-vector cache shared by runs.
        out_dir: output folder; default `runs/embed_items/<dataset name>`.
        split_protocol: the split whose TRAIN part builds the profiles and decides which user
            tags the item text may carry (`data.side_info.items_for_train`) ("P1"; "P3" keeps the
            held-out items out of them; "P4" is P1).
        profile_weighting: "mean" or "rating" (see `features.profiles`).
        seed: split seed.
        progress: show a progress bar while encoding.
    """

    dataset: str = "synthetic"
    text_fields: Tuple[str, ...] = ("text",)
    model: str = DEFAULT_MODEL
    batch_size: int = 64
    max_length: int = 128
    cache_dir: str = "runs/text_cache"
    out_dir: Optional[str] = None
    split_protocol: str = "P1"
    profile_weighting: str = "mean"
    seed: int = 0
    progress: bool = True

    def validate(self) -> None:
        if self.split_protocol.upper() not in PROFILE_PROTOCOLS:
            raise ValueError(f"split_protocol must be one of {PROFILE_PROTOCOLS}, got "
                             f"{self.split_protocol!r}")
        if self.profile_weighting not in WEIGHTINGS:
            raise ValueError(f"profile_weighting must be one of {WEIGHTINGS}, got "
                             f"{self.profile_weighting!r}")
        if not self.text_fields:
            raise ValueError("text_fields must name at least one item column")


def _all_users(data) -> np.ndarray:
    users = set(data.interactions[USER_ID].astype(str))
    if data.users is not None and USER_ID in data.users.columns:
        users.update(data.users[USER_ID].astype(str))
    return np.sort(np.asarray(list(users), dtype=str)).astype(object)


def main(config: EmbedItemsConfig) -> Dict[str, Any]:
    """Runs the step; returns the output paths and the metrics written to metrics.json."""
    config.validate()
    data = load_dataset(config.dataset)
    if data.items is None:
        raise ValueError(f"{config.dataset}: the dataset has no items table, so there is no item "
                         "text to encode (give the loader an items file)")
    out_dir = Path(config.out_dir or default_run_dir("embed_items", data.name))
    resolved = dataclasses.replace(config, out_dir=str(out_dir),
                                   split_protocol=config.split_protocol.upper())

    split = split_for_protocol(resolved.split_protocol, data, seed=config.seed)
    manifest = split.manifest()
    split_facts = {"protocol": split.protocol, "seed": split.seed, "part": "train",
                   "train_rows": manifest["parts"]["train"]["rows"],
                   "train_sha256": manifest["parts"]["train"]["sha256"]}
    # Tags users wrote are train information only: the text is that of this split's train.
    items = items_for_train(data, split.train)
    encoded = encode_item_texts(
        items, model=config.model, max_length=config.max_length, batch_size=config.batch_size,
        cache_dir=config.cache_dir, text_fields=config.text_fields, progress=config.progress,
        source=f"{data.name} items",
        extra={"dataset": data.name, "dataset_spec": config.dataset, "text_split": split_facts})
    items_store, encoder, facts = encoded.vectors, encoded.encoder, encoded.facts
    ids = items_store.ids
    without_text = sorted(set(data.interactions[ITEM_ID].astype(str)) - set(map(str, ids)))
    items_path = items_store.save(out_dir / "item_vectors")

    profiles = build_user_profiles(split.train, items_store, users=_all_users(data),
                                   weighting=config.profile_weighting)
    split.write_manifest(out_dir)
    users_path = profiles.to_store(items_store, extra={"dataset": data.name, "split": split_facts}
                                   ).save(out_dir / "user_profiles")

    metrics = {
        "dataset": data.name,
        "model": encoder.name,
        "fingerprint": encoder.fingerprint,
        "dim": encoder.dim,
        **facts,
        "interaction_items_without_text": len(without_text),
        "batch_size": config.batch_size,
        "max_length": config.max_length,
        "users": len(profiles.user_ids),
        "users_without_train_items": profiles.n_empty,
        "missing_item_pairs": profiles.missing_item_pairs,
        "profile_weighting": config.profile_weighting,
        "split": split_facts,
    }
    summary = [
        f"Dataset `{data.name}` (`{config.dataset}`), model `{encoder.name}` "
        f"({encoder.dim}-d, fingerprint {encoder.fingerprint[:12]}).",
        "",
        f"- items encoded: {len(ids)} ({facts['cache_hits']} cache hits, "
        f"{facts['cache_misses']} misses, {facts['encoded']} distinct texts run through the "
        "model)",
        f"- model load {facts['model_load_seconds']:.1f} s; encoding "
        f"{facts['encode_seconds']:.2f} s "
        f"({metrics['items_per_second']} items/s, {metrics['encoded_per_second']} encoded/s)",
        f"- user profiles: {len(profiles.user_ids)} users from the {split.protocol} train split "
        f"({profiles.n_empty} without train items, zero vectors)",
        f"- items in interactions without text: {len(without_text)}; empty texts: "
        f"{facts['empty_texts']}",
    ]
    record_run(out_dir, resolved, metrics, summary)
    return {"out_dir": str(out_dir), "item_vectors": str(items_path),
            "user_profiles": str(users_path), "metrics": metrics}


def parse_args(argv: Optional[Sequence[str]] = None) -> EmbedItemsConfig:
    parser = cli.config_parser(__doc__.split("\n\n")[0], EmbedItemsConfig, dataset=True,
                               prog="python -m pipelines.embed_items")
    return cli.parse_config(EmbedItemsConfig, parser, argv)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    result = cli.run(main, parse_args)
    m = result["metrics"]
    print(f"wrote {result['item_vectors']} ({m['items']} items, {m['dim']}-d) and "
          f"{result['user_profiles']} ({m['users']} users)")
    print(f"cache: {m['cache_hits']} hits, {m['cache_misses']} misses; "
          f"{m['items_per_second']} items/s, {m['encoded_per_second']} encoded/s")
    sys.exit(0)
