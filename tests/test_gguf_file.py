"""gguf_file.py: the course's GGUF reader agrees with ggml-org's gguf package (metadata, tensor
table, dequantized weights, bit for bit), and refuses damaged files with a one-line reason."""

import struct

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q
from gguf import GGUFReader, GGUFValueType, GGUFWriter
from gguf.quants import dequantize as gguf_dequantize
from gguf.quants import quantize
from tiny_gguf import set_tensor_type, write_tiny_llama

from slm_helpers.errors import SLMError
from slm_helpers.gguf_file import GGUFFile, dequantize

KINDS = [Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1]


def reader_value(field):
    """A GGUFReader field's value as Python: str, number, bool or list (what GGUFFile.metadata
    holds)."""
    parts, types = field.parts, field.types
    if types[0] == GGUFValueType.ARRAY:
        if types[-1] == GGUFValueType.STRING:
            return [bytes(parts[i]).decode("utf-8") for i in field.data]
        return [v for i in field.data for v in parts[i].tolist()]
    if types[0] == GGUFValueType.STRING:
        return bytes(parts[-1]).decode("utf-8")
    return parts[-1].tolist()[0]


def hard_weights(rows=6, cols=64, seed=0):
    """Weights that test every corner of a block: normal values, an all-zero block, one value in a
    block of zeros, tiny values (float16 scales go subnormal), large ones, all-equal and
    all-negative blocks."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((rows, cols)).astype(np.float32)
    w[1] = 0.0
    w[2, :32], w[2, 5] = 0.0, -3.0
    w[3] *= 1e-6
    w[4] *= 1e3
    w[5, :32], w[5, 32:] = 0.25, -np.abs(w[5, 32:]) - 1
    return w


def write_all_types(path, alignment=None, padding=13):
    """A GGUF file with one tensor of each type the course reads, after ``padding`` bytes of
    metadata."""
    writer = GGUFWriter(str(path), "llama")
    if alignment:
        writer.add_custom_alignment(alignment)
    writer.add_string("test.odd", "x" * padding)
    for k, kind in enumerate(KINDS):
        data = quantize(hard_weights(seed=k), kind)
        writer.add_tensor(f"t.{kind.name}", data, raw_dtype=None if kind == Q.F32 else kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_llama(tmp_path_factory.mktemp("gguf") / "tiny.gguf", tied=False)


def test_metadata_matches_gguf_reader(tiny):
    ours, reader = GGUFFile(tiny.path), GGUFReader(tiny.path)
    expected = {key: reader_value(field) for key,
                field in reader.fields.items() if not key.startswith("GGUF.")}
    assert ours.metadata == expected
    assert ours.version == reader_value(reader.fields["GGUF.version"]) == 3
    # every value type, as Python values of the right kind
    meta = ours.metadata
    assert [meta[f"test.{t}"] for t in ("uint8", "int8", "uint16", "int16")] == [200, -100, 60000,
                                                                                 -30000]
    assert (meta["test.int32"], meta["test.uint64"], meta["test.int64"]) == (-2_000_000_000,
                                                                             2**63 + 5, -(2**62))
    assert meta["test.float64"] == 0.1 and meta["test.float32s"] == [0.5, -1.25, 3.0]
    assert meta["test.unicode"] == "naïve 日本語 😀"
    assert meta["tokenizer.ggml.add_bos_token"] is False
    assert meta["llama.attention.layer_norm_rms_epsilon"] == np.float32(1e-5)
    assert meta["tokenizer.ggml.tokens"] == tiny.tokens


def test_tensor_table_matches_gguf_reader(tiny):
    ours, reader = GGUFFile(tiny.path), GGUFReader(tiny.path)
    assert list(ours.tensors) == [t.name for t in reader.tensors]
    for t in reader.tensors:
        info = ours.tensors[t.name]
        assert info.shape == tuple(reversed(t.shape.tolist())), t.name  # rows first
        assert info.kind == t.tensor_type.name
        assert (info.offset, info.nbytes) == (t.data_offset, t.n_bytes)
    assert {info.kind for info in ours.tensors.values()} == {kind.name for kind in KINDS}


def test_every_tensor_dequantizes_as_gguf_does(tiny):
    ours, reader = GGUFFile(tiny.path), GGUFReader(tiny.path)
    for t in reader.tensors:
        expected = np.array(gguf_dequantize(t.data,
                                            t.tensor_type)).reshape(ours.tensors[t.name].shape)
        expected = torch.from_numpy(expected)
        got = ours.tensor(t.name)
        assert got.dtype == torch.float32 and torch.equal(got, expected), t.name


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.name)
def test_dequantize_is_bit_exact(kind):
    w = hard_weights(rows=40, seed=int(kind))
    stored = quantize(w, kind)
    raw = torch.from_numpy(np.ascontiguousarray(stored).view(np.uint8).reshape(-1))
    ours = dequantize(raw, kind.name)
    expected = torch.from_numpy(np.array(gguf_dequantize(stored, kind)).reshape(-1))
    assert ours.dtype == torch.float32 and ours.shape == (w.size,)
    assert torch.equal(ours, expected)
    if kind == Q.F32:
        assert torch.equal(ours, torch.from_numpy(w.reshape(-1)))


@pytest.mark.parametrize("alignment", [None, 64, 256])
# where the header ends, against the alignment
@pytest.mark.parametrize("padding", range(1, 256, 37))
def test_all_types_and_a_custom_alignment(tmp_path, alignment, padding):
    path = write_all_types(tmp_path / "types.gguf", alignment, padding)
    ours, reader = GGUFFile(path), GGUFReader(path)
    assert ours.metadata.get("general.alignment") == alignment
    assert ours.data_offset == reader.data_offset
    for t in reader.tensors:
        info = ours.tensors[t.name]
        assert info.offset == t.data_offset and info.offset % (alignment or 32) == 0
        expected = np.array(gguf_dequantize(t.data, t.tensor_type)).reshape(info.shape)
        assert torch.equal(ours.tensor(t.name), torch.from_numpy(expected)), t.name
        assert torch.equal(ours.raw(t.name),
                           torch.from_numpy(np.array(t.data).view(np.uint8).reshape(-1)))


# ----- damaged files ------------------------------------------------------------------------


def one_line(error) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


def test_missing_and_foreign_files(tmp_path):
    with pytest.raises(SLMError, match="no GGUF file at") as e:
        GGUFFile(tmp_path / "missing.gguf")
    one_line(e)
    with pytest.raises(SLMError, match="no GGUF file at"):
        GGUFFile(tmp_path)  # a folder
    for content in (b"", b"GGU", b"PK\x03\x04 a zip file", b"{\"json\": true}"):
        (tmp_path / "other.gguf").write_bytes(content)
        with pytest.raises(SLMError, match="is not a GGUF file") as e:
            GGUFFile(tmp_path / "other.gguf")
        one_line(e)


@pytest.mark.parametrize("where", [4, 8, 20, 0.1, 0.5, 0.9, 1.0])
def test_a_file_cut_in_its_header(tiny, tmp_path, where):
    end = GGUFFile(tiny.path).data_offset  # the header (metadata, tensor table), padded, ends here
    cut = where if isinstance(where, int) else int(end * where) - (1 if where == 1.0 else 0)
    path = tmp_path / "cut.gguf"
    path.write_bytes(tiny.path.read_bytes()[:cut])
    with pytest.raises(SLMError, match="truncated") as e:
        GGUFFile(path)
    assert str(path) in one_line(e)


@pytest.mark.parametrize("missing", [1, 100, 5000])
def test_a_file_cut_in_its_tensor_data(tiny, tmp_path, missing):
    data = tiny.path.read_bytes()
    path = tmp_path / "cut.gguf"
    path.write_bytes(data[:-missing])
    with pytest.raises(SLMError, match=f"truncated: its tensors need {len(data):,} bytes") as e:
        GGUFFile(path)
    assert f"has {len(data) - missing:,}" in one_line(e)


def test_an_unknown_gguf_version(tiny, tmp_path):
    data = bytearray(tiny.path.read_bytes())
    data[4:8] = struct.pack("<I", 7)
    (tmp_path / "v7.gguf").write_bytes(bytes(data))
    with pytest.raises(SLMError, match="GGUF version 7") as e:
        GGUFFile(tmp_path / "v7.gguf")
    one_line(e)


def test_a_string_of_bad_utf8_is_damage(tiny, tmp_path):
    data = bytearray(tiny.path.read_bytes())
    at = data.index(b"tiny random llama")
    data[at:at + 4] = b"\xff\xfe\xfd\xfc"
    (tmp_path / "bad.gguf").write_bytes(bytes(data))
    with pytest.raises(SLMError, match="truncated or damaged"):
        GGUFFile(tmp_path / "bad.gguf")


@pytest.mark.parametrize("type_id, named",
                         [(int(Q.Q4_K), "Q4_K"), (int(Q.Q6_K), "Q6_K"), (99, "type 99")])
def test_an_unsupported_tensor_type_is_named(tiny, tmp_path, type_id, named):
    path = tmp_path / "k.gguf"
    path.write_bytes(tiny.path.read_bytes())
    set_tensor_type(path, "blk.1.ffn_down.weight", type_id)
    f = GGUFFile(path)  # the table is readable: only that tensor is refused
    assert f.tensors["blk.1.ffn_down.weight"].kind == named
    assert torch.equal(f.tensor("blk.0.ffn_down.weight"),
                       GGUFFile(tiny.path).tensor("blk.0.ffn_down.weight"))
    with pytest.raises(SLMError,
                       match=f"blk.1.ffn_down.weight is stored as {named}, which this reader "
                             "cannot") as e:
        f.tensor("blk.1.ffn_down.weight")
    assert "Q4_1" in one_line(e)
