"""The layer map: which historic layers of one timeline may hold key K at LSN L.

Theory of operation
===================

A timeline's historic layers (its files; neon-protocol.md §8.3) are of two shapes, and the
map indexes each the way reads use it:

1. Delta layers partition the timeline's LSN axis: each flush writes the frozen layer's
   ``[lsn_start, lsn_end)``, which starts where the previous one ended (a restart deletes
   "future" layers past ``disk_consistent_lsn`` and re-ingests from there).  So deltas are
   kept sorted by ``lsn_start``, once overall and once per partition they touch, and a read
   walks its partition's list newest first from the one holding L, each answering by a
   bisect in its index.  A cold partition under many flushes is not slowed by them.
2. Image layers cover one *partition*, the aligned key range ``[p*P, (p+1)*P)`` of
   ``partition_pages = P`` keys, at one LSN, always a delta boundary (compaction writes them
   at ``disk_consistent_lsn``).  They are indexed per partition, sorted by LSN, so "the
   newest image of K's partition at or below L" is a dict lookup and a bisect.

A read of K at L (`Timeline.get_page`) takes the newest image I of K's partition at or below
L, then walks only the deltas above I: with compaction bounding the deltas stacked above an
image (``image_threshold``), a read costs O(threshold) bisects however large the timeline is,
never a scan of every layer.

For GC the map answers the one coverage question of neon-protocol.md §8.7: is every
partition a layer touches (its *footprint*) covered by an image at an LSN in
``[lo, hi]``?  A layer's footprint is computed once, from its index, when it is added.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator

from impl.layers import FileLayer, KEY_END, LayerName, layer_name

__all__ = ["LayerMap", "partition_range"]


def partition_range(partition: int, partition_pages: int) -> tuple[int, int]:
    """The key range ``[start, end)`` of a partition."""
    start = partition * partition_pages
    return start, min(start + partition_pages, KEY_END)


class LayerMap:
    """One timeline's historic (file) layers.  Not thread-safe: mutated by the owner only."""

    def __init__(self, partition_pages: int) -> None:
        self.partition_pages = partition_pages
        self._delta_starts: list[int] = []
        self._deltas: list[FileLayer] = []
        # partition -> (sorted lsn_starts, deltas in the same order) of the deltas touching it
        self._deltas_by_partition: dict[int, tuple[list[int], list[FileLayer]]] = {}
        # partition -> (sorted image LSNs, layers in the same order)
        self._images: dict[int, tuple[list[int], list[FileLayer]]] = {}
        self._footprints: dict[str, frozenset[int]] = {}

    # -- mutation ----------------------------------------------------------------------------

    def add(self, layer: FileLayer) -> None:
        """Add a layer.

        Raises:
            ValueError: an image not aligned to a partition, or a delta overlapping another
                delta's LSN range (the caller names the file).
        """
        name = layer.name
        if name.image:
            partition = self._image_partition(name)
            lsns, layers = self._images.setdefault(partition, ([], []))
            i = bisect.bisect_left(lsns, name.lsn)
            if i < len(lsns) and lsns[i] == name.lsn:
                raise ValueError(f"a second image of partition {partition} at lsn {name.lsn}")
            lsns.insert(i, name.lsn)
            layers.insert(i, layer)
            self._footprints[layer_name(name)] = frozenset((partition,))
        else:
            i = bisect.bisect_left(self._delta_starts, name.lsn_start)
            if (i > 0 and self._deltas[i - 1].name.lsn_end > name.lsn_start) or (
                i < len(self._deltas) and self._deltas[i].name.lsn_start < name.lsn_end
            ):
                raise ValueError(f"delta layer {layer_name(name)} overlaps another delta layer's LSN range")
            self._delta_starts.insert(i, name.lsn_start)
            self._deltas.insert(i, layer)
            p = self.partition_pages
            footprint = frozenset(k // p for k in layer.key_set())
            self._footprints[layer_name(name)] = footprint
            for partition in footprint:
                starts, layers = self._deltas_by_partition.setdefault(partition, ([], []))
                j = bisect.bisect_left(starts, name.lsn_start)
                starts.insert(j, name.lsn_start)
                layers.insert(j, layer)

    def remove(self, layer: FileLayer) -> None:
        name = layer.name
        if name.image:
            lsns, layers = self._images[name.key_start // self.partition_pages]
            i = layers.index(layer)
            del lsns[i], layers[i]
        else:
            i = self._deltas.index(layer)
            del self._delta_starts[i], self._deltas[i]
            for partition in self._footprints[layer_name(name)]:
                starts, layers = self._deltas_by_partition[partition]
                j = layers.index(layer)
                del starts[j], layers[j]
        del self._footprints[layer_name(name)]

    def _image_partition(self, name: LayerName) -> int:
        partition, remainder = divmod(name.key_start, self.partition_pages)
        if remainder or partition_range(partition, self.partition_pages) != (name.key_start, name.key_end):
            raise ValueError(
                f"image layer {layer_name(name)} is not one partition of {self.partition_pages} keys"
            )
        return partition

    # -- reads -------------------------------------------------------------------------------

    def newest_image(self, key: int, lsn: int) -> FileLayer | None:
        """The newest image layer covering `key` at or below `lsn`."""
        entry = self._images.get(key // self.partition_pages)
        if entry is None:
            return None
        lsns, layers = entry
        i = bisect.bisect_right(lsns, lsn)
        return layers[i - 1] if i else None

    def deltas_between(self, floor: int, upto: int, key: int | None = None) -> Iterator[FileLayer]:
        """Delta layers that may hold LSNs in ``(floor, upto]`` (and `key`, if given: those
        touching its partition), newest first."""
        if key is None:
            starts, deltas = self._delta_starts, self._deltas
        else:
            entry = self._deltas_by_partition.get(key // self.partition_pages)
            if entry is None:
                return
            starts, deltas = entry
        i = bisect.bisect_right(starts, upto)
        while i > 0:
            i -= 1
            layer = deltas[i]
            if layer.name.lsn_end - 1 <= floor:
                return
            yield layer

    def layers(self) -> list[FileLayer]:
        """Every layer: deltas by LSN, then images by partition and LSN."""
        out = list(self._deltas)
        for partition in sorted(self._images):
            out.extend(self._images[partition][1])
        return out

    @property
    def deltas(self) -> list[FileLayer]:
        return list(self._deltas)

    def footprint(self, layer: FileLayer) -> frozenset[int]:
        """The partitions `layer` holds keys of."""
        return self._footprints[layer_name(layer.name)]

    def image_lsns(self, partition: int) -> list[int]:
        entry = self._images.get(partition)
        return list(entry[0]) if entry else []

    def covered(self, layer: FileLayer, lo: int, hi: int) -> bool:
        """Whether every partition of `layer`'s footprint has an image, other than `layer`,
        at an LSN in ``[lo, hi]``: then no read at ``hi`` or above needs `layer`'s versions
        at or below ``lo``."""
        for partition in self._footprints[layer_name(layer.name)]:
            entry = self._images.get(partition)
            if entry is None:
                return False
            lsns, layers = entry
            i = bisect.bisect_right(lsns, hi)
            while i > 0 and layers[i - 1] is layer:
                i -= 1
            if i == 0 or lsns[i - 1] < lo:
                return False
        return True

    def deltas_above(self, partition: int, lsn: int) -> int:
        """How many delta layers with versions above `lsn` touch `partition` (its chain length,
        in layers, over its newest image)."""
        return sum(1 for _ in self.deltas_between(lsn, 2**64, partition * self.partition_pages))
