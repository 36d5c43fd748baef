"""Tests of impl/layers.py and impl/layermap.py: the layer file format (round trip, every byte's
corruption and every truncation detected and named), names, values, the in-memory layer, and
the layer map's lookups and coverage against naive versions."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from impl.layermap import LayerMap, partition_range
from impl.layers import (
    DELTA,
    HEADER_SIZE,
    IMAGE,
    INDEX_ENTRY_SIZE,
    KEY_END,
    META,
    META_KEY,
    TOMBSTONE,
    CorruptLayer,
    FileLayer,
    InMemoryLayer,
    LayerName,
    decode_value,
    encode_value,
    layer_name,
    parse_layer_name,
    write_delta_layer,
    write_file_atomic,
    write_image_layer,
)
from impl.pagewal import PageDelta

P = 512  # page size used throughout: the code does not depend on it


def page(fill: int) -> bytes:
    return bytes([fill % 256]) * P


def small_memory_layer() -> InMemoryLayer:
    """Three keys, every value kind, several LSNs."""
    layer = InMemoryLayer(10)
    layer.put(0, 10, (IMAGE, page(1)))
    layer.put(3, 10, (IMAGE, page(2)))
    layer.put(META_KEY, 10, (META, (4, 1_000)))
    layer.put(0, 12, (DELTA, PageDelta(0, ((5, b"abc"), (100, b"z")))))
    layer.put(3, 12, (TOMBSTONE, None))
    layer.put(META_KEY, 12, (META, (3, 1_001)))
    layer.put(0, 15, (DELTA, PageDelta(0, ((0, b"q"),))))
    layer.put(META_KEY, 15, (META, (3, 1_002)))
    layer.frozen = True
    return layer


def written(tmp_path: Path) -> Path:
    return write_delta_layer(tmp_path, small_memory_layer(), P)


# ---------------------------------------------------------------------------------------------
# Names and values
# ---------------------------------------------------------------------------------------------


def test_names_round_trip_and_sort() -> None:
    delta = LayerName(False, 0, KEY_END, 1, 0x1234)
    image = LayerName(True, 8, 16, 0xABC, 0xABD)
    assert layer_name(delta) == "000000000-100000000__0000000000000001-0000000000001234"
    assert layer_name(image) == "000000008-000000010__0000000000000ABC"
    assert parse_layer_name(layer_name(delta)) == delta
    assert parse_layer_name(layer_name(image)) == image
    for bad in ("metadata", "x.tmp", "000000008-000000008__0000000000000ABC", "0-1__2"):
        assert parse_layer_name(bad) is None


@given(
    st.one_of(
        st.binary(min_size=P, max_size=P).map(lambda b: (IMAGE, b)),
        st.just((TOMBSTONE, None)),
        st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**64 - 1)).map(lambda m: (META, m)),
        st.lists(st.tuples(st.integers(0, 8), st.binary(min_size=1, max_size=8)), min_size=1, max_size=5).map(
            lambda rs: (DELTA, PageDelta(7, tuple(_sorted_ranges(rs))))
        ),
    )
)
@settings(max_examples=200, deadline=None)
def test_values_round_trip(value: tuple) -> None:
    key = META_KEY if value[0] == META else 7
    assert decode_value(key, value[0], encode_value(value), P) == value


def _sorted_ranges(raw: list[tuple[int, bytes]]) -> list[tuple[int, bytes]]:
    out, end = [], 0
    for gap, data in raw:
        out.append((end + gap, data))
        end += gap + len(data)
    return out


# ---------------------------------------------------------------------------------------------
# The file format
# ---------------------------------------------------------------------------------------------


def test_delta_layer_round_trip(tmp_path: Path) -> None:
    memory = small_memory_layer()
    path = write_delta_layer(tmp_path, memory, P)
    assert path.name == layer_name(LayerName(False, 0, META_KEY + 1, 10, 16))
    layer = FileLayer.open(path, P)
    layer.verify()
    assert len(layer) == len(memory) == 8
    assert list(layer.key_set()) == [0, 3, META_KEY]
    for key in (0, 3, META_KEY, 1):
        for upto in range(8, 18):
            for floor in (-1, 10, 12):
                assert list(layer.versions(key, upto, floor)) == _chain(memory.versions(key, upto, floor))
    assert [lsn for lsn, _ in layer.all_versions(META_KEY)] == [10, 12, 15]
    assert layer.file_size == path.stat().st_size
    layer.close()


def _chain(versions: object) -> list:
    """What a file layer yields: versions newest first down to the first initialising one."""
    out = []
    for lsn, value in versions:  # type: ignore[attr-defined]
        out.append((lsn, value))
        if value[0] != DELTA:
            break
    return out


def test_image_layer_round_trip(tmp_path: Path) -> None:
    entries = [(4, (IMAGE, page(4))), (6, (IMAGE, page(6)))]
    path = write_image_layer(tmp_path, 4, 8, 99, P, entries)
    layer = FileLayer.open(path, P)
    assert layer.name == LayerName(True, 4, 8, 99, 100)
    assert list(layer.versions(6, 99)) == [(99, (IMAGE, page(6)))]
    assert list(layer.versions(6, 98)) == []
    assert list(layer.versions(5, 99)) == []
    with pytest.raises(ValueError):
        write_image_layer(tmp_path, 4, 8, 99, P, [(4, (DELTA, PageDelta(4, ((0, b"x"),))))])
    with pytest.raises(ValueError):
        write_image_layer(tmp_path, 4, 8, 99, P, [(9, (IMAGE, page(1)))])


def test_every_corrupted_byte_is_detected_and_named(tmp_path: Path) -> None:
    path = written(tmp_path)
    original = path.read_bytes()
    # two images, deltas of 9 and 4 bytes, three META values of 3 bytes
    assert len(original) == HEADER_SIZE + 8 * INDEX_ENTRY_SIZE + P * 2 + 9 + 4 + 3 * 3
    fd = os.open(path, os.O_RDWR)  # damage in place: one open, not one per byte
    try:
        for i in range(len(original)):
            os.pwrite(fd, bytes([original[i] ^ (1 << (i % 8))]), i)
            with pytest.raises(CorruptLayer) as info:
                layer = FileLayer.open(path, P)
                try:
                    layer.verify()
                finally:
                    layer.close()
            assert str(path) in str(info.value), i
            assert info.value.path == path
            os.pwrite(fd, original[i : i + 1], i)
    finally:
        os.close(fd)


def test_every_truncation_is_detected(tmp_path: Path) -> None:
    path = written(tmp_path)
    original = path.read_bytes()
    for size in list(range(0, HEADER_SIZE + 2)) + list(range(HEADER_SIZE + 2, len(original), 7)):
        path.write_bytes(original[:size])
        with pytest.raises(CorruptLayer, match="truncated") as info:
            FileLayer.open(path, P)
        assert str(path) in str(info.value)
    path.write_bytes(original + b"\0")
    with pytest.raises(CorruptLayer, match="trailing bytes"):
        FileLayer.open(path, P)


def test_a_file_under_another_layers_name_is_refused(tmp_path: Path) -> None:
    path = written(tmp_path)
    other = tmp_path / layer_name(LayerName(False, 0, META_KEY + 1, 10, 17))
    os.rename(path, other)
    with pytest.raises(CorruptLayer, match="the header says .* the name says"):
        FileLayer.open(other, P)
    with pytest.raises(CorruptLayer, match="not a layer name"):
        FileLayer.open(tmp_path / "junk", P)


def test_page_size_mismatch_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CorruptLayer, match="page size 512, the timeline's is 4096"):
        FileLayer.open(written(tmp_path), 4096)


def test_corrupt_value_is_named_at_read_time(tmp_path: Path) -> None:
    """A damaged value passes open (header and index are fine) and fails when read."""
    path = written(tmp_path)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # the last META value
    path.write_bytes(bytes(data))
    layer = FileLayer.open(path, P)
    assert list(layer.versions(0, 12))  # other values still read
    with pytest.raises(CorruptLayer, match="value CRC mismatch for key 4294967295 at lsn 15"):
        list(layer.versions(META_KEY, 15))
    layer.close()


def test_write_file_atomic_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "f"
    write_file_atomic(target, b"one")
    write_file_atomic(target, b"two")
    assert target.read_bytes() == b"two"
    assert os.listdir(tmp_path) == ["f"]


# ---------------------------------------------------------------------------------------------
# The in-memory layer
# ---------------------------------------------------------------------------------------------


def test_in_memory_layer_order_and_freeze() -> None:
    layer = InMemoryLayer(5)
    assert layer.empty
    layer.put(1, 5, (IMAGE, page(1)))
    layer.put(2, 5, (IMAGE, page(2)))
    with pytest.raises(ValueError):
        layer.put(1, 5, (IMAGE, page(1)))  # same key and LSN twice
    with pytest.raises(ValueError):
        layer.put(1, 4, (IMAGE, page(1)))  # before the layer
    layer.put(1, 9, (TOMBSTONE, None))
    with pytest.raises(ValueError):
        layer.put(2, 8, (IMAGE, page(1)))  # LSNs go forward
    assert (layer.start_lsn, layer.end_lsn) == (5, 10)
    assert [lsn for lsn, _ in layer.versions(1, 100)] == [9, 5]
    assert [lsn for lsn, _ in layer.versions(1, 8)] == [5]
    assert [lsn for lsn, _ in layer.versions(1, 100, floor=5)] == [9]
    layer.frozen = True
    with pytest.raises(RuntimeError):
        layer.put(3, 11, (IMAGE, page(3)))


# ---------------------------------------------------------------------------------------------
# The layer map, against naive scans
# ---------------------------------------------------------------------------------------------


def _delta(tmp_path: Path, keys: list[int], start: int, end: int) -> FileLayer:
    layer = InMemoryLayer(start)
    for key in sorted(keys):
        layer.put(key, end - 1, (IMAGE, page(key)))
    layer.advance(end - 1)
    layer.frozen = True
    return FileLayer.open(write_delta_layer(tmp_path, layer, P), P)


def _image(tmp_path: Path, partition: int, lsn: int, pages: int) -> FileLayer:
    start, end = partition_range(partition, pages)
    return FileLayer.open(write_image_layer(tmp_path, start, end, lsn, P, [(start, (IMAGE, page(lsn)))]), P)


def test_layer_map_lookups_match_a_naive_scan(tmp_path: Path) -> None:
    rng = random.Random(8)
    pages = 4
    layers = LayerMap(pages)
    deltas: list[FileLayer] = []
    images: list[FileLayer] = []
    lsn = 0
    for _ in range(30):
        keys = rng.sample(range(16), rng.randint(1, 5))
        width = rng.randint(1, 20)
        deltas.append(_delta(tmp_path, keys, lsn + 1, lsn + 1 + width))
        layers.add(deltas[-1])
        lsn += width
        if rng.random() < 0.4:
            images.append(_image(tmp_path, rng.randrange(4), lsn, pages))
            layers.add(images[-1])
    for _ in range(500):
        key, at = rng.randrange(16), rng.randint(0, lsn + 3)
        naive = [i for i in images if i.name.key_start <= key < i.name.key_end and i.name.lsn <= at]
        expected = max(naive, key=lambda i: i.name.lsn) if naive else None
        assert layers.newest_image(key, at) is expected
        floor = -1 if expected is None else expected.name.lsn
        naive_deltas = sorted(
            (d for d in deltas if d.name.lsn_start <= at and d.name.lsn_end - 1 > floor),
            key=lambda d: -d.name.lsn_start,
        )
        assert list(layers.deltas_between(floor, at)) == naive_deltas
        touching = [d for d in naive_deltas if any(k // pages == key // pages for k in d.key_set())]
        assert list(layers.deltas_between(floor, at, key)) == touching
    # covered() against its definition
    for layer in layers.layers():
        lo = layer.name.lsn_end - 1
        for hi in (lo, lo + 10, lsn):
            naive_cover = all(
                any(
                    i is not layer and i.name.key_start // pages == p and lo <= i.name.lsn <= hi
                    for i in images
                )
                for p in layers.footprint(layer)
            )
            assert layers.covered(layer, lo, hi) == naive_cover
    for layer in deltas + images:
        layer.close()


def test_layer_map_refuses_overlapping_deltas_and_unaligned_images(tmp_path: Path) -> None:
    layers = LayerMap(4)
    layers.add(_delta(tmp_path, [1], 1, 10))
    with pytest.raises(ValueError, match="overlaps"):
        layers.add(_delta(tmp_path, [2], 5, 12))
    unaligned = FileLayer.open(write_image_layer(tmp_path, 2, 6, 9, P, []), P)
    with pytest.raises(ValueError, match="not one partition"):
        layers.add(unaligned)
    image = _image(tmp_path, 0, 9, 4)
    layers.add(image)
    assert layers.footprint(image) == {0}
    layers.remove(image)
    assert layers.newest_image(0, 100) is None
