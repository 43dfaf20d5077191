"""The serving contract has one definition (`recommenders_tf.serving.contract`).

Exports, clients, warmup, server configs, the test server and the pipelines must take signature
names, input names, the padding id and file names from it; a copy anywhere else could drift.
Fast: no model is trained or exported.
"""
import ast
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

from recommenders_tf.serving import contract

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "recommenders_tf"
# Being rewritten separately; add them here once they import from the contract directly.
PENDING: set = set()
SCANNED = sorted(
    {*(PACKAGE / "serving").glob("*.py"), *(PACKAGE / "testing").glob("*.py"),
     *(PACKAGE / "index").glob("*.py"), PACKAGE / "data" / "datasets.py",
     PACKAGE / "features" / "id_lists.py", *(ROOT / "pipelines").glob("*.py")}
    - {PACKAGE / "serving" / "contract.py"} - PENDING)
# Values distinctive enough that a literal copy of them is a second definition. Input names
# such as "user_id" and "history" are also data column names, so they are not scanned.
DISTINCTIVE = {contract.SERVING_DEFAULT, contract.WITH_EXCLUSIONS, contract.EXCLUDE_INPUT,
               contract.METADATA_FILE, contract.ASSETS_EXTRA, contract.WARMUP_FILE,
               contract.MODEL_SECONDS_HEADER, contract.MODEL_NAME_PATTERN.pattern,
               contract.ID_ORDER_NOTE, contract.EXCLUSION_NOTE}
CONSTANTS = {name for name, value in vars(contract).items()
             if name.isupper() and not name.startswith("_")}


def _docstrings(tree: ast.AST) -> set:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                out.add(id(body[0].value))
    return out


def test_scan_covers_the_users_of_the_contract():
    names = {p.relative_to(ROOT).as_posix() for p in SCANNED}
    assert {"recommenders_tf/serving/export.py", "recommenders_tf/serving/ranking_export.py",
            "recommenders_tf/serving/client.py", "recommenders_tf/serving/warmup.py",
            "recommenders_tf/serving/server_config.py",
            "recommenders_tf/testing/local_server.py", "pipelines/recommend.py",
            "pipelines/query_server.py"} <= names


@pytest.mark.parametrize("path", SCANNED, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_module_defines_its_own_copy(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    # No module-level assignment to a contract name (importing it is the only way in).
    for node in tree.body:
        targets = (node.targets if isinstance(node, ast.Assign) else
                   [node.target] if isinstance(node, ast.AnnAssign) else [])
        names = {t.id for t in targets if isinstance(t, ast.Name)}
        assert not names & CONSTANTS, f"{path.name} defines {sorted(names & CONSTANTS)}"
    # No literal copy of a contract value outside docstrings.
    docs = _docstrings(tree)
    copies = [(node.lineno, node.value) for node in ast.walk(tree)
              if isinstance(node, ast.Constant) and node.value in DISTINCTIVE
              and id(node) not in docs]
    assert not copies, f"{path.name} spells contract values itself: {copies}"


def test_modules_use_the_contract_objects():
    from recommenders_tf.data import datasets
    from recommenders_tf.features import id_lists
    from recommenders_tf.index import candidate_store, scann_index
    from recommenders_tf.serving import client, export, ranking_export, server_config, warmup
    from recommenders_tf.testing import local_server

    # The names export.py uses are the contract's objects, not copies.
    for name in ("SERVING_DEFAULT", "WITH_EXCLUSIONS", "EXCLUDE_INPUT", "METADATA_FILE",
                 "ORDERED_ID_LISTS", "check_model_name"):
        assert getattr(export, name) is getattr(contract, name), name
    for module in (client, warmup, server_config, ranking_export, local_server, export):
        for name in CONSTANTS & set(vars(module)):
            assert getattr(module, name) is getattr(contract, name), (module.__name__, name)
    assert ranking_export.check_model_name is contract.check_model_name
    assert ranking_export.INPUTS is contract.RANKING_INPUTS
    assert local_server.DEFAULT_SIGNATURE is contract.SERVING_DEFAULT
    assert local_server.MODEL_SECONDS_HEADER is client.MODEL_SECONDS_HEADER
    assert inspect.signature(warmup.example_inputs).parameters["signature_name"].default \
        is contract.SERVING_DEFAULT
    assert datasets.PAD is id_lists.PAD is scann_index.PAD_ID is client.PAD is contract.PAD
    assert candidate_store.QUERY_FEATURE_SPEC == contract.tensor_specs(contract.RETRIEVAL_INPUTS)


def test_tensor_specs():
    import tensorflow as tf

    specs = contract.tensor_specs(contract.EXCLUSION_INPUTS)
    assert list(specs) == ["user_id", "history", "exclude_item_ids"]
    assert specs["user_id"] == tf.TensorSpec([None], tf.string, name="user_id")
    assert specs["history"] == tf.TensorSpec([None, None], tf.string, name="history")
    assert specs["exclude_item_ids"].shape.as_list() == [None, None]
    assert contract.tensor_spec("item_ids").name == "item_ids"
    assert all(s.dtype == tf.string for s in contract.tensor_specs(contract.RANKING_INPUTS)
               .values())
    with pytest.raises(KeyError):
        contract.tensor_spec("scores")


@pytest.mark.parametrize("name", ["ranking", "retrieval_scann", "recommender_bruteforce",
                                  "a.b-c_1", "7", "A"])
def test_model_name_check_accepts(name):
    assert contract.is_valid_model_name(name)
    assert contract.check_model_name(name) == name


@pytest.mark.parametrize("name", ["", "_hidden", ".tmp", "-x", "a/b", "a b", "..", "ü", "a\n",
                                  None, 3, b"ranking"])
def test_model_name_check_rejects(name):
    assert not contract.is_valid_model_name(name)
    with pytest.raises(ValueError, match="one path component"):
        contract.check_model_name(name)


def test_client_pads_with_the_contract_pad(monkeypatch):
    from recommenders_tf.serving import client

    assert client.pad_rows([["a", "b"], ["c"], []]) == [
        ["a", "b"], [contract.PAD, "c"], [contract.PAD, contract.PAD]]
    body = client.build_rest_request(["u1", "u2"], [["a"], []], exclude_item_ids=[["a"], []],
                                     columnar=True)
    assert body["signature_name"] == contract.WITH_EXCLUSIONS
    assert set(body["inputs"]) == set(contract.EXCLUSION_INPUTS)
    assert body["inputs"][contract.EXCLUDE_INPUT] == [["a"], [contract.PAD]]
    assert client.build_rest_request("u1", ["a"])["signature_name"] == contract.SERVING_DEFAULT
    # The client reads the module-level PAD, which it imports from the contract.
    monkeypatch.setattr(client, "PAD", "<pad>")
    assert client.pad_rows([["a", "b"], ["c"]]) == [["a", "b"], ["<pad>", "c"]]


def test_metadata_entries_state_padding_and_order():
    meta = contract.input_order_metadata(with_exclusions=True)
    assert meta == {"pad_item_id": "", "input_order": {
        "history": contract.ID_ORDER_NOTE, "exclude_item_ids": contract.EXCLUSION_NOTE}}
    assert "exclude_item_ids" not in contract.input_order_metadata(False)["input_order"]


def test_contract_and_client_do_not_load_tensorflow():
    code = ("import sys; import recommenders_tf.serving.contract, recommenders_tf.serving.client;"
            " print('tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_the_test_server_is_a_fixture_outside_serving():
    import importlib

    import recommenders_tf.testing as testing

    doc = " ".join(testing.__doc__.split())
    assert "test fixture" in doc and "not a production server" in doc
    assert not (PACKAGE / "serving" / "local_server.py").exists()
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("recommenders_tf.serving.local_server")
    import recommenders_tf.serving as serving

    with pytest.raises(AttributeError):
        serving.LocalModelServer  # noqa: B018


def test_one_vocabulary_class_for_train_and_exported_tables():
    import tensorflow as tf

    from recommenders_tf.features.vocab import Vocabulary
    from recommenders_tf.serving import export

    assert export.Vocabulary is Vocabulary
    module = tf.Module()
    module.user_lookup = tf.keras.layers.StringLookup(vocabulary=["u1", "u2"], mask_token=None)
    [found] = export.find_vocabularies(module)
    assert isinstance(found, Vocabulary) and found.counts is None
    assert (found.tokens, found.first_index, found.contiguous) == (["u1", "u2"], 1, True)
    assert found.index("u2") == 2
    with pytest.raises(ValueError, match="no train counts"):
        found.frequencies()
