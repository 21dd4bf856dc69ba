"""Edge checks of client input (core/text.py, core/vectors.py, core/filters.py, core/spec.py,
server/metadata.validate_meta, server/convert.filter_from_proto): each hostile class is refused
with InvalidArgument, and what is accepted comes out exactly as meant."""

from __future__ import annotations

import numpy as np
import pytest

from core import filters, limits
from core.errors import InvalidArgument
from core.items import ItemMeta, validate_meta
from core.spec import Metric, make_spec, validate_name
from core.text import check_text, quote
from core.vectors import MAX_NORM, prepare_batch, prepare_for_metric, unpack_matrix, validate_ids
from server.convert import filter_from_proto
from vsproto.common import matrix_from_proto
from vsproto.v1 import search_service_pb2 as pb
from vsproto.v1 import types_pb2


def in_filter(values: list[pb.AttributeValue]) -> pb.Filter:
    message = pb.Filter(condition=pb.Condition(field="tags"))
    getattr(message.condition, "in").values.extend(values)
    return message


def test_text_refuses_nul_surrogates_and_long_values_and_quotes_briefly() -> None:
    assert check_text("héllo", "tag", 8) == "héllo"
    assert check_text("", "uri", 8) == ""
    with pytest.raises(InvalidArgument, match="must not be empty"):
        check_text("", "tag", 8, allow_empty=False)
    with pytest.raises(InvalidArgument, match="NUL"):
        check_text("a\x00b", "tag", 8)
    with pytest.raises(InvalidArgument, match="not valid UTF-8"):
        check_text("a\udc80", "tag", 8)
    with pytest.raises(InvalidArgument, match="longer than 8 bytes"):
        check_text("ééééé", "tag", 8)  # 5 characters, 10 bytes
    with pytest.raises(InvalidArgument) as info:
        check_text("x" * 100_000, "uri", 4096)
    assert len(str(info.value)) < 200, "an error quotes a short prefix of the input"
    assert quote("y" * 1000).endswith("...") and len(quote("y" * 1000)) < 50


def test_ids_are_checked_and_batches_are_bounded() -> None:
    assert validate_ids(["a", "é" * 128]) == ["a", "é" * 128]
    for bad in ("", "a\x00", "é" * 129):
        with pytest.raises(InvalidArgument):
            validate_ids([bad])
    with pytest.raises(InvalidArgument, match="at most 3"):
        validate_ids(["a", "b", "c", "d"], max_items=3)


def test_collection_names_must_match_in_full() -> None:
    assert validate_name("imgs_v1.2-a") == "imgs_v1.2-a"
    for bad in ("imgs\n", "imgs\x00", "-x", ".x", "a" * 129, "a b", ""):
        with pytest.raises(InvalidArgument):
            validate_name(bad)


def test_metadata_strings_names_and_ints() -> None:
    validate_meta("i", ItemMeta("s3://x", ["t"], {"n": 1, "s": "é", "d": 1.5, "b": True}))
    bad = [
        ItemMeta(uri="s3://\x00"),
        ItemMeta(uri="u" * (limits.MAX_URI_BYTES + 1)),
        ItemMeta(tags=["ok", "\x00"]),
        ItemMeta(tags=[""]),
        ItemMeta(tags=[str(i) for i in range(limits.MAX_TAGS + 1)]),
        ItemMeta(attributes={"name\n": 1}),
        ItemMeta(attributes={"s": "v\x00"}),
        ItemMeta(attributes={"s": "v" * (limits.MAX_ATTRIBUTE_STRING_BYTES + 1)}),
        ItemMeta(attributes={"n": 2**63}),
        ItemMeta(attributes={"d": float("nan")}),
    ]
    for meta in bad:
        with pytest.raises(InvalidArgument):
            validate_meta("item", meta)


def packed(matrix: np.ndarray, dtype: str = "<f4") -> bytes:
    return np.ascontiguousarray(matrix, dtype=dtype).tobytes()


def test_declared_rows_and_element_types() -> None:
    rng = np.random.default_rng(5)
    m = rng.standard_normal((3, 4))
    as32 = unpack_matrix(4, packed(m), [], "v", rows=3)
    assert as32.shape == (3, 4) and np.array_equal(as32, m.astype(np.float32))
    as64 = unpack_matrix(4, packed(m, "<f8"), [], "v", rows=3, element_type="float64")
    assert as64.dtype == np.float32 and np.array_equal(as64, m.astype(np.float32))
    with pytest.raises(InvalidArgument, match="FLOAT64"):  # float64 bytes sent as float32, rows declared
        unpack_matrix(4, packed(m, "<f8"), [], "v", rows=3)
    with pytest.raises(InvalidArgument, match="FLOAT32"):  # float32 bytes declared float64
        unpack_matrix(4, packed(m), [], "v", rows=3, element_type="float64")
    with pytest.raises(InvalidArgument, match="rows x dimension"):
        unpack_matrix(4, packed(m), [], "v", rows=2)
    with pytest.raises(InvalidArgument, match="rows x dimension"):
        unpack_matrix(4, b"", m.astype(np.float32).ravel().tolist(), "v", rows=2)
    with pytest.raises(InvalidArgument, match="packed bytes only"):
        unpack_matrix(4, b"", [1.0] * 4, "v", element_type="float64")
    with pytest.raises(InvalidArgument, match="beyond float32"):
        unpack_matrix(1, packed(np.array([[1e300]]), "<f8"), [], "v", element_type="float64")
    # undeclared rows: float64 read as float32 gives twice the rows, and the batch names the cause
    spec = make_spec("c", 4, types_pb2.METRIC_L2)
    doubled = unpack_matrix(4, packed(m, "<f8"), [], "v")
    with pytest.raises(InvalidArgument, match="float64"):
        prepare_batch(["a", "b", "c"], doubled, spec)
    message = types_pb2.Vectors(
        dimension=4, packed=packed(m, "<f8"), rows=3, element_type=types_pb2.ELEMENT_TYPE_FLOAT64
    )
    assert np.array_equal(matrix_from_proto(message, "v"), m.astype(np.float32))


def test_norms_are_computed_in_float64() -> None:
    huge = np.full((1, 8), 1e30, dtype=np.float32)  # its float32 squared norm overflows
    unit = prepare_for_metric(huge, Metric.COSINE, "v")
    assert np.allclose(np.linalg.norm(unit, axis=1), 1.0) and np.all(unit > 0), "never stored as zeros"
    tiny = np.full((1, 8), 1e-30, dtype=np.float32)  # its float32 squared norm underflows to 0
    assert np.allclose(np.linalg.norm(prepare_for_metric(tiny, Metric.COSINE, "v"), axis=1), 1.0)
    for metric in (Metric.L2, Metric.INNER_PRODUCT):
        with pytest.raises(InvalidArgument, match="overflow"):
            prepare_for_metric(huge, metric, "v")
        ok = np.full((1, 8), MAX_NORM / 8, dtype=np.float32)
        assert prepare_for_metric(ok, metric, "v") is ok


def condition(i: int) -> pb.Filter:
    return pb.Filter(condition=pb.Condition(field="tags", eq=pb.AttributeValue(string_value=f"t{i}")))


def test_filter_trees_are_bounded_in_nodes_values_and_strings() -> None:
    fits = pb.Filter(any_of=pb.FilterList(filters=[condition(i) for i in range(limits.MAX_FILTER_NODES - 1)]))
    assert filter_from_proto(fits).size() == limits.MAX_FILTER_NODES
    too_many = pb.Filter(any_of=pb.FilterList(filters=[condition(i) for i in range(limits.MAX_FILTER_NODES)]))
    with pytest.raises(InvalidArgument, match="nodes"):
        filter_from_proto(too_many)
    half = limits.MAX_FILTER_VALUES // 2 + 1
    values = [pb.AttributeValue(string_value=str(i)) for i in range(half)]
    in_list = in_filter(values)
    with pytest.raises(InvalidArgument, match="values in all"):
        filter_from_proto(pb.Filter(all_of=pb.FilterList(filters=[in_list, in_list])))
    with pytest.raises(InvalidArgument, match="values in all"):  # the domain tree enforces it too
        leaf = filter_from_proto(in_list)
        filters.AllOf((leaf, leaf))
    nul = pb.Filter(condition=pb.Condition(field="uri", eq=pb.AttributeValue(string_value="a\x00")))
    with pytest.raises(InvalidArgument, match="NUL"):
        filter_from_proto(nul)
    long_field = pb.Filter(condition=pb.Condition(field="x" * 100_000, eq=pb.AttributeValue(int_value=1)))
    with pytest.raises(InvalidArgument) as info:
        filter_from_proto(long_field)
    assert len(str(info.value)) < 300
