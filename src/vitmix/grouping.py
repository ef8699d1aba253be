"""Which dense hidden units go to which SCHEME group: the grouping that keeps the most of a trained
MLP's weights on the block diagonal.

A block-diagonal MLP with G groups connects input block I_g to hidden group g to output block
O_g. Copying a dense MLP into it keeps, of each hidden unit u placed in group g, the part of its
fc1 row that reads I_g and the part of its fc2 column that writes O_g; the rest is dropped.

The hidden units are free to reorder (fc1's rows and fc2's columns move together and the
function is the same), so the choice of which units share a group costs nothing at run time.
Placing h units in G groups of h/G, each unit scoring ``score[u, g]`` in group g, is a
transportation problem; :func:`assign_units` solves it exactly. When the SCHEME MLP is wider than
the dense one (E=8 from a dense E=4), each dense unit is placed in ``copies`` distinct groups:
every copy keeps another block of the same row and column.

The input and output channels are the residual stream: regrouping them is not free (see
:func:`regrouped_channels_bound`).
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["assign_units", "block_scores", "diagonal_membership", "hidden_index",
           "kept_fractions", "regrouped_channels_bound"]


def block_scores(w1: torch.Tensor, w2: torch.Tensor, groups: int,
                 in_groups: torch.Tensor | None = None,
                 out_groups: torch.Tensor | None = None) -> torch.Tensor:
    """(h, G) float64: the share of fc1's and of fc2's squared weight each hidden unit keeps in
    each group, summed (each matrix counts alike, whatever its scale).

    ``w1`` (h, in) and ``w2`` (out, h) are the dense weights; ``in_groups`` / ``out_groups`` give
    each input / output channel's group (default: contiguous blocks, as SchemeMlp reads them).
    """
    w1, w2 = w1.detach().double(), w2.detach().double()
    in_groups = _contiguous(w1.shape[1], groups) if in_groups is None else in_groups
    out_groups = _contiguous(w2.shape[0], groups) if out_groups is None else out_groups
    e1 = w1.pow(2) / w1.pow(2).sum().clamp_min(1e-300)
    e2 = w2.pow(2) / w2.pow(2).sum().clamp_min(1e-300)
    into = torch.zeros(w1.shape[0], groups, dtype=torch.float64)
    into.index_add_(1, in_groups, e1)  # (h, G): fc1 energy of unit u read from block g
    out = torch.zeros(groups, w2.shape[1], dtype=torch.float64)
    out.index_add_(0, out_groups, e2)  # (G, h): fc2 energy of unit u written to block g
    return into + out.t()


def _contiguous(width: int, groups: int) -> torch.Tensor:
    return torch.arange(width) // (width // groups)


def assign_units(score: torch.Tensor, copies: int = 1) -> torch.Tensor:
    """The membership (h, G) bool that maximises the total score: every unit in exactly
    ``copies`` distinct groups, every group holding h * copies / G units.

    Exact: units are added one at a time, each placed along a shortest augmenting path (a unit
    may push another unit on to a third group, and so on), the row-by-row Hungarian method on
    a graph of G group nodes. Each step keeps the best placement of the units added so far.
    Costs O(h * G * (h + G^2)) numpy work: well under a second for a ViT-B layer.
    """
    cost = -score.detach().double().cpu().numpy()
    units, groups = cost.shape
    if not 1 <= copies <= groups:
        raise ValueError(f"copies must be 1 to the number of groups {groups}, got {copies}")
    if (units * copies) % groups:
        raise ValueError(f"{units} units x {copies} copies do not split into {groups} equal "
                         f"groups")
    capacity = units * copies // groups
    if groups == 2 and copies == 1:
        # Two groups: the units that lose least by going to group 0 go there, exactly.
        member = np.zeros((units, groups), dtype=bool)
        first = np.argsort(cost[:, 0] - cost[:, 1], kind="stable")[:capacity]
        member[first, 0] = True
        member[:, 1] = ~member[:, 0]
        return torch.from_numpy(member)
    member = np.zeros((units, groups), dtype=bool)
    count = np.zeros(groups, dtype=np.int64)
    # Strongest preferences first: shorter paths, the same optimum.
    order = np.argsort(cost.min(axis=1) - cost.mean(axis=1), kind="stable")
    for u in order:
        for _ in range(copies):
            _place(u, cost, member, count, capacity)
    return torch.from_numpy(member)


def _place(u: int, cost: np.ndarray, member: np.ndarray, count: np.ndarray,
           capacity: int) -> None:
    """Add one copy of unit ``u`` along the cheapest path to a group with a free slot."""
    groups = cost.shape[1]
    # move[a, b]: the cheapest unit to move from group a to group b, and what the move costs.
    move_cost = np.full((groups, groups), np.inf)
    move_unit = np.full((groups, groups), -1, dtype=np.int64)
    for a in range(groups):
        held = np.flatnonzero(member[:, a])
        if held.size == 0:
            continue
        delta = cost[held] - cost[held, a][:, None]
        delta[member[held]] = np.inf  # a unit cannot join a group it is already in
        best = delta.argmin(axis=0)
        move_cost[a] = delta[best, np.arange(groups)]
        move_unit[a] = held[best]
    dist = np.where(member[u], np.inf, cost[u])
    pred = np.full(groups, -1, dtype=np.int64)
    for _ in range(groups - 1):  # Bellman-Ford: the moves may gain (negative cost)
        through = dist[:, None] + move_cost
        src = through.argmin(axis=0)
        better = through[src, np.arange(groups)] < dist - 1e-15
        if not better.any():
            break
        dist = np.where(better, through[src, np.arange(groups)], dist)
        pred = np.where(better, src, pred)
    open_groups = np.flatnonzero(count < capacity)
    target = open_groups[dist[open_groups].argmin()]
    count[target] += 1
    g = target
    while pred[g] != -1:  # walk back: each unit on the path moves one group on
        a = pred[g]
        v = move_unit[a, g]
        member[v, a], member[v, g] = False, True
        g = a
    member[u, g] = True


def diagonal_membership(units: int, groups: int, copies: int = 1) -> torch.Tensor:
    """The plain diagonal copy's membership: the units in their stored order, h/G per group
    (with copies, unit u in groups u // (h/G) and the next ones round)."""
    per_group = units // groups
    member = torch.zeros(units, groups, dtype=torch.bool)
    first = torch.arange(units) // per_group
    for c in range(copies):
        member[torch.arange(units), (first + c) % groups] = True
    return member


def hidden_index(member: torch.Tensor) -> torch.Tensor:
    """The SCHEME hidden layout of a membership: new hidden unit i is dense unit index[i], the
    units of group 0 first (in their dense order), then group 1's, and so on."""
    return torch.cat([torch.nonzero(member[:, g]).flatten() for g in range(member.shape[1])])


def kept_fractions(w1: torch.Tensor, w2: torch.Tensor, member: torch.Tensor) -> tuple[float, float]:
    """(fc1, fc2): the fraction of each matrix's squared weight a membership keeps."""
    groups = member.shape[1]
    w1, w2 = w1.detach().double(), w2.detach().double()
    in_groups, out_groups = _contiguous(w1.shape[1], groups), _contiguous(w2.shape[0], groups)
    rows = member[:, in_groups]  # (h, in): unit u reads input channel j
    cols = member[:, out_groups].t()  # (out, h)
    kept1 = (w1.pow(2) * rows).sum() / w1.pow(2).sum().clamp_min(1e-300)
    kept2 = (w2.pow(2) * cols).sum() / w2.pow(2).sum().clamp_min(1e-300)
    return float(kept1), float(kept2)


def regrouped_channels_bound(w1: torch.Tensor, w2: torch.Tensor, groups: int, copies: int = 1,
                             rounds: int = 5) -> tuple[float, float]:
    """(fc1, fc2) kept fractions when the channels of the residual stream may be regrouped too,
    one grouping for the MLP's input and output alike (they are the same stream): alternating
    exact steps, hidden units for the channel groups, then channels for the hidden groups, each
    never worse than the last.

    A report of what the input side could add, not applied: the stream's channels are shared by
    every layer of the block, so regrouping them for one MLP means gathering its input and
    scattering its output (two extra passes over the activations per MLP); one grouping for a
    whole stage would be free but cannot suit every MLP in it.
    """
    w1, w2 = w1.detach().double(), w2.detach().double()
    if w1.shape[1] != w2.shape[0]:
        raise ValueError("the channel bound needs an MLP whose input and output are one stream")
    channels = w1.shape[1]
    channel_groups = _contiguous(channels, groups)
    e1 = w1.pow(2) / w1.pow(2).sum()
    e2 = w2.pow(2) / w2.pow(2).sum()
    best = (-1.0, -1.0)
    for _ in range(rounds):
        member = assign_units(block_scores(w1, w2, groups, channel_groups, channel_groups),
                              copies)
        # Each channel's score in group g: the energy it exchanges with group g's hidden units.
        m = member.double()
        channel_score = e1.t() @ m + e2 @ m  # (channels, G)
        channel_member = assign_units(channel_score, 1)
        channel_groups = channel_member.long().argmax(dim=1)
        in_rows = member[:, channel_groups]
        kept1 = float((e1 * in_rows).sum())
        kept2 = float((e2 * in_rows.t()).sum())
        if kept1 + kept2 <= sum(best) + 1e-12:
            break
        best = (kept1, kept2)
    return best
