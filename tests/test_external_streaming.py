"""Large external tensors stay on disk: a pipeline maps or streams them and never reads untouched
ones into memory (see docs/benchmarks/large.md for the figures on a 3 GB model)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import onnx
import onnx.helper as oh
import pytest

from optgraph import ir
from optgraph.ir import serde, tensor
from optgraph.passes.manager import run_passes
from optgraph.passes.testing.oracle import assert_equivalent

N = 64  # weights are N x N fp32 (16 KiB): "large" once the chunk size is patched down to 1 KiB


def _external_model(folder: Path) -> Path:
    """x -> MatMul w0 -> Identity -> MatMul w1 -> MatMul w1copy -> MatMul Transpose(wt) -> y.

    w1copy equals w1, so CSE merges it; w2 differs from w1 in one element only, so CSE must keep it; Transpose(wt) is folded: the only weight a pass rewrites.
    """
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((N, N)).astype(np.float32)
    w2 = w1.copy()
    w2.flat[750] += 1  # byte 3000: past the first 1 KiB chunk, between the blocks a 4 x 256 B sample reads
    weights = {"w0": rng.standard_normal((N, N)).astype(np.float32), "w1": w1, "w1copy": w1.copy(), "w2": w2,
               "wt": rng.standard_normal((N, N)).astype(np.float32)}
    nodes = [oh.make_node("MatMul", ["x", "w0"], ["a"]), oh.make_node("Identity", ["a"], ["b"]),
             oh.make_node("MatMul", ["b", "w1"], ["c"]), oh.make_node("MatMul", ["b", "w1copy"], ["d"]),
             oh.make_node("MatMul", ["b", "w2"], ["e"]), oh.make_node("Add", ["c", "d"], ["f"]),
             oh.make_node("Add", ["f", "e"], ["g"]), oh.make_node("Transpose", ["wt"], ["wtt"], perm=[1, 0]),
             oh.make_node("MatMul", ["g", "wtt"], ["y"])]
    graph = oh.make_graph(nodes, "ext", [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, N])],
                          [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, N])],
                          [onnx.numpy_helper.from_array(w, name) for name, w in weights.items()])
    proto = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)], ir_version=8)
    path = folder / "m.onnx"
    onnx.save(proto, str(path), save_as_external_data=True, location="m.onnx.data", size_threshold=0)
    return path


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr(tensor, "_CHUNK", 1024)
    return 1024


def _resident_kib(array: np.ndarray) -> int:
    """How much of the memory mapping holding ``array`` this process has read (Linux smaps)."""
    address = array.__array_interface__["data"][0]
    rss, inside = None, False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                start, end = (int(x, 16) for x in head.split("-"))
                inside = start <= address < end
            elif inside and head == "Rss:":
                rss = int(line.split()[1])
    assert rss is not None, "the array is not memory-mapped"
    return rss


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="needs Linux /proc/self/smaps")
def test_untouched_external_tensors_are_never_read_into_memory(tmp_path: Path, small_chunks: int,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    src = _external_model(tmp_path)

    def no_read(ext: tensor.ExternalData) -> bytes:
        raise AssertionError("external data read whole into memory")

    real_pread = os.pread

    def small_pread(fd: int, n: int, offset: int) -> bytes:
        assert n <= small_chunks, f"read {n} bytes at once"
        return real_pread(fd, n, offset)

    monkeypatch.setattr(tensor, "read_external", no_read)
    monkeypatch.setattr(os, "pread", small_pread)  # CSE hashes and compares in chunks
    model = ir.load(src)
    names = set(model.graph.initializers)
    run_passes(model, "default")
    kept = {name: v.const for name, v in model.graph.initializers.items() if name in names}
    assert set(kept) == {"w0", "w1", "w2"}
    assert len(model.graph.initializers) == 4  # and the folded transpose, in memory
    out = tmp_path / "out.onnx"
    ir.save(model, out)
    for name, t in kept.items():
        assert t is not None and t.is_external
        if t._array is not None:  # a pass looked at its shape: mapped, but no page of it read
            assert _resident_kib(t._array) == 0, name
    monkeypatch.undo()
    assert_equivalent(onnx.load(str(src)), onnx.load(str(out)))
    read = ir.load(src).graph.initializers["w1"].const.numpy()  # type: ignore[union-attr]
    assert read.sum() and _resident_kib(read) > 0  # the check sees a read


def test_large_constants_merge_by_chunked_content(tmp_path: Path, small_chunks: int) -> None:
    """w1 and w1copy (equal) merge; w2 (one element differs) does not, even where samples collide."""
    model = ir.load(_external_model(tmp_path))
    w = {name: v.const for name, v in model.graph.initializers.items()}
    w1, w1copy, w2 = w["w1"], w["w1copy"], w["w2"]
    assert w1 is not None and w1copy is not None and w2 is not None
    assert w1.digest() == w1copy.digest() != w2.digest()
    assert w1.sampled_digest(4, 256) == w2.sampled_digest(4, 256) != w["w0"].sampled_digest(4, 256)  # type: ignore[union-attr]
    assert w1.same_contents(w1copy) and not w1.same_contents(w2)
    in_memory = ir.Tensor.from_array(w1.numpy().copy())
    assert in_memory.digest() == w1.digest() and in_memory.same_contents(w1)
    assert in_memory.sampled_digest(4, 256) == w1.sampled_digest(4, 256)


def test_cse_tells_large_constants_apart_when_samples_collide(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ir.Tensor, "sampled_digest", lambda t: b"same")
    src = _external_model(tmp_path)
    model = ir.load(src)
    run_passes(model, "cse")
    assert {"w0", "w1", "w2", "wt"} == set(model.graph.initializers)
    ir.save(model, tmp_path / "out.onnx")
    assert_equivalent(onnx.load(str(src)), onnx.load(str(tmp_path / "out.onnx")))


@pytest.mark.parametrize("missing", ["copy_file_range", "both"])
def test_saving_without_kernel_copies_writes_the_same_bytes(tmp_path: Path, missing: str,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    src = _external_model(tmp_path)
    ir.save(ir.load(src), tmp_path / "kernel.onnx")

    def unsupported(*args: object) -> int:
        raise OSError(errno.ENOSYS, "not here")

    monkeypatch.setattr(serde, "_kernel_copy_file_range", unsupported)
    if missing == "both":
        monkeypatch.setattr(serde, "_kernel_sendfile", unsupported)
    ir.save(ir.load(src), tmp_path / "user.onnx")
    assert (tmp_path / "kernel.onnx.data").read_bytes() == (tmp_path / "user.onnx.data").read_bytes()
    assert_equivalent(onnx.load(str(src)), onnx.load(str(tmp_path / "user.onnx")))


def test_an_external_file_cut_short_after_loading_is_a_clear_error(tmp_path: Path) -> None:
    src = _external_model(tmp_path)
    model = ir.load(src)
    os.truncate(tmp_path / "m.onnx.data", 100)
    with pytest.raises(ir.InvalidModelError, match="shorter"):
        ir.save(model, tmp_path / "out.onnx")
    assert not (tmp_path / "out.onnx").exists()
    with pytest.raises(ir.InvalidModelError, match="shorter"):
        model.graph.initializers["w2"].const.numpy()  # type: ignore[union-attr]
