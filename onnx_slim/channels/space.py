"""Channel spaces: atoms, their union-find classes, and tensor-axis layouts.

An *atom* is a run of channels created by one producer (a Conv's output filters,
a Gemm's output features, a model input's channels). A *layout* says how the
channel axis of a tensor is made of atoms: a sequence of blocks, each block one
atom whose every channel covers ``repeat`` consecutive indices (1 for a plain
channel axis; H*W after a Flatten from NCHW).

A class can be *coarsened*: its channels then come in units of several
consecutive indices that are removed together (an attention head: the D
features of one head in the q, k and v projections). Each atom records its
unit; `expand` folds it into the blocks' `repeat`.

Ops tie atoms together (a residual Add ties the two branches' atoms), which is a
union-find over atoms: a *class* of tied atoms is one prunable channel group,
all of whose atoms have the same size; removing channel ``i`` of the class
removes channel ``i`` of every atom in it.

When an op needs a boundary inside an atom (a Split of a Conv's output, an Add
of a Concat with a single tensor), the atom's whole class is *cut* at that
position: each atom gets two children, and the children are tied pairwise.
Layouts keep naming the old atom; `leaves` resolves it to the children.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator


@dataclass(frozen=True)
class FreezeReason:
    """Why a class must not be pruned: which node froze it, and the reason."""

    node: str
    op_type: str
    reason: str

    def __str__(self) -> str:
        where = f"{self.node} ({self.op_type})" if self.op_type else self.node
        return f"{where}: {self.reason}"


@dataclass(frozen=True)
class Block:
    atom: int
    repeat: int = 1


Layout = tuple  # tuple[Block, ...]


class AtomTable:
    """All atoms of a model and the union-find over the leaf atoms."""

    def __init__(self) -> None:
        self.sizes: list[int] = []  # channels of each atom
        self.units: list[int] = []  # indices of a layout one channel of each atom covers (a head's D)
        self.children: dict[int, tuple[int, int]] = {}
        self.origins: list[str] = []  # the node that created each atom
        self._parent: list[int] = []
        self._members: dict[int, list[int]] = {}  # root -> leaf atoms of its class
        self._frozen: dict[int, list[FreezeReason]] = {}  # root -> reasons

    # -- atoms and classes -------------------------------------------------

    def new_atom(self, size: int, origin: str, unit: int = 1) -> int:
        if size <= 0:
            raise ValueError(f"atom of size {size}")
        atom = len(self.sizes)
        self.sizes.append(size)
        self.units.append(unit)
        self.origins.append(origin)
        self._parent.append(atom)
        self._members[atom] = [atom]
        return atom

    def find(self, atom: int) -> int:
        root = atom
        while self._parent[root] != root:
            root = self._parent[root]
        while self._parent[atom] != root:  # path compression
            self._parent[atom], atom = root, self._parent[atom]
        return root

    def union(self, a: int, b: int) -> int:
        """Tie two leaf atoms of equal size into one class; returns the new root."""
        if self.sizes[a] != self.sizes[b]:
            raise ValueError(f"cannot tie atoms of sizes {self.sizes[a]} and {self.sizes[b]}")
        root_a, root_b = self.find(a), self.find(b)
        if root_a == root_b:
            return root_a
        if len(self._members[root_a]) < len(self._members[root_b]):
            root_a, root_b = root_b, root_a
        self._parent[root_b] = root_a
        self._members[root_a].extend(self._members.pop(root_b))
        moved = self._frozen.pop(root_b, [])
        if moved:
            self._frozen.setdefault(root_a, []).extend(moved)
        return root_a

    def members(self, root: int) -> list[int]:
        return self._members[self.find(root)]

    def roots(self) -> list[int]:
        return sorted(self._members)

    def freeze(self, atom: int, reason: FreezeReason) -> None:
        for leaf in self.leaves(atom):
            reasons = self._frozen.setdefault(self.find(leaf), [])
            if reason not in reasons:
                reasons.append(reason)

    def frozen_reasons(self, root: int) -> list[FreezeReason]:
        return self._frozen.get(self.find(root), [])

    def leaves(self, atom: int) -> list[int]:
        """The leaf atoms an atom has been cut into, in channel order."""
        if atom not in self.children:
            return [atom]
        low, high = self.children[atom]
        return self.leaves(low) + self.leaves(high)

    def cut(self, leaf: int, position: int) -> None:
        """Cut the class of `leaf` so that every atom in it splits at `position`."""
        size = self.sizes[leaf]
        if not 0 < position < size:
            return
        root = self.find(leaf)
        reasons = self._frozen.pop(root, [])
        old_members = self._members.pop(root)
        lows, highs = [], []
        for atom in old_members:
            low = self.new_atom(position, self.origins[atom], self.units[atom])
            high = self.new_atom(size - position, self.origins[atom], self.units[atom])
            self.children[atom] = (low, high)
            lows.append(low)
            highs.append(high)
        for group in (lows, highs):
            for other in group[1:]:
                self.union(group[0], other)
            if reasons:
                self._frozen[self.find(group[0])] = list(reasons)
        # The old atoms are no longer leaves: park them outside every class.
        for atom in old_members:
            self._parent[atom] = atom

    def coarsen(self, leaf: int, factor: int) -> bool:
        """Make every `factor` consecutive channels of `leaf`'s class one channel (removed
        together); False, changing nothing, when the class's size is not a multiple of it."""
        members = self.members(leaf)
        if self.sizes[members[0]] % factor:
            return False
        for atom in members:
            self.sizes[atom] //= factor
            self.units[atom] *= factor
        return True

    def split_units(self, layout: Layout, unit: int, origin: str) -> Layout | None:
        """The layout of the outer axis when `layout`'s axis is split into [length / unit, unit]
        (a Reshape from H*D features to H heads of D): channel i of the result is the indices
        [i*unit, (i+1)*unit) of `layout`. Classes are coarsened until their channels cover
        whole units, and each is tied to a new atom (from `origin`) on the outer axis.
        None when a unit would straddle two classes or part of a channel."""
        while True:  # coarsening a class also changes its other blocks in the layout
            blocks = self.expand(layout)
            fine = next((block for block in blocks if block.repeat % unit), None)
            if fine is None:
                break
            if unit % fine.repeat or not self.coarsen(fine.atom, unit // fine.repeat):
                return None
        outer = []
        for block in blocks:
            atom = self.new_atom(self.sizes[block.atom], origin)
            self.union(atom, block.atom)
            outer.append(Block(atom, block.repeat // unit))
        return tuple(outer)

    # -- layouts -----------------------------------------------------------

    def expand(self, layout: Layout) -> list[Block]:
        """The layout with every atom resolved to its current leaves, whose units are folded
        into `repeat`: a block's channel covers `repeat` consecutive indices."""
        return [Block(leaf, block.repeat * self.units[leaf]) for block in layout for leaf in self.leaves(block.atom)]

    def length(self, layout: Layout) -> int:
        return sum(self.sizes[block.atom] * self.units[block.atom] * block.repeat for block in layout)

    def boundaries(self, layout: Layout) -> set[int]:
        positions, offset = set(), 0
        for block in self.expand(layout):
            positions.add(offset)
            offset += self.sizes[block.atom] * block.repeat
        positions.add(offset)
        return positions

    def ensure_boundary(self, layout: Layout, position: int) -> bool:
        """Cut atoms so that `position` (an index on the axis) falls between leaves.

        False when the position falls inside the `repeat` run of one channel
        (e.g. between the H*W features of one flattened channel): that cannot be cut.
        """
        offset = 0
        for block in self.expand(layout):
            span = self.sizes[block.atom] * block.repeat
            if offset < position < offset + span:
                inside = position - offset
                if inside % block.repeat:
                    return False
                self.cut(block.atom, inside // block.repeat)
                return True
            offset += span
        return True

    def sub_layout(self, layout: Layout, start: int, stop: int) -> Layout | None:
        """The part of `layout` covering axis indices [start, stop), or None if not cuttable."""
        if not (self.ensure_boundary(layout, start) and self.ensure_boundary(layout, stop)):
            return None
        picked, offset = [], 0
        for block in self.expand(layout):
            span = self.sizes[block.atom] * block.repeat
            if start <= offset and offset + span <= stop:
                picked.append(block)
            offset += span
        return tuple(picked)

    def unify(self, first: Layout, second: Layout, coarsen: bool = False) -> bool:
        """Tie two layouts of one axis length channel by channel; False if they cannot be.
        With `coarsen`, a class whose channels cover fewer indices than the channels they meet
        is coarsened to match (see `_coarsen_to_match`)."""
        if self.length(first) != self.length(second):
            return False
        # Cutting one class can add boundaries to the other layout: repeat to a fixpoint.
        for _ in range(64):
            wanted = self.boundaries(first) | self.boundaries(second)
            for position in sorted(wanted):
                if not (self.ensure_boundary(first, position) and self.ensure_boundary(second, position)):
                    return False
            if self.boundaries(first) == self.boundaries(second):
                break
        else:
            return False
        pairs = list(zip(self.expand(first), self.expand(second)))
        if any(a.repeat != b.repeat for a, b in pairs):
            return coarsen and self._coarsen_to_match(pairs) and self.unify(first, second, coarsen)
        if any(self.sizes[a.atom] != self.sizes[b.atom] for a, b in pairs):
            return False
        for a, b in pairs:
            self.union(a.atom, b.atom)
        return True

    def _coarsen_to_match(self, pairs) -> bool:
        """Aligned blocks whose channels cover different runs of indices (a whole conv group of
        filters against the plain channels of a squeeze-excite gate): coarsen the finer class
        so that its channels cover the coarser ones' runs. False when that cannot be done."""
        for a, b in pairs:
            fine, coarse = (a, b) if a.repeat < b.repeat else (b, a)
            if fine.repeat == coarse.repeat:
                continue
            if coarse.repeat % fine.repeat or self.find(fine.atom) == self.find(coarse.atom):
                return False
            return self.coarsen(fine.atom, coarse.repeat // fine.repeat)
        return False

    def freeze_layout(self, layout: Layout, reason: FreezeReason) -> None:
        for block in layout:
            self.freeze(block.atom, reason)

    def kept_indices(self, layout: Layout, removed: dict[int, Iterable[int]]) -> list[int]:
        """Axis indices that survive when class root -> channel indices are removed."""
        kept, offset = [], 0
        for block in self.expand(layout):
            size, repeat = self.sizes[block.atom], block.repeat
            dropped = set(removed.get(self.find(block.atom), ()))
            for channel in range(size):
                if channel not in dropped:
                    start = offset + channel * repeat
                    kept.extend(range(start, start + repeat))
            offset += size * repeat
        return kept

    def kept_length(self, layout: Layout, removed: dict[int, Iterable[int]]) -> int:
        total = 0
        for block in self.expand(layout):
            dropped = len(set(removed.get(self.find(block.atom), ())))
            total += (self.sizes[block.atom] - dropped) * block.repeat
        return total

    def classes_in(self, layout: Layout) -> Iterator[int]:
        for block in self.expand(layout):
            yield self.find(block.atom)


def repeat_layout(layout: Layout, factor: int) -> Layout:
    """Every channel now covers `factor` times as many consecutive indices."""
    return tuple(Block(block.atom, block.repeat * factor) for block in layout)
