"""Top-k recommendations for one user from an exported retrieval model, plus the TF Serving call.

  python -m pipelines.recommend --user-id 42 --dataset ml-100k
  python -m pipelines.recommend --export saved_models/retrieval_scann --user-id u1 --history i3,i7

Loads the newest version of the export (or the version folder given) the way a server would:
`tf.saved_model.load`, importing `scann` only when the export's metadata says it holds ScaNN
ops. The user's history is either given (`--history`, most recent last) or read from the P1
train part of `--dataset` (the same split the model was trained on). Items the user has already
seen are excluded through the `recommend_with_exclusions` signature (its width W is fixed at
export; when the user has seen more than W items the most recent W are excluded and any older
seen item in the answer is flagged). It then prints the REST body and the `curl` line that ask
TF Serving for the same answer.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from recommenders_tf.config import load_config, write_json
from recommenders_tf.serving.client import (build_rest_request, load_export,
                                            rest_predict_url)


@dataclasses.dataclass
class RecommendConfig:
    """Settings of the recommend step.

    Args:
        export: a model folder (its newest integer version is used) or a version folder.
        user_id: the user to recommend for.
        history: the user's item ids, most recent last; when empty, read from `dataset`.
        dataset: `load_dataset` spec whose train part holds the user's history.
        protocol: split whose train part is read ("P1").
        split_seed: split seed.
        history_len: most recent history items sent with the request; 0 takes the export's
            `query_history_len` metadata (written by pipelines.build_index), else 20.
        exclude_seen: exclude the items the user has seen (via `recommend_with_exclusions`).
        host: TF Serving host for the printed REST URL.
        port: TF Serving REST port.
        output_json: also write the results to this file.
    """

    export: str = "saved_models/retrieval_bruteforce"
    user_id: str = ""
    history: Tuple[str, ...] = ()
    dataset: str = ""
    protocol: str = "P1"
    split_seed: int = 0
    history_len: int = 0
    exclude_seen: bool = True
    host: str = "localhost"
    port: int = 8501
    output_json: str = ""


def user_history_from_dataset(config: RecommendConfig) -> Tuple[List[str], Dict[str, str], str]:
    """(the user's train items oldest first, item id -> title, a note) from `config.dataset`."""
    from recommenders_tf.data import load_dataset, split_for_protocol

    data = load_dataset(config.dataset)
    train = split_for_protocol(config.protocol, data, seed=config.split_seed).train
    rows = train[train["user_id"] == config.user_id]
    # Same order as the data layer's histories: by time, ties by item id.
    items = rows.sort_values(["timestamp", "item_id"], kind="stable")["item_id"].tolist()
    titles = {}
    if data.items is not None and "title" in data.items.columns:
        # Loaders without an items file use the id as the title: nothing to show then.
        titles = {i: t for i, t in zip(data.items["item_id"].astype(str),
                                       data.items["title"].astype(str)) if t and t != i}
    note = (f"{len(items)} train interactions in {data.name} ({config.protocol}, seed "
            f"{config.split_seed})" if items else
            f"user {config.user_id!r} has no train interactions in {data.name}: cold user, "
            "empty history")
    return items, titles, note


def main(config: RecommendConfig) -> Dict[str, Any]:
    if not config.user_id:
        raise ValueError("Pass --user-id.")
    start = time.perf_counter()
    model = load_export(config.export)
    meta = model.metadata
    load_seconds = time.perf_counter() - start
    print(f"Loaded {model.path} ({meta['index_type']}, {meta['num_candidates']} candidates, "
          f"k={meta['k']}, exclusion width {meta['exclusion_width']}) in {load_seconds:.1f}s")

    titles: Dict[str, str] = {}
    if config.history:
        seen = [str(h) for h in config.history]
        history_note = "history given on the command line"
    elif config.dataset:
        seen, titles, history_note = user_history_from_dataset(config)
    else:
        seen, history_note = [], "no history given and no dataset: empty history"
    history_len = config.history_len or int(meta.get("query_history_len") or 20)
    history = seen[-history_len:]
    width = int(meta["exclusion_width"])
    excluded: Optional[List[str]] = None
    notes = [history_note]
    if config.exclude_seen:
        # `seen` is oldest first: keep each item's latest position, then the last W.
        latest_first = list(dict.fromkeys(reversed(seen)))
        excluded = latest_first[:width][::-1] if width else []
        if len(set(seen)) > width:
            notes.append(f"the user has seen {len(set(seen))} items but the export excludes at "
                         f"most {width}; the most recent {width} are excluded")

    out = model([config.user_id], [history],
                exclude_item_ids=[excluded] if excluded is not None else None)
    seen_set = set(seen)
    recommendations = []
    for rank, (item, score) in enumerate(zip(out["item_ids"][0].tolist(),
                                             out["scores"][0].tolist()), start=1):
        if item == meta.get("pad_item_id", ""):
            continue  # fewer candidates than k were left
        recommendations.append({"rank": rank, "item_id": item, "score": float(score),
                                "title": titles.get(item, ""), "seen": item in seen_set})

    body = build_rest_request(config.user_id, history, exclude_item_ids=excluded,
                              exclusion_width=width if excluded is not None else None)
    url = rest_predict_url(meta["model_name"], config.host, config.port)
    curl = (f"curl -s -X POST -H 'Content-Type: application/json' "
            f"-d {shlex.quote(json.dumps(body))} {url}")

    print(f"\nUser {config.user_id}: {'; '.join(notes)}.")
    print(f"Recent history ({len(history)} sent, most recent last): "
          + (", ".join(f"{h}" + (f" ({titles[h]})" if h in titles else "") for h in history)
             or "(none)"))
    signature = "recommend_with_exclusions" if excluded is not None else "serving_default"
    print(f"\nTop {len(recommendations)} via {signature}:")
    for rec in recommendations:
        flag = "  [seen, older than the exclusion window]" if rec["seen"] else ""
        title = f"  {rec['title']}" if rec["title"] else ""
        print(f"{rec['rank']:>4}  {rec['item_id']:<16} {rec['score']:9.4f}{title}{flag}")
    print(f"\nTF Serving REST request (POST {url}):")
    print(json.dumps(body))
    print("\n" + curl)

    results = {
        "export": str(model.path), "model_name": meta["model_name"],
        "index_type": meta["index_type"], "user_id": config.user_id, "history": history,
        "excluded": excluded, "signature": signature, "recommendations": recommendations,
        "rest_url": url, "rest_body": body, "curl": curl, "notes": notes,
        "load_seconds": round(load_seconds, 3), "scann_imported": "scann" in sys.modules,
    }
    if config.output_json:
        write_json(Path(config.output_json), results)
    return results


def parse_args(argv=None) -> RecommendConfig:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="YAML file with RecommendConfig fields")
    parser.add_argument("--export", help="model folder or version folder")
    parser.add_argument("--user-id")
    parser.add_argument("--history", help="comma-separated item ids, most recent last")
    parser.add_argument("--dataset", help="dataset spec to read the user's history from")
    parser.add_argument("--no-exclude-seen", action="store_true",
                        help="use serving_default (seen items may come back)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    overrides = list(args.set)
    for key in ("export", "user_id", "dataset"):
        if getattr(args, key):
            # Quoted, so ids like "007" or "yes" stay strings through the YAML override parser.
            overrides.append(f"{key}={json.dumps(getattr(args, key))}")
    if args.history:
        overrides.append(f"history={json.dumps([h for h in args.history.split(',') if h])}")
    if args.no_exclude_seen:
        overrides.append("exclude_seen=false")
    return load_config(RecommendConfig, args.config, overrides)


if __name__ == "__main__":
    main(parse_args())
