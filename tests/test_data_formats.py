"""Readers for UEA/UCR .ts files and .npz archives: real-format files written to tmp_path."""

from __future__ import annotations

import re

import numpy as np
import pytest

from s5ssm.data import DataFormatError, SequenceDataset, load_file, read_ts, save_npz

UNIVARIATE = """\
# A UCR-style univariate, equal-length problem
@problemName TinyGun
@timeStamps false
@missing false
@univariate true
@equalLength true
@seriesLength 4
@classLabel true 1 2
@data
0.1,0.2,0.3,0.4:2
1.0,2.0,3.0,4.0:1
-1.5,0,2e-1,7:2
"""

MULTIVARIATE_UNEQUAL = """\
@problemName TinyMotion
@timeStamps false
@missing false
@univariate false
@dimensions 3
@equalLength false
@classLabel true walk run jump
@data
1,2,3:4,5,6:7,8,9:run
1,2:3,4:5,6:jump

0.5,0.5,0.5,0.5,0.5:1,1,1,1,1:2,2,2,2,2:walk
"""


def write(tmp_path, text, name="data.ts"):
    path = tmp_path / name
    path.write_text(text)
    return path


# ----------------------------------------------------------------------------- .ts good
def test_ts_univariate_equal_length(tmp_path):
    ds, info = load_file(write(tmp_path, UNIVARIATE))
    assert len(ds) == 3 and ds.lengths.tolist() == [4, 4, 4]
    assert ds.inputs[0].dtype == np.float32 and ds.inputs[0].shape == (4, 1)
    np.testing.assert_allclose(ds.inputs[2][:, 0], [-1.5, 0, 0.2, 7])
    # labels map in @classLabel order: "1" -> 0, "2" -> 1
    assert ds.targets.tolist() == [1, 0, 1]
    assert info["class_names"] == ["1", "2"] and info["num_classes"] == 2
    assert info["kind"] == "classification" and info["input_dim"] == 1 and info["output_dim"] == 2
    assert info["problem_name"] == "TinyGun" and info["format"] == "ts" and not info["timestamps"]


def test_ts_multivariate_unequal_length(tmp_path):
    ds, info = load_file(write(tmp_path, MULTIVARIATE_UNEQUAL))
    assert ds.lengths.tolist() == [3, 2, 5] and info["input_dim"] == 3
    np.testing.assert_array_equal(ds.inputs[0], np.array([[1, 4, 7], [2, 5, 8], [3, 6, 9]], dtype=np.float32))
    assert ds.targets.tolist() == [1, 2, 0]
    assert info["class_names"] == ["walk", "run", "jump"]
    assert (info["min_length"], info["max_length"]) == (2, 5)


def test_ts_regression_and_case_insensitive_headers(tmp_path):
    text = "@PROBLEMNAME Reg\n@univariate TRUE\n@targetlabel true\n@DATA\n1,2,3:0.25\n4,5:-1e1\n"
    ds, info = load_file(write(tmp_path, text))
    assert ds.kind == "regression" and ds.targets.shape == (2, 1)
    np.testing.assert_allclose(ds.targets[:, 0], [0.25, -10.0])
    assert info["num_classes"] is None and info["output_dim"] == 1


def test_ts_missing_values_are_interpolated(tmp_path):
    text = "@missing true\n@univariate false\n@dimensions 2\n@equalLength true\n@classLabel true a b\n@data\n?,1,?,3,?:NaN,2,2,2,?:b\n"
    ds, info = load_file(write(tmp_path, text))
    np.testing.assert_allclose(ds.inputs[0][:, 0], [1, 1, 2, 3, 3])  # ends: nearest value; inside: linear
    np.testing.assert_allclose(ds.inputs[0][:, 1], [2, 2, 2, 2, 2])
    assert info["missing_values"] == 5


def test_ts_trailing_all_missing_steps_are_padding(tmp_path):
    text = "@missing false\n@univariate false\n@dimensions 2\n@equalLength false\n@classLabel true a b\n@data\n1,2,?,?:3,4,NaN,?:a\n1,2,3:4,5,6:b\n"
    ds, info = load_file(write(tmp_path, text), missing="error")
    assert ds.lengths.tolist() == [2, 3] and info["trimmed_padding"] == 2 and info["missing_values"] == 0
    with pytest.raises(DataFormatError, match=r":7: missing value .*@missing false"):  # step 2, dim 2
        load_file(write(tmp_path, text.replace("3,4,NaN,?", "3,?,NaN,?")))


def test_ts_missing_policy_error_and_header_contradiction(tmp_path):
    text = "@missing true\n@univariate true\n@classLabel true a b\n@data\n1,2,3:a\n1,?,3:b\n"
    with pytest.raises(DataFormatError, match=r"data\.ts:6: dimension 1: missing value"):
        load_file(write(tmp_path, text), missing="error")
    lying = text.replace("@missing true", "@missing false")
    with pytest.raises(DataFormatError, match=r":6: missing value .*@missing false"):
        load_file(write(tmp_path, lying))
    all_missing = "@univariate true\n@classLabel true a\n@data\n?,?:a\n"
    with pytest.raises(DataFormatError, match=r":4: dimension 1: every value is missing"):
        load_file(write(tmp_path, all_missing))
    with pytest.raises(ValueError, match="missing must be one of"):
        read_ts(write(tmp_path, text), missing="zero")


def test_ts_timestamps(tmp_path):
    text = (
        "@timeStamps true\n@univariate false\n@dimensions 2\n@classLabel true x y\n@data\n"
        "(0,1.0),(0.5,2.0),(2,3.0):(0,4),(0.5,5),(2,6):y\n"
        "(2020-01-01 00:00:00,1),(2020-01-01 00:00:10,?),(2020-01-01 00:00:30,4):"
        "(2020-01-01 00:00:00,0),(2020-01-01 00:00:10,0),(2020-01-01 00:00:30,0):x\n"
    )
    ds, info = load_file(write(tmp_path, text))
    assert info["timestamps"]
    np.testing.assert_allclose(ds.timestamps[0], [0, 0.5, 2])
    np.testing.assert_allclose(np.diff(ds.timestamps[1]), [10, 20])
    np.testing.assert_allclose(ds.inputs[1][:, 0], [1, 2, 4])  # interpolated over time, not index
    bad = text.replace("(0.5,5)", "(0.7,5)")
    with pytest.raises(DataFormatError, match=r":6: dimension 2 has other time stamps"):
        load_file(write(tmp_path, bad))


# ----------------------------------------------------------------------------- .ts broken
def lines_of(text):
    return text.splitlines(keepends=True)


BROKEN_TS = [
    ("".join(line for line in lines_of(UNIVARIATE) if not line.startswith("@data")), r"data\.ts:9: data before @data"),
    ("".join(line for line in lines_of(UNIVARIATE)[:8]), r"data\.ts: no @data line"),
    (UNIVARIATE.replace("@data\n", "@data\n\n"), None),  # blank line after @data is fine
    (
        MULTIVARIATE_UNEQUAL.replace("1,2:3,4:5,6:jump", "1,2:3,4:jump"),
        r"data\.ts:10: expected 3 dimension\(s\) and a label \(4 ':'-separated fields\), got 3",
    ),
    (
        UNIVARIATE.replace("1.0,2.0,3.0,4.0:1", "1.0,2.0,abc,4.0:1"),
        r"data\.ts:11: dimension 1, value 3: non-numeric value 'abc'",
    ),
    (UNIVARIATE.replace("1.0,2.0,3.0,4.0:1", "1.0,,3.0,4.0:1"), r":11: dimension 1, value 2: empty value"),
    (
        UNIVARIATE.replace("1.0,2.0,3.0,4.0:1", "1.0,2.0,3.0,4.0:3"),
        r"data\.ts:11: unknown class label '3'; @classLabel declares: 1, 2",
    ),
    (UNIVARIATE.replace("1.0,2.0,3.0,4.0:1", "1.0,2.0,3.0:1"), r":11: series of length 3, but @seriesLength is 4"),
    (UNIVARIATE.replace("1.0,2.0,3.0,4.0:1", "1.0,2.0,3.0,4.0:"), r":11: missing label after the last ':'"),
    ("% an ARFF-style comment\n" + UNIVARIATE.replace("@timeStamps", "@problemName again\n@timeStamps"), None),
    (UNIVARIATE.replace("-1.5,0,2e-1,7:2\n", "-1.5,0,2e-1"), r"data\.ts:12: expected 1 dimension\(s\) and a label"),
    (UNIVARIATE.replace("@data\n", "@data\n@extra\n"), r":10: header '@extra' after @data"),
    (UNIVARIATE.replace("@missing false", "@mising false"), r":4: unknown header '@mising'"),
    (UNIVARIATE.replace("@univariate true", "@univariate maybe"), r":5: @univariate needs true or false"),
    (UNIVARIATE.replace("@classLabel true 1 2", "@classLabel true"), r":8: @classLabel true must list the class names"),
    (UNIVARIATE.replace("@classLabel true 1 2", "@classLabel false"), r":9: no labels"),
    (UNIVARIATE.split("@data")[0] + "@data\n", r"data\.ts:9: no cases after @data"),
    (
        MULTIVARIATE_UNEQUAL.replace("1,2:3,4:5,6:jump", "1,2:3,4,5:5,6:jump"),
        r":10: dimension 2 has 3 values but dimension 1 has 2",
    ),
    (UNIVARIATE.replace("0.1,0.2", "0.1,inf"), r":10: infinite value"),
    (
        UNIVARIATE.replace("@dimensions", "@x").replace("@univariate true", "@univariate true\n@dimensions 2"),
        r"@univariate true contradicts @dimensions 2",
    ),
]


@pytest.mark.parametrize("text, match", BROKEN_TS)
def test_ts_broken_files_name_file_and_line(tmp_path, text, match):
    path = write(tmp_path, text)
    if match is None:
        load_file(path)
        return
    with pytest.raises(DataFormatError, match=match):
        load_file(path)


def test_ts_truncated_file(tmp_path):
    full = MULTIVARIATE_UNEQUAL.encode()
    cut = full[: full.index(b"0.5,0.5,0.5,0.5,0.5:1,1") + 20]  # stops inside the last case
    path = tmp_path / "cut.ts"
    path.write_bytes(cut)
    with pytest.raises(DataFormatError, match=r"cut\.ts:12: expected 3 dimension\(s\)"):
        load_file(path)


def test_ts_not_utf8(tmp_path):
    path = tmp_path / "bin.ts"
    path.write_bytes(b"@univariate true\n\xff\xfe\x00garbage\n")
    with pytest.raises(DataFormatError, match=r"bin\.ts:\d+: not UTF-8"):
        load_file(path)


# ----------------------------------------------------------------------------- .npz good
def test_npz_dense_float(tmp_path):
    x = np.random.default_rng(0).standard_normal((4, 6, 2)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x, y=np.array([0, 2, 1, 2]))
    ds, info = load_file(tmp_path / "d.npz")
    assert len(ds) == 4 and ds.lengths.tolist() == [6] * 4 and np.array_equal(ds.inputs[3], x[3])
    assert info["layout"] == "dense" and info["num_classes"] == 3 and info["input_dim"] == 2


def test_npz_concatenated_with_timestamps_and_string_labels(tmp_path):
    lengths = np.array([2, 3, 1])
    x = np.arange(12, dtype=np.float64).reshape(6, 2)
    t = np.array([0.0, 1.0, 0.0, 0.5, 2.0, 9.0])
    np.savez(tmp_path / "c.npz", x=x, lengths=lengths, t=t, y=np.array(["cat", "ant", "cat"]))
    ds, info = load_file(tmp_path / "c.npz")
    assert ds.lengths.tolist() == [2, 3, 1] and np.array_equal(ds.inputs[1], x[2:5].astype(np.float32))
    assert info["class_names"] == ["ant", "cat"] and ds.targets.tolist() == [1, 0, 1]
    np.testing.assert_array_equal(ds.timestamps[1], [0.0, 0.5, 2.0])
    assert info["layout"] == "concatenated" and info["timestamps"]


def test_npz_padded_tokens_and_class_names(tmp_path):
    x = np.array([[5, 6, 0, 0], [1, 2, 3, 4], [7, 0, 0, 0]], dtype=np.int32)
    np.savez(
        tmp_path / "p.npz",
        x=x,
        lengths=np.array([2, 4, 1]),
        y=np.array([1, 0, 1]),
        class_names=np.array(["neg", "pos"]),
        vocab_size=np.array(10),
    )
    ds, info = load_file(tmp_path / "p.npz")
    assert ds.is_tokens and [s.tolist() for s in ds.inputs] == [[5, 6], [1, 2, 3, 4], [7]]
    assert info["vocab_size"] == 10 and info["class_names"] == ["neg", "pos"] and info["input_dim"] is None


def test_npz_regression_and_per_step(tmp_path):
    x = np.zeros((2, 3, 1), np.float32)
    np.savez(tmp_path / "r.npz", x=x, y=np.array([0.5, 1.5]))
    ds, info = load_file(tmp_path / "r.npz")
    assert ds.targets.shape == (2, 1) and info["kind"] == "regression" and info["output_dim"] == 1
    y = np.ones((2, 3, 2), np.float32)
    y[0, 2] = np.nan  # past the first sequence's end: ignored
    np.savez(tmp_path / "s.npz", x=x, lengths=np.array([2, 3]), y=y)
    ds, info = load_file(tmp_path / "s.npz")
    assert info["per_step"] and ds.targets.shape == (2, 3, 2) and np.isfinite(ds.targets).all()


def test_save_npz_roundtrip(tmp_path):
    rng = np.random.default_rng(1)
    inputs = [rng.standard_normal((n, 3)).astype(np.float32) for n in (2, 5, 1)]
    times = [np.cumsum(rng.uniform(0.1, 1, n)) for n in (2, 5, 1)]
    ds = SequenceDataset(inputs, np.array([2, 0, 1]), times)
    save_npz(ds, tmp_path / "out.npz", class_names=["a", "b", "c"])
    back, info = load_file(tmp_path / "out.npz")
    assert info["class_names"] == ["a", "b", "c"] and back.targets.tolist() == [2, 0, 1]
    for a, b in zip(ds.inputs, back.inputs):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(ds.timestamps, back.timestamps):
        np.testing.assert_array_equal(a, b)
    tokens = SequenceDataset([np.array([1, 2]), np.array([3])], np.array([0.5, 1.0]))
    save_npz(tokens, tmp_path / "tok.npz", vocab_size=4)
    back, info = load_file(tmp_path / "tok.npz")
    assert [s.tolist() for s in back.inputs] == [[1, 2], [3]] and info["vocab_size"] == 4


# ----------------------------------------------------------------------------- .npz broken
def npz(tmp_path, **arrays):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    return path


X3 = np.zeros((3, 4, 2), np.float32)
Y3 = np.array([0, 1, 0])

BROKEN_NPZ = [
    (dict(x=X3), r"bad\.npz\[y\]: missing required key 'y'"),
    (dict(y=Y3), r"bad\.npz\[x\]: missing required key 'x'"),
    (dict(x=X3, y=np.array([0, 1])), r"bad\.npz\[y\]: has 2 targets .* for 3 sequences"),
    (
        dict(x=np.zeros((7, 2)), lengths=np.array([3, 3]), y=np.array([0, 1])),
        r"bad\.npz\[lengths\]: sum to 6 but x has 7 rows",
    ),
    (dict(x=X3, lengths=np.array([4, 5, 1]), y=Y3), r"bad\.npz\[lengths\]: sequence 1 has length 5 > padded length 4"),
    (dict(x=X3, lengths=np.array([4, 0, 1]), y=Y3), r"bad\.npz\[lengths\]: sequence 1 has length 0"),
    (dict(x=np.zeros((3, 4)), y=Y3), r"bad\.npz\[x\]: float features need shape \(N, L, D\)"),
    (dict(x=X3, y=Y3, extra=np.zeros(2)), r"bad\.npz\[extra\]: unexpected key"),
    (
        dict(x=np.where(np.arange(24).reshape(3, 4, 2) == 13, np.nan, 0.0), y=Y3),
        r"bad\.npz\[x\]: sequence 1: contains NaN or Inf",
    ),
    (dict(x=X3, y=np.array([0, -1, 0])), r"bad\.npz\[y\]: sequence 1: class label -1"),
    (dict(x=X3, y=Y3, class_names=np.array(["a"])), r"bad\.npz\[y\]: sequence 1: class label 1 but only 1 class_names"),
    (
        dict(x=X3, y=np.array(["a", "b", "z"]), class_names=np.array(["a", "b"])),
        r"bad\.npz\[y\]: sequence 2: label 'z'",
    ),
    (
        dict(x=X3, y=Y3, t=np.array([[0, 1, 2, 3], [0, 1, 1, 2], [0, 1, 2, 3]], float)),
        r"bad\.npz\[t\]: sequence 1: not strictly increasing at step 2",
    ),
    (dict(x=X3, y=Y3, t=np.zeros((3, 5))), r"bad\.npz\[t\]: shape \(3, 5\) does not match"),
    (dict(x=np.zeros((3, 4), np.int64) - 1, y=Y3), r"bad\.npz\[x\]: sequence 0: token ids must be >= 0"),
    (
        dict(x=np.ones((3, 4), np.int64) * 5, y=Y3, vocab_size=np.array(5)),
        r"bad\.npz\[vocab_size\]: is 5 but x holds token id 5",
    ),
    (dict(x=X3.astype(bool), y=Y3), r"bad\.npz\[x\]: dtype bool"),
    # the checks SequenceDataset makes, reported by key and sequence
    (dict(x=np.zeros((3, 4, 0)), y=Y3), r"bad\.npz\[x\]: sequence 0: zero features"),
    (dict(x=X3, y=np.array([0.5, np.inf, 1.0])), r"bad\.npz\[y\]: sequence 1: contains NaN or Inf"),
    (dict(x=X3, y=np.zeros((3, 3, 1))), r"bad\.npz\[y\]: per-step targets cover L=3 steps but sequence 0 has length 4"),
    (
        dict(x=X3, y=Y3, t=np.array([[0, 1, 2, 3], [0, 1, 2, np.nan], [0, 1, 2, 3]])),
        r"bad\.npz\[t\]: sequence 1: contains NaN",
    ),
]


@pytest.mark.parametrize("arrays, match", BROKEN_NPZ)
def test_npz_broken_files_name_file_and_key(tmp_path, arrays, match):
    with pytest.raises(DataFormatError, match=match):
        load_file(npz(tmp_path, **arrays))


def test_npz_pickled_object_arrays_are_rejected(tmp_path):
    ragged = np.empty(2, dtype=object)
    ragged[0], ragged[1] = np.zeros((3, 1)), np.zeros((5, 1))
    path = tmp_path / "obj.npz"
    np.savez(path, x=ragged, y=np.array([0, 1]))  # np.savez pickles object arrays
    with pytest.raises(DataFormatError, match=r"obj\.npz\[x\]: is an object array .*never"):
        load_file(path)


def test_npz_truncated_and_garbage(tmp_path):
    path = tmp_path / "full.npz"
    np.savez(path, x=np.zeros((50, 40, 3), np.float32), y=np.zeros(50, np.int64))
    data = path.read_bytes()
    cut = tmp_path / "cut.npz"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataFormatError, match=re.escape(str(cut))):
        load_file(cut)
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"this is not a zip archive at all")
    with pytest.raises(DataFormatError, match=r"junk\.npz: not a readable \.npz archive") as err:
        load_file(junk)
    assert "pickle" not in str(err.value)  # never a hint to allow unpickling


def test_npz_declaring_more_data_than_it_holds_is_refused_before_allocating(tmp_path):
    """A 10^6 x 10^6 float32 array (4 TB) declared by a few hundred bytes, stored or deflated."""
    import io
    import zipfile

    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (10**6, 10**6)})
    for compression in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        path = tmp_path / "bomb.npz"
        with zipfile.ZipFile(path, "w", compression) as archive:
            archive.writestr("x.npy", header.getvalue() + bytes(16))
            archive.writestr("y.npy", header.getvalue())
        assert path.stat().st_size < 600
        with pytest.raises(DataFormatError, match=r"bomb\.npz\[x\]: declares shape \(1000000, 1000000\)"):
            load_file(path)


def test_load_file_dispatch_errors(tmp_path):
    with pytest.raises(DataFormatError, match=r"unknown data file suffix '\.csv'"):
        load_file(tmp_path / "data.csv")
    with pytest.raises(FileNotFoundError, match="no such data file"):
        load_file(tmp_path / "missing.ts")
    np.savez(tmp_path / "ok.npz", x=X3, y=Y3)
    with pytest.raises(TypeError, match="take no options"):
        load_file(tmp_path / "ok.npz", missing="error")
