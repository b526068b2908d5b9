"""``safetensors_io``: a header built by ``build_header`` reads back through ``read_header``, and
``read_tensor`` gives every dtype of the table as torch, checked against the ``safetensors`` package."""

import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from sglang_ampere.safetensors_io import (
    DTYPE_SIZES,
    TORCH_DTYPE_NAMES,
    OutTensor,
    build_header,
    file_size,
    read_header,
    read_tensor,
    torch_dtype,
)


def test_dtype_table_matches_torch():
    assert set(TORCH_DTYPE_NAMES) == set(DTYPE_SIZES)
    for name, size in DTYPE_SIZES.items():
        assert torch_dtype(name).itemsize == size, name


def test_built_header_reads_back(tmp_path):
    shard = [OutTensor("a", "BF16", (3, 5)), OutTensor("empty", "F32", (0, 4)), OutTensor("b", "F8_E8M0", (7,))]
    path = tmp_path / "x.safetensors"
    header = build_header(shard, {"format": "pt", "k": "v"})
    path.write_bytes(header + bytes(range(256))[: sum(t.nbytes for t in shard)])
    h = read_header(path)
    assert h.file_size == file_size(shard, {"format": "pt", "k": "v"}) == path.stat().st_size
    assert h.data_start == len(header) and h.data_start % 8 == 0
    assert h.metadata == {"format": "pt", "k": "v"}
    assert [(i.name, i.dtype, i.shape, i.nbytes) for i in h.tensors.values()] == [
        (t.name, t.dtype, t.shape, t.nbytes) for t in shard]
    assert h.tensors["a"].begin == h.data_start
    empty = read_tensor(path, h.tensors["empty"])
    assert (empty.dtype, tuple(empty.shape)) == (torch.float32, (0, 4))
    b = read_tensor(path, h.tensors["b"])
    assert b.dtype == torch.float8_e8m0fnu and b.view(torch.uint8).tolist() == list(range(30, 37))
    with open(path, "rb") as f:                                   # an open file, viewed as another dtype
        a = read_tensor(path, h.tensors["a"], f, torch.int16)
    assert a.dtype == torch.int16 and tuple(a.shape) == (3, 5)
    assert a.view(torch.uint8).flatten().tolist() == list(range(30))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.int8, torch.uint8,
                                   torch.int32, torch.int64, torch.float8_e4m3fn, torch.float8_e8m0fnu])
def test_read_tensor_matches_the_safetensors_package(tmp_path, dtype, gen):
    t = (torch.randn(4, 6, generator=gen) * 8).to(dtype)
    path = tmp_path / "t.safetensors"
    save_file({"pad": torch.zeros(3, dtype=torch.uint8), "t": t}, str(path))
    got = read_tensor(path, read_header(path).tensors["t"])
    assert got.dtype == dtype and torch.equal(got.view(torch.uint8), t.view(torch.uint8))


def test_imports_without_torch():
    code = ("import sys, sglang_ampere.safetensors_io; "
            "sys.exit(1 if 'torch' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
