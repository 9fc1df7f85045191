"""benchmarks/bench_decode.py on a tiny model: cached and uncached decoding both timed, the same tokens
chosen, the JSON written (no timing assertions)."""
from __future__ import annotations

import json

import pytest

from benchmarks import bench_decode
from errors import UserError


def test_quick_run_times_both_modes(tmp_path):
    out = tmp_path / "decode.json"
    result = bench_decode.main(["--quick", "--device", "cpu", "--json", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result, default=str))
    assert [r["variant"] for r in result["rows"]] == ["softmax", "consmax"]
    for r in result["rows"]:
        for mode in ("cached", "uncached"):
            assert r[mode]["tokens_per_s"] > 0 and r[mode]["prefill_ms"] > 0
        assert r["speedup"] == pytest.approx(r["cached"]["tokens_per_s"] / r["uncached"]["tokens_per_s"])
        assert r["same_tokens"] and r["first_difference"] is None  # fp32: the cache changes nothing
    assert set(result["targets"]["kv_cache_5x_uncached"]) == {"softmax", "consmax"}
    assert result["environment"]["command"].startswith("python benchmarks/bench_decode.py")


@pytest.mark.parametrize("argv,message", [
    (["--variants", "consmx"], "did you mean 'consmax'"),
    (["--prompt_len", "1000", "--new_tokens", "100"], "exceeds --block_size 1024"),
    (["--new_tokens", "0"], "--new_tokens must be at least 1"),
])
def test_user_errors(argv, message):
    with pytest.raises(UserError, match=message):
        bench_decode.main(argv)
