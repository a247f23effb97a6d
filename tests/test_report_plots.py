"""The pictures a maintainer looks at: memslot layout, page lifetimes, SPTE churn.

Oracles: QEMU's own ``kvm_set_user_memory`` lines in the kernel's text of the recording (the
layout's lanes), the ``kvm_mmu_prepare_zap_page`` and ``kvm_mmu_zap_all_fast`` events inside each
delete's window (how pages ended), and headless Chromium (every plot of the HTML report draws
something: many non-white pixels and colours, each plot on its own).
"""

from __future__ import annotations

import gzip
import re

import numpy as np
import pytest
from conftest import SAMPLES
from test_report_html import chromium, distinct_colours, screenshot  # noqa: F401  (fixture)

import kvmtrace
from kvmtrace import plot
from kvmtrace.replays.ledger import zap_ledger
from kvmtrace.report.decode import gpa_range

_LINE = re.compile(r"kvm_set_user_memory AddrSpace#\d+ Slot#\d+ flags=\S+ gpa=(0x[0-9a-f]+) size=(0x[0-9a-f]+)")


def test_layout_has_one_lane_per_range_qemu_created():
    path = SAMPLES / "churn-zapslot.dat"
    analysis = kvmtrace.open(path).analyze()
    text = gzip.open(path.with_name("churn-zapslot.txt.gz"), "rt").read()
    created = {(int(g, 16) >> 12, int(n, 16) >> 12) for g, n in _LINE.findall(text) if int(n, 16)}
    fig = plot.layout(analysis.trace.data, analysis.replay)
    ax = fig.axes[0]
    lanes = [t.get_text() for t in ax.get_yticklabels()]
    assert lanes == [gpa_range(b, n) for b, n in sorted(created)]
    labels = fig.legends[0].get_texts()
    assert any(t.get_text().startswith("fault on a removed range (") for t in labels)


def test_page_ends_follow_the_zaps_in_each_window():
    for name, expected in (("ptslot-zapslot", "slot zap"), ("ptslot-zapall", "zap-all")):
        analysis = kvmtrace.open(SAMPLES / f"{name}.dat").analyze()
        data, result = analysis.trace.data, analysis.replay
        ends = plot.page_ends(result, zap_ledger(data, result))
        zaps = data.table("kvm_mmu_prepare_zap_page").column("seq").to_numpy()
        windows = [(c["window_start"], c["seq"]) for c in result.memslots.to_pylist()
                   if c["kind"] in ("delete", "move") and c["old_npages"]]
        in_window = {int(s) for s in zaps for lo, hi in windows if lo <= s <= hi}
        zap_seq = result.shadow_pages.column("zap_seq").to_pylist()
        for end, z in zip(ends, zap_seq):
            if z in in_window:
                assert end == expected, (name, z)
            elif z is None:
                assert end == "alive at end"
        assert (ends == expected).sum() == len(in_window)


def test_every_report_plot_draws_in_chromium(chromium, tmp_path):  # noqa: F811
    analysis = kvmtrace.open(SAMPLES / "churn-zapslot.dat").analyze()
    figures = plot.report_figures(analysis.trace.data, analysis.replay)
    assert len(figures) == 4
    for n, f in enumerate(figures):
        page = tmp_path / f"plot{n}.html"
        page.write_text(f"<!DOCTYPE html><html><body style='margin:0'>{f.svg}</body></html>")
        shot = screenshot(chromium, page, tmp_path)[:480, :960]  # the figure's area (10 x 5 in at 96 px)
        inked = (shot[..., :3] < 0.9).any(axis=-1).mean()
        assert inked > 0.03 and distinct_colours(shot) > 30, (f.title, inked, distinct_colours(shot))


@pytest.mark.parametrize("fn", [plot.layout, plot.page_lifetimes, plot.spte_rate])
def test_plots_draw_a_trace_without_deletes_or_moves(fn):
    """boot-zapall never deletes or moves a memslot: no update windows, no removed ranges; every
    plot still draws."""
    analysis = kvmtrace.open(SAMPLES / "boot-zapall.dat").analyze()
    fig = fn(analysis.trace.data, analysis.replay)
    assert fig.axes and np.isfinite(fig.axes[0].get_xlim()).all()


def test_layout_draws_one_fault_per_place_and_counts_them_all():
    """Faults on removed ranges: the legend counts every one; the picture draws the first of each
    lane and 1/POINT_PLACES of the time axis (a long trace's 330 000 made a 30 MB SVG), on the
    same lanes."""
    analysis = kvmtrace.open(SAMPLES / "churn-zapslot.dat").analyze()
    fig = plot.layout(analysis.trace.data, analysis.replay)
    label = next(t.get_text() for t in fig.legends[0].get_texts() if t.get_text().startswith("fault on"))
    drawn = next(c.get_offsets() for c in fig.axes[0].collections if c.get_label().startswith("fault on"))
    every = int(re.search(r"\((\d+)\)", label)[1])
    assert 0 < len(drawn) < every
    x, lanes = np.asarray(drawn[:, 0]), np.asarray(drawn[:, 1])
    span = fig.axes[0].get_xlim()[1]
    places = set(zip(lanes.tolist(), np.clip(x / span * plot.POINT_PLACES, 0, plot.POINT_PLACES).astype(int).tolist()))
    assert len(places) == len(drawn)  # one per place


def test_one_per_place_keeps_the_first_of_each_lane_and_place():
    x = np.array([0.10, 0.1001, 0.5, np.nan, 0.10, 0.9])
    lanes = np.array([0, 0, 0, 0, 1, 1])
    got_x, got_lanes = plot._one_per_place(x, lanes, 1.0)
    assert sorted(zip(got_lanes.tolist(), got_x.tolist())) == [(0, 0.1), (0, 0.5), (1, 0.1), (1, 0.9)]


@pytest.mark.parametrize("seed", range(20))
def test_in_any_is_membership_in_overlapping_intervals(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(0, 12))
    since = rng.integers(0, 100, n)
    until = since + rng.integers(0, 40, n)
    seq = rng.integers(-5, 150, 300)
    want = ((seq[:, None] >= since[None, :]) & (seq[:, None] < until[None, :])).any(axis=1)
    assert np.array_equal(plot._in_any(seq, since, until), want)


def _merged_by_hand(keys, start, end, gap):
    out = []
    for k in sorted(set(keys.tolist())):
        spans = sorted((s, e) for kk, s, e in zip(keys.tolist(), start.tolist(), end.tolist())
                       if kk == k and not (np.isnan(s) or np.isnan(e)))
        for s, e in spans:
            if out and out[-1][0] == k and s <= out[-1][2] + gap:
                out[-1][2] = max(out[-1][2], e)
            else:
                out.append([k, s, e])
    return out


@pytest.mark.parametrize("seed", range(20))
def test_merged_joins_intervals_closer_than_a_place(seed):
    """Bars a long trace has thousands of (slot instances, update windows) are merged per lane
    where they overlap or lie under a place of the axis apart, and nowhere else."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(0, 40))
    keys = rng.integers(0, 4, n)
    start = rng.uniform(0, 1, n)
    end = start + rng.uniform(0, 0.05, n)
    end[rng.random(n) < 0.1] = np.nan  # unknown ends are left out
    k, s, e = plot._merged(keys, start, end, 1.0)
    assert [list(t) for t in zip(k.tolist(), s.tolist(), e.tolist())] == \
        _merged_by_hand(keys, start, end, 1.0 / plot.POINT_PLACES)


def test_layout_draws_every_slot_instance_under_a_bar_of_its_colour():
    """The merged bars cover every slot instance on its lane, in its slot's colour."""
    analysis = kvmtrace.open(SAMPLES / "churn-zapslot.dat").analyze()
    fig = plot.layout(analysis.trace.data, analysis.replay)
    ax = fig.axes[0]
    bars = next(c for c in ax.containers if c.get_label() == "slot instance in place")
    drawn = [(round(b.get_y() + b.get_height() / 2), b.get_x(), b.get_x() + b.get_width(), b.get_facecolor()[:3])
             for b in bars]
    lt = analysis.replay.summaries["memslot"]
    assert 0 < len(drawn) <= lt.num_rows
    lanes = {t.get_text(): i for i, t in enumerate(ax.get_yticklabels())}
    data = analysis.trace.data
    t0, end = data.info.first_ts, (data.info.last_ts - data.info.first_ts) / 1e9
    colours = plot.matplotlib.colormaps["tab10"]
    from kvmtrace.report.evidence import column_ts
    since = np.nan_to_num((column_ts(data, lt, "from_seq") - t0) / 1e9, nan=0.0)
    until = np.nan_to_num((column_ts(data, lt, "until_seq") - t0) / 1e9, nan=end)
    for row, lo, hi in zip(lt.to_pylist(), since, until):
        lane = lanes[gpa_range(row["base_gfn"], row["npages"])]
        colour = colours(row["slot"] % 10)[:3]
        assert any(y == lane and x0 <= lo + 1e-12 and hi <= x1 + 1e-12 and c == colour for y, x0, x1, c in drawn), row
