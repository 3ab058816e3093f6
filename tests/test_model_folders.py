"""HuggingFace-style model folders (config.json + model.safetensors or a sharded checkpoint
with its index), bundled model names, and the errors of broken folders."""

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from compiler import reference
from compiler.frontend import bundled_model_path, list_bundled_models, resolve_model
from compiler.weights import INDEX_FILE, SINGLE_FILE, load_weights, random_weights, save_weights
from emulator.cli import main
from emulator.hw.errors import ConfigError

MODEL = "tiny-llama"


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def make_folder(root, weights, dtype="fp32"):
    """A model folder with one-file weights."""
    root.mkdir(exist_ok=True)
    shutil.copy(bundled_model_path(MODEL), root / "config.json")
    save_weights(root / SINGLE_FILE, weights, dtype)
    return root


def make_sharded(root, weights, cuts, dtypes):
    """A model folder whose tensors are split over shards at `cuts` (indices into the sorted
    tensor names), shard k stored in dtypes[k]."""
    root.mkdir(exist_ok=True)
    shutil.copy(bundled_model_path(MODEL), root / "config.json")
    names = sorted(weights)
    bounds = [0, *cuts, len(names)]
    weight_map = {}
    for k in range(len(bounds) - 1):
        shard = f"model-{k + 1:05d}-of-{len(bounds) - 1:05d}.safetensors"
        part = {n: weights[n] for n in names[bounds[k]:bounds[k + 1]]}
        save_weights(root / shard, part, dtypes[k])
        weight_map.update(dict.fromkeys(part, shard))
    (root / INDEX_FILE).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return root


@pytest.fixture(scope="module")
def weights():
    return random_weights(resolve_model(MODEL), 7)


def test_bundled_names_resolve_everywhere():
    assert {"tiny", "llama-3.1-8b", "llama-3.1-70b", "qwen2-7b"} <= set(list_bundled_models())
    assert resolve_model("llama-3.1-8b").num_layers == 32
    result = invoke("map", "llama-3.1-8b", "--hw", "wse3", "--dtype", "bf16")
    assert result.exit_code == 0, result.output


def test_folder_resolves_to_its_config(tmp_path, weights):
    folder = make_folder(tmp_path / "m", weights)
    assert resolve_model(folder) == resolve_model(MODEL)


@settings(max_examples=12, deadline=None)
@given(data=st.data())
def test_sharded_checkpoint_equals_one_file(tmp_path_factory, weights, data):
    """Any split of the tensors over shards, each shard in any stored format, loads the
    same values as the one-file checkpoint in that format."""
    n = len(weights)
    cuts = sorted(data.draw(st.sets(st.integers(1, n - 1), max_size=3)))
    dtypes = data.draw(st.lists(st.sampled_from(["fp32", "fp16", "bf16"]),
                                min_size=len(cuts) + 1, max_size=len(cuts) + 1))
    root = tmp_path_factory.mktemp("sharded")
    folder = make_sharded(root / "m", weights, cuts, dtypes)
    spec = resolve_model(folder)
    loaded = load_weights(folder, spec)
    by_index = load_weights(folder / INDEX_FILE, spec)
    bounds = [0, *cuts, n]
    names = sorted(weights)
    for k in range(len(bounds) - 1):
        one = root / f"one{k}.safetensors"
        save_weights(one, weights, dtypes[k])
        single = load_weights(one, spec)
        for name in names[bounds[k]:bounds[k + 1]]:
            np.testing.assert_array_equal(loaded[name], single[name])
            np.testing.assert_array_equal(by_index[name], single[name])


def test_run_on_a_folder_uses_its_weights(tmp_path, weights):
    folder = make_sharded(tmp_path / "m", weights, [3, 9], ["fp32", "bf16", "fp32"])
    args = ("--prompt-tokens", "3,1,4", "--max-new-tokens", "3", "--dtype", "fp32",
            "--mesh", "8x6", "--quiet")
    result = invoke("run", folder, *args, "--logits", tmp_path / "folder.npy")
    assert result.exit_code == 0, result.output
    spec = resolve_model(MODEL)
    _, ref_logits = reference.generate(spec, load_weights(folder, spec), [3, 1, 4], 3)
    logits = np.load(tmp_path / "folder.npy")
    assert np.abs(logits - ref_logits).max() <= 1e-4 * np.abs(ref_logits).max()
    seeded = invoke("run", folder, *args, "--seed", "1", "--logits", tmp_path / "seeded.npy")
    assert seeded.exit_code == 0, seeded.output
    assert not np.array_equal(np.load(tmp_path / "seeded.npy"), logits)


def test_folder_and_index_errors(tmp_path, weights):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = invoke("map", empty)
    assert result.exit_code == 2 and "needs a config.json" in result.output
    assert "Traceback" not in result.output
    folder = make_sharded(tmp_path / "m", weights, [4], ["fp32", "fp32"])
    spec = resolve_model(folder)
    index = folder / INDEX_FILE
    table = json.loads(index.read_text())
    name = sorted(table["weight_map"])[0]
    table["weight_map"][name] = "model-00002-of-00002.safetensors"
    index.write_text(json.dumps(table))
    with pytest.raises(ConfigError, match=f"tensor '{name}' is mapped to model-00002"):
        load_weights(folder, spec)
    index.write_text("{not json")
    with pytest.raises(ConfigError, match="malformed JSON at line 1"):
        load_weights(folder, spec)
    index.write_text(json.dumps({"weight_map": {name: "../x.safetensors"}}))
    with pytest.raises(ConfigError, match="must be a file beside the index"):
        load_weights(folder, spec)
    index.unlink()
    (folder / "model-00001-of-00002.safetensors").unlink()
    with pytest.raises(ConfigError, match="no model.safetensors or"):
        load_weights(folder, spec)


def test_weights_and_seed_exclude_each_other(tmp_path, weights):
    folder = make_folder(tmp_path / "m", weights)
    result = invoke("run", MODEL, "--weights", folder, "--seed", "3", "--mesh", "8x6")
    assert result.exit_code == 2
    assert "--weights and --seed exclude each other" in result.output
