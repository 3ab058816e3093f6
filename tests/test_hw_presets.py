"""Hardware presets: bundled ones load by name, user files load by path, bad ones are rejected
with a message naming the key; KV transfer arithmetic."""

import json

import pytest

from emulator.hw import list_presets, load_mesh
from emulator.hw.errors import ConfigError
from emulator.hw.link import load_link
from emulator.link.transfer import kv_bytes_per_token, transfer_kv


def test_bundled_mesh_presets():
    assert {"wse2", "wse3", "small"} <= set(list_presets("mesh"))
    wse3 = load_mesh("wse3")
    assert (wse3.width, wse3.height, wse3.sram_bytes) == (755, 1170, 49152)
    assert wse3.simd_width("fp16") == 8 and load_mesh("wse2").simd_width("fp16") == 4
    assert wse3.simd_width("fp32") == 1


def _write(tmp_path, data):
    path = tmp_path / "hw.json"
    path.write_text(json.dumps(data))
    return str(path)


def _wse3_dict():
    return {k: v for k, v in json.loads(json.dumps(load_mesh("wse3").__dict__)).items()}


@pytest.mark.parametrize("change, key", [
    ({"width": 0}, "width"),
    ({"sram_bytes": -4}, "sram_bytes"),
    ({"clock_hz": "fast"}, "clock_hz"),
    ({"num_colors": 2.5}, "num_colors"),
    ({"bogus": 1}, "bogus"),
    ({"num_colors": 64}, "num_colors"),
    ({"hop_latency": True}, "hop_latency"),
])
def test_bad_mesh_preset_names_the_key(tmp_path, change, key):
    data = _wse3_dict()
    data.update(change)
    with pytest.raises(ConfigError, match=key):
        load_mesh(_write(tmp_path, data))


def test_missing_key_and_malformed_json(tmp_path):
    data = _wse3_dict()
    del data["hop_latency"]
    with pytest.raises(ConfigError, match="missing field 'hop_latency'"):
        load_mesh(_write(tmp_path, data))
    path = tmp_path / "broken.json"
    path.write_text("{ not json")
    with pytest.raises(ConfigError, match="broken.json: malformed JSON at line 1"):
        load_mesh(str(path))
    with pytest.raises(ConfigError, match="no such mesh preset"):
        load_mesh("wse9")


def test_user_preset_file_loads(tmp_path):
    data = _wse3_dict()
    data["clock_hz"] = 1.1e9
    assert load_mesh(_write(tmp_path, data)).clock_hz == 1.1e9


def test_kv_bytes_per_token_published_models():
    assert kv_bytes_per_token(80, 8, 128, 2) == 327_680   # Llama-3.1-70B bf16
    assert kv_bytes_per_token(32, 8, 128, 2) == 131_072   # Llama-3.1-8B bf16


def test_kv_transfer_serial_and_overlapped():
    link = load_link("efa")
    serial = transfer_kv(1000, 100, link)
    assert serial.seconds == link.latency_s + 100_000 / link.total_bandwidth
    assert serial.exposed_seconds == serial.seconds
    # Layers finishing far apart: each layer's share is sent before the next is ready.
    overlapped = transfer_kv(1000, 100, link, [1.0, 2.0])
    assert overlapped.exposed_seconds == pytest.approx(50_000 / link.total_bandwidth
                                                       + link.latency_s)
    assert transfer_kv(1000, 0, link).seconds == 0.0
