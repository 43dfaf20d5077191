"""Top-k recommendations for one user from an exported model, plus the TF Serving call.

  python -m pipelines.recommend --user-id 42 --k 10          # the whole cascade (run_all's export)
  python -m pipelines.recommend --export saved_models/retrieval_scann --user-id u1 --history i3,i7

With a cascade export (`saved_models/recommender`, the default when it exists) it prints the
final top k with titles, the final (re-ranker) scores and each item's rank after retrieval,
ranking and re-ranking; an unknown user gets the export's fallback (popular items, blended with
the text profile of a given history). The dataset the history and titles come from defaults to
the one the cascade was trained on (its metadata).

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

import dataclasses
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from recommenders_tf import cli
from recommenders_tf.config import write_json
from recommenders_tf.serving.client import (build_rest_request, load_export,
                                            load_savedmodel, rest_predict_url)
from recommenders_tf.serving.contract import (EXCLUDE_INPUT, HISTORY, PAD, SERVING_DEFAULT,
                                              USER_ID, WITH_EXCLUSIONS)


@dataclasses.dataclass
class RecommendConfig:
    """Settings of the recommend step.

    Args:
        export: a model folder (its newest integer version is used) or a version folder;
            default saved_models/recommender if it exists, else
            saved_models/retrieval_bruteforce.
        user_id: the user to recommend for.
        k: recommendations to print (0: all the export returns).
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

    export: str = ""
    user_id: str = ""
    k: int = 0
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


DEFAULT_EXPORTS = ("saved_models/recommender", "saved_models/recommender_bruteforce",
                   "saved_models/retrieval_bruteforce")


def _default_export() -> str:
    for candidate in DEFAULT_EXPORTS:
        if Path(candidate).is_dir():
            return candidate
    raise FileNotFoundError("no export found at " + ", ".join(DEFAULT_EXPORTS) + "; run "
                            "`python -m pipelines.run_all` first or pass --export")


def recommend_cascade(config: RecommendConfig, version_dir: Path, meta: Dict[str, Any]
                      ) -> Dict[str, Any]:
    """The cascade export's answer for one user, printed as a table."""
    import recommenders_tf  # noqa: F401
    import tensorflow as tf

    start = time.perf_counter()
    loaded, _, _ = load_savedmodel(version_dir)
    load_seconds = time.perf_counter() - start
    dataset = config.dataset or meta.get("dataset", "")
    titles: Dict[str, str] = {}
    if config.history:
        seen, note = [str(h) for h in config.history], "history given on the command line"
    elif dataset:
        seen, titles, note = user_history_from_dataset(
            dataclasses.replace(config, dataset=dataset))
    else:
        seen, note = [], "no history given and no dataset: empty history"
    width = config.history_len or int(meta.get("history_len") or 50)
    history = seen[-width:]
    excluded = list(dict.fromkeys(seen)) if config.exclude_seen else []
    start = time.perf_counter()
    out = loaded.signatures[WITH_EXCLUSIONS](**{
        USER_ID: tf.constant([config.user_id]),
        HISTORY: tf.constant([history or [PAD]]),
        EXCLUDE_INPUT: tf.constant([excluded or [PAD]])})
    latency_ms = (time.perf_counter() - start) * 1000
    k = config.k or int(meta["k"])
    if k > int(meta["k"]):
        raise ValueError(f"--k {k} exceeds the export's k={meta['k']}; export with a larger k")
    source = out["source"].numpy()[0].decode()
    rows = []
    for rank in range(k):
        item = out["item_ids"].numpy()[0][rank].decode()
        if not item:
            continue
        rows.append({"rank": rank + 1, "item_id": item, "title": titles.get(item, ""),
                     "score": float(out["scores"].numpy()[0][rank]),
                     "retrieval_rank": int(out["retrieval_rank"].numpy()[0][rank]),
                     "ranking_rank": int(out["ranking_rank"].numpy()[0][rank]),
                     "rerank_rank": int(out["rerank_rank"].numpy()[0][rank])})
    print(f"Loaded {version_dir} (cascade, {meta['index_type']} retrieval, "
          f"{meta['num_candidates']} candidates) in {load_seconds:.1f}s; one call "
          f"{latency_ms:.0f} ms")
    print(f"\nUser {config.user_id}: {note}; {len(excluded)} seen items excluded; "
          f"answered by the {source}"
          + (" (unknown user: popular items blended with the history's text profile)"
             if source == "fallback" else "") + ".")
    print(f"\n{'rank':>4}  {'item':<10} {'score':>9}  {'retr':>4} {'rank':>4} {'rerk':>4}  title")
    for r in rows:
        print(f"{r['rank']:>4}  {r['item_id']:<10} {r['score']:9.4f}  {r['retrieval_rank']:>4} "
              f"{r['ranking_rank']:>4} {r['rerank_rank']:>4}  {r['title']}")
    print("(retr / rank / rerk: the item's rank after retrieval, ranking and re-ranking; "
          "0 = fallback)")
    name = meta.get("model_name", version_dir.parent.name)
    body = {"signature_name": WITH_EXCLUSIONS,
            "instances": [{USER_ID: config.user_id, HISTORY: history or [PAD],
                           EXCLUDE_INPUT: excluded or [PAD]}]}
    url = rest_predict_url(name, config.host, config.port)
    print(f"\nTF Serving REST request (POST {url}):")
    print(json.dumps(body))
    results = {"export": str(version_dir), "kind": "cascade", "user_id": config.user_id,
               "source": source, "history": history, "excluded": len(excluded),
               "recommendations": rows, "rest_url": url, "rest_body": body,
               "load_seconds": round(load_seconds, 3), "latency_ms": round(latency_ms, 1)}
    if config.output_json:
        write_json(Path(config.output_json), results)
    return results


def main(config: RecommendConfig) -> Dict[str, Any]:
    if not config.user_id:
        raise ValueError("Pass --user-id.")
    from recommenders_tf.serving.client import read_metadata, resolve_version_dir

    if not config.export:
        config = dataclasses.replace(config, export=_default_export())
    version_dir = resolve_version_dir(config.export)
    meta = read_metadata(version_dir)
    if meta.get("kind") == "cascade":
        return recommend_cascade(config, version_dir, meta)
    start = time.perf_counter()
    model = load_export(config.export)
    meta = model.metadata
    load_seconds = time.perf_counter() - start
    print(f"Loaded {model.path} ({meta['index_type']}, {meta['num_candidates']} candidates, "
          f"k={meta['k']}, exclusion width {meta.get('exclusion_width') or 'any'}) in "
          f"{load_seconds:.1f}s")

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
    # Current exports take any exclusion width; older ones declare a fixed W.
    width = meta.get("exclusion_width")
    excluded: Optional[List[str]] = None
    notes = [history_note]
    if config.exclude_seen:
        # `seen` is oldest first: keep each item's latest position, then the last W.
        latest_first = list(dict.fromkeys(reversed(seen)))
        excluded = (latest_first if width is None else latest_first[:width])[::-1]
        if width is not None and len(set(seen)) > width:
            notes.append(f"the user has seen {len(set(seen))} items but the export excludes at "
                         f"most {width}; the most recent {width} are excluded")

    out = model([config.user_id], [history],
                exclude_item_ids=[excluded] if excluded is not None else None)
    seen_set = set(seen)
    recommendations = []
    for rank, (item, score) in enumerate(zip(out["item_ids"][0].tolist(),
                                             out["scores"][0].tolist()), start=1):
        if item == meta.get("pad_item_id", PAD):
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
    signature = WITH_EXCLUSIONS if excluded is not None else SERVING_DEFAULT
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


def _id_list(text: str) -> List[str]:
    return [item for item in text.split(",") if item]


def parse_args(argv=None) -> RecommendConfig:
    parser = cli.config_parser(__doc__.splitlines()[0], RecommendConfig, dataset=True)
    parser.add_argument("--export", help="model folder or version folder")
    parser.add_argument("--user-id")
    parser.add_argument("--k", type=int, help="recommendations to print (<= the export's k)")
    parser.add_argument("--history", type=_id_list,
                        help="comma-separated item ids, most recent last")
    parser.add_argument("--no-exclude-seen", dest="exclude_seen", action="store_false",
                        default=None, help="use serving_default (seen items may come back)")
    return cli.parse_config(RecommendConfig, parser, argv,
                            fields=("export", "user_id", "k", "history", "exclude_seen"))


if __name__ == "__main__":
    cli.run(main, parse_args)
