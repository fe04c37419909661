import numpy as np
import pytest
from onnx import TensorProto, helper

from optgraph.passes.precision import calibration as c


def _relu_model(batch: int | str = "N"):  # type: ignore[no-untyped-def]
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="r")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 4])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 10
    return m


def _data(x: np.ndarray, batch: int):  # type: ignore[no-untyped-def]
    return lambda: c._batches({"x": x}, batch)


def test_statistics_and_ranges_do_not_depend_on_the_batch_split() -> None:
    x = np.random.default_rng(0).standard_t(3, (301, 4)).astype(np.float32)
    a, b = c.collect(_relu_model(), _data(x, 301)), c.collect(_relu_model(), _data(x, 7))
    assert a.amax == b.amax
    assert all((a.hist[k] == b.hist[k]).all() for k in a.hist)
    for method in c.METHODS:
        assert c.ranges(a, method) == c.ranges(b, method)


def test_a_fixed_batch_model_is_fed_in_slices_of_its_batch() -> None:
    # exported models often fix the batch at 1: batches of 5 are run one sample at a time
    x = np.random.default_rng(3).normal(0, 1, (12, 4)).astype(np.float32)
    a, b = c.collect(_relu_model(1), _data(x, 5)), c.collect(_relu_model(), _data(x, 12))
    assert a.amax == b.amax
    assert all((a.hist[k] == b.hist[k]).all() for k in a.hist)


def test_entropy_percentile_and_mse_clip_a_heavy_tail() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(0, 1, (20000, 4)).astype(np.float32)
    x[0, 0] = 200.0  # one outlier
    stats = c.collect(_relu_model(), _data(x, 1000))
    top = stats.amax["x"]
    for method in ("entropy", "percentile"):
        t = c.ranges(stats, method)["x"]
        assert t < top / 10, method
        assert t > 2.0, method  # the body of the distribution is kept
    assert c.ranges(stats, "minmax")["x"] == top
    # mse weighs the outlier's own error too; auto picks the least expected error of all methods
    err = {m: c._sq_error(stats.hist["x"], stats.width["x"], np.array([c.ranges(stats, m)["x"]]))[0] for m in c.METHODS}
    assert err["auto"] == min(err.values())


def test_cache_round_trip_and_method_check(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "cache.json"
    c.save_cache(path, "mse", {"b": 2.0, "a": 1.5})
    assert c.load_cache(path, "mse") == {"a": 1.5, "b": 2.0}
    with pytest.raises(c.CalibrationError, match="method"):
        c.load_cache(path, "entropy")


def test_sources_npz_folder_and_limit(tmp_path) -> None:  # type: ignore[no-untyped-def]
    x = np.arange(40, dtype=np.float32).reshape(10, 4)
    np.savez(tmp_path / "d.npz", x=x)
    feeds = list(c.limit(c.source(str(tmp_path / "d.npz"), ["x"], batch=4), 6)())
    assert [len(f["x"]) for f in feeds] == [4, 2]
    folder = tmp_path / "f"
    folder.mkdir()
    np.save(folder / "0.npy", x[:3])
    assert list(c.source(str(folder), ["x"])())[0]["x"].shape == (3, 4)
    with pytest.raises(c.CalibrationError, match="no array for input"):
        c.source(str(tmp_path / "d.npz"), ["y"])()
    with pytest.raises(c.CalibrationError):
        c.source(str(tmp_path / "missing.npz"), ["x"])
    with pytest.raises(c.CalibrationError, match="empty"):
        c.collect(_relu_model(), lambda: iter(()))


def _entropy_reference(h: np.ndarray, levels: int = 128) -> int:
    """TensorRT's KL search written candidate by candidate: the best clipped length."""
    best, best_i = np.inf, len(h)
    for i in range(levels, len(h) + 1):
        p = h[:i].astype(np.float64)
        p[-1] += h[i:].sum()
        nz = p != 0
        group = (np.arange(i) * levels) // i
        mass = np.bincount(group, weights=h[:i], minlength=levels)
        filled = np.bincount(group, weights=nz.astype(np.float64), minlength=levels)
        q = np.where(nz, mass[group] / np.maximum(filled[group], 1), 0.0)
        p, q = p / p.sum(), q / max(q.sum(), 1e-300)
        m = p > 0
        q = np.where(m & (q == 0), 1e-4, q)
        kl = float(np.sum(p[m] * np.log(p[m] / q[m])))
        if kl < best:
            best, best_i = kl, i
    return best_i


def test_entropy_matches_the_candidate_by_candidate_search() -> None:
    rng = np.random.default_rng(2)
    for k in range(6):
        x = np.abs(rng.standard_t(2 + k, 20000)) if k % 2 else np.maximum(rng.normal(0, 1, 20000) - 0.3, 0)
        h = np.bincount(np.minimum((x / x.max() * 512).astype(int), 511), minlength=512)
        i = _entropy_reference(h)
        assert c._entropy(h, 1.0) == ((i + 0.5) if i < 512 else 512)


def test_histogram_merged_as_the_max_grows_equals_one_counted_on_the_final_grid() -> None:
    rng = np.random.default_rng(4)
    parts = [rng.normal(0, s, 5000).astype(np.float32) for s in (0.01, 1.0, 0.1, 300.0)]
    grown = c._Histogram()
    for p in parts:
        grown.add(p)
    once = c._Histogram()
    once.add(np.concatenate(parts))
    assert grown.exp == once.exp and grown.top == once.top
    assert (grown.counts == once.counts).all()
    width = 2.0 ** once.exp
    assert once.top < c.GRID * width <= 2 * once.top  # the data spans at least half the grid
    assert once.counts.sum() == 20000
