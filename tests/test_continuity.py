"""The worst playback gap on synthetic arrival times: the server's (csm_core/continuity.py) and
csm-loadtest's copy (Playback) agree, chunk by chunk."""

from __future__ import annotations

import pytest

from csm_client.loadtest_run import Playback
from csm_core.continuity import WorstGap, worst_gap

CASES = [
    ([], 0.0),  # no audio
    ([(0.0, 0.24)], 0.0),  # one chunk
    ([(0.0, 0.24), (0.20, 0.96), (1.10, 0.08)], 0.0),  # every chunk in time
    ([(0.0, 0.24), (0.24, 0.24), (0.48, 0.24)], 0.0),  # each exactly when due
    ([(0.0, 0.24), (0.34, 0.24)], 0.10),  # due at 0.24, came at 0.34
    ([(0.0, 0.24), (0.34, 0.24), (0.60, 0.24)], 0.12),  # the lateness grows: due 0.48, came 0.60
    ([(0.0, 0.08), (0.5, 0.08), (0.6, 1.0), (1.0, 0.08)], 0.44),  # the worst is the third chunk's, not the last
    ([(0.0, 0.0), (1.0, 0.24), (1.30, 0.24)], 0.06),  # a header-only piece starts nothing
]


@pytest.mark.parametrize("chunks, expected", CASES)
def test_worst_gap_is_the_largest_lateness(chunks, expected):
    assert worst_gap(chunks) == pytest.approx(expected)
    gap, playback = WorstGap(), Playback()
    for now, duration in chunks:
        gap.arrive(now, duration)
        playback.arrive(now, duration)
    assert gap.worst_s == pytest.approx(playback.worst_gap_s)
    assert gap.started == (playback.start is not None) == any(d > 0 for _, d in chunks)


def test_a_stalled_player_waits_the_worst_gap_in_all():
    """One stall of 0.3 s, then chunks in time again (relative to the delayed schedule): 0.3."""
    chunks = [(0.0, 0.5), (0.8, 0.5), (1.3, 0.5), (1.75, 0.5)]
    assert worst_gap(chunks) == pytest.approx(0.3)
