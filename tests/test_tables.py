"""The layers table's schema (snp_service.tables, issue 28): what the science writes matches the
declaration both ways, with its types, and every reader takes its columns from it."""

import numpy as np
import polars as pl
import pytest

from snp_service import cli, compare, figures, tables
from snp_service.measure import cluster_point, measure_point
from snp_service.models import PointInfo
from snp_service.spec import AnalysisSpec


@pytest.fixture(scope="module")
def measured_rows() -> list[dict]:
    """One seqpool MHA point and one flatten conv point measured on random features (seconds), each
    through both stages that make its row: measure, then cluster (issue 27)."""
    rng = np.random.default_rng(0)
    out = []
    for info, positions in ((PointInfo("blocks.0.attn.heads", "mha", 8, 5, 2), 5), (PointInfo("tokenizer.0", "conv", 6, 4), 4)):
        train = rng.standard_normal((120, info.nodes, positions)).astype(np.float16)
        ev = rng.standard_normal((60, info.nodes, positions)).astype(np.float16)
        analysis = AnalysisSpec(readout_epochs=2, bootstrap=50)
        r = measure_point(info, train, rng.integers(0, 4, 120), ev, rng.integers(0, 4, 60), 4, analysis)
        out.append(cluster_point(r.row, r.field_sums, r.label_counts, r.dependence, analysis).row)
    return out


def test_a_measured_row_has_exactly_the_declared_columns(measured_rows):
    declared = tables.layer_schema()
    for row in measured_rows:
        assert set(row) == set(declared), (f"undeclared: {sorted(set(row) - set(declared))}; "
                                           f"declared but not written: {sorted(set(declared) - set(row))}")


def test_the_stored_types_are_the_declared_ones(measured_rows):
    df = pl.DataFrame(measured_rows)
    for name, dtype in tables.layer_schema().items():
        assert df.schema[name] == dtype, f"{name}: stored {df.schema[name]}, declared {dtype}"


def test_every_interval_column_is_written_with_its_bounds(measured_rows):
    for c in tables.LAYERS:
        for row in measured_rows:
            assert (f"{c.name}_lo" in row) == c.interval and (f"{c.name}_hi" in row) == c.interval


def test_the_readers_take_their_columns_from_the_schema():
    assert cli.DEFAULT_COLUMNS["layers"] == tables.shown_layer_columns()
    shown = cli.DEFAULT_COLUMNS["layers"]
    assert {"label_specific_fraction_lo", "effect_size_hi", "snr_lo"} <= set(shown)
    assert "mean_cluster_size_lo" not in shown  # a value without its interval by default
    assert compare.MEASURES == tables.layer_names(compared=True)
    assert compare.aggregated_columns()[:2] == ["readout_accuracy", "readout_accuracy_sd"]
    assert "effect_size_seed_lo" in compare.aggregated_columns()


def test_the_figure_draws_one_panel_per_plotted_column(measured_rows):
    fig = figures.layer_curves(pl.DataFrame(measured_rows))
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == [tables.LAYER_COLUMNS[c].title for c in tables.layer_names(plotted=True)]


def test_a_new_plotted_statistic_gets_its_panel_without_touching_the_figures(measured_rows, monkeypatch):
    """The change scenario of docs/ARCHITECTURE.md: a statistic declared once is drawn."""
    rows = [{**r, "new_stat": 0.5} for r in measured_rows]
    monkeypatch.setattr(tables, "LAYERS", (*tables.LAYERS, tables.Column("new_stat", pl.Float64, "a new statistic",
                                                                         plotted=True)))
    monkeypatch.setattr(tables, "LAYER_COLUMNS", {c.name: c for c in tables.LAYERS})
    monkeypatch.setattr(figures, "LAYER_COLUMNS", tables.LAYER_COLUMNS)
    fig = figures.layer_curves(pl.DataFrame(rows))
    assert "a new statistic" in [ax.get_title() for ax in fig.axes]
