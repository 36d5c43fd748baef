"""The control file (impl/control.py): round trip, atomic store, every kind of damage refused."""

from __future__ import annotations

import struct

import cbor2
import crc32c
import pytest

from impl.control import (
    CONTROL_NAME,
    FORMAT_VERSION,
    MAGIC,
    ControlState,
    FileControlStorage,
    encode_control,
)
from impl.storage import ControlStorage, CorruptStorage

STATE = ControlState(
    node_id="a1",
    term=5,
    term_history=((0, 0), (2, 100), (5, 4096)),
    flush_lsn=5000,
    commit_lsn=4200,
    truncate_pending_lsn=None,
    backup_lsn=0,
)
NEWER = ControlState(
    node_id="a1",
    term=6,
    term_history=((0, 0), (6, 4200)),
    flush_lsn=4200,
    commit_lsn=4200,
    truncate_pending_lsn=4200,
    backup_lsn=16,
)


@pytest.fixture
def storage(tmp_path):
    return FileControlStorage(tmp_path)


def _body(**changes):
    """The CBOR body of STATE as a dict, with some fields changed (a value of ... deletes)."""
    body = {
        "node_id": STATE.node_id,
        "term": STATE.term,
        "term_history": [list(e) for e in STATE.term_history],
        "flush_lsn": STATE.flush_lsn,
        "commit_lsn": STATE.commit_lsn,
        "truncate_pending_lsn": STATE.truncate_pending_lsn,
        "backup_lsn": STATE.backup_lsn,
    }
    for key, value in changes.items():
        if value is ...:
            del body[key]
        else:
            body[key] = value
    return body


def _frame(body: bytes, *, magic=MAGIC, version=FORMAT_VERSION) -> bytes:
    """A well-formed file (right length and CRC) around any body bytes."""
    head = struct.pack(">4sHI", magic, version, len(body)) + body
    return head + struct.pack(">I", crc32c.crc32c(head))


def _assert_corrupt(storage, raw: bytes, problem: str) -> None:
    storage.path.write_bytes(raw)
    with pytest.raises(CorruptStorage) as info:
        storage.load()
    message = str(info.value)
    assert message.startswith(f"control file {storage.path}: "), message
    assert problem in message, message


# -- Normal operation -----------------------------------------------------------------------


def test_implements_the_protocol(storage):
    assert isinstance(storage, ControlStorage)


def test_fresh_directory_loads_none(storage):
    assert storage.load() is None


def test_round_trip(storage):
    storage.store(STATE)
    assert storage.load() == STATE
    storage.store(NEWER)
    assert storage.load() == NEWER
    assert FileControlStorage(storage.directory).load() == NEWER
    assert not storage.tmp_path.exists()


def test_file_layout(storage):
    storage.store(STATE)
    raw = storage.path.read_bytes()
    magic, version, length = struct.unpack_from(">4sHI", raw)
    assert (magic, version, len(raw)) == (b"PXWC", 1, 10 + length + 4)
    assert raw[-4:] == crc32c.crc32c(raw[:-4]).to_bytes(4, "big")
    assert cbor2.loads(raw[10:-4]) == _body()
    assert raw == encode_control(STATE)  # deterministic bytes


def test_missing_directory_is_not_a_fresh_node(tmp_path):
    with pytest.raises(FileNotFoundError):
        FileControlStorage(tmp_path / "nope").load()


# -- Crashes during store -------------------------------------------------------------------


def test_leftover_tmp_is_ignored_and_removed(storage):
    storage.store(STATE)
    storage.tmp_path.write_bytes(b"garbage from a crashed store")
    assert storage.load() == STATE
    assert not storage.tmp_path.exists()


def test_crash_mid_store_keeps_old_state(storage):
    # A store that crashed after writing part of control.tmp, before its rename.
    storage.store(STATE)
    new = encode_control(NEWER)
    for cut in (0, 1, len(new) // 2, len(new) - 1, len(new)):
        storage.tmp_path.write_bytes(new[:cut])
        assert storage.load() == STATE


def test_crash_during_first_store_is_a_fresh_node(storage):
    storage.tmp_path.write_bytes(encode_control(STATE)[:7])
    assert storage.load() is None
    assert not storage.tmp_path.exists()


def test_store_over_leftover_tmp(storage):
    storage.tmp_path.write_bytes(b"x" * 10_000)  # longer than the new file: must be truncated
    storage.store(STATE)
    assert storage.load() == STATE


# -- Damage ---------------------------------------------------------------------------------


def test_flipped_body_byte(storage):
    raw = bytearray(encode_control(STATE))
    raw[20] ^= 0x01
    _assert_corrupt(storage, bytes(raw), "CRC mismatch")


def test_flipped_crc_byte(storage):
    raw = bytearray(encode_control(STATE))
    raw[-1] ^= 0x80
    _assert_corrupt(storage, bytes(raw), "CRC mismatch")


@pytest.mark.parametrize("cut", [0, 3, 9, 10, 11, 50, -5, -1])
def test_truncated_file(storage, cut):
    raw = encode_control(STATE)
    _assert_corrupt(storage, raw[:cut], "truncated")


def test_trailing_bytes(storage):
    _assert_corrupt(storage, encode_control(STATE) + b"\x00", "trailing bytes")


def test_length_field_damaged(storage):
    raw = bytearray(encode_control(STATE))
    raw[9] ^= 0x01  # low byte of the body length
    _assert_corrupt(storage, bytes(raw), "header says")


def test_wrong_magic(storage):
    raw = b"PXWD" + encode_control(STATE)[4:]
    _assert_corrupt(storage, raw, "wrong magic")


def test_future_version(storage):
    _assert_corrupt(storage, _frame(cbor2.dumps(_body()), version=2), "unknown format version 2")


def test_garbage_cbor(storage):
    _assert_corrupt(storage, _frame(b"\xff\xff\x1f"), "bad CBOR body")


def test_cbor_followed_by_garbage(storage):
    _assert_corrupt(storage, _frame(cbor2.dumps(_body()) + b"\x00"), "after the map")


def test_body_not_a_map(storage):
    _assert_corrupt(storage, _frame(cbor2.dumps([1, 2, 3])), "expected a map")


@pytest.mark.parametrize("field", ["node_id", "term", "term_history", "flush_lsn", "commit_lsn",
                                   "truncate_pending_lsn", "backup_lsn"])
def test_missing_field(storage, field):
    _assert_corrupt(storage, _frame(cbor2.dumps(_body(**{field: ...}))), f"missing field '{field}'")


def test_unexpected_field(storage):
    _assert_corrupt(storage, _frame(cbor2.dumps(_body(vote="p1"))), "unexpected field")


@pytest.mark.parametrize(
    "changes",
    [
        {"term": "5"},
        {"term": True},
        {"term": 5.0},
        {"term": -1},
        {"node_id": 1},
        {"flush_lsn": None},
        {"truncate_pending_lsn": "x"},
        {"backup_lsn": -3},
        {"term_history": {"0": 0}},
        {"term_history": [[0, 0, 1]]},
        {"term_history": [(0, 0), 7]},
        {"term_history": []},
        {"term_history": [[1, 0]]},  # must start with term 0
        {"term_history": [[0, 0], [3, 10], [2, 20]]},  # terms out of order
        {"term_history": [[0, 0], [3, 10], [4, 5]]},  # LSNs going back
        {"term_history": [[0, 0], [9, 10]]},  # history ahead of the term
    ],
)
def test_wrong_type_or_value(storage, changes):
    _assert_corrupt(storage, _frame(cbor2.dumps(_body(**changes))), "bad field")


def test_state_checks_itself():
    with pytest.raises(TypeError):
        ControlState(node_id="a1", term=1, term_history=[(0, 0)], flush_lsn=0, commit_lsn=0,
                     truncate_pending_lsn=None)
    with pytest.raises(ValueError):
        ControlState(node_id="a1", term=1, term_history=((0, 0),), flush_lsn=-1, commit_lsn=0,
                     truncate_pending_lsn=None)


def test_damage_never_passes_silently(storage):
    # Every single-byte flip anywhere in the file is refused, never loaded as some state.
    raw = encode_control(STATE)
    for i in range(len(raw)):
        damaged = bytearray(raw)
        damaged[i] ^= 0x04
        storage.path.write_bytes(bytes(damaged))
        with pytest.raises(CorruptStorage, match=CONTROL_NAME):
            storage.load()
