"""What every section of the report is built from: the analysis tables of the runs, the runs'
folders and manifests, the series each point belongs to (one line or panel per host x backend x
device) with its colour and marker, and the charts collected so far.

A section is a function ``(ReportContext) -> str`` returning escaped markup (rechar.report.page);
a chart goes through :meth:`ReportContext.chart`, which returns a placeholder that the page
replaces with the chart once every chart is known (one Bokeh document for the whole page).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from rechar.analysis.ops import read_profiles
from rechar.report.charts import HOST_MARKERS, SERIES_COLORS
from rechar.report.page import swatch, text

#: The backend other stacks are compared with (stack against stack, bottleneck shift).
REFERENCE = "torch"
#: Columns that name a machine.
HOSTS = {"host", "cpu_host", "gpu_host"}


class ReportContext:
    def __init__(self, tables: dict[str, pd.DataFrame], run_dirs: list[Path], manifests: list[dict],
                 out_dir: Path, p99_bound_ms: float):
        self.tables = {name: tidy(df) for name, df in tables.items()}
        self.run_dirs = run_dirs
        self.manifests = manifests
        self.out_dir = out_dir
        self.bound = p99_bound_ms
        self.roots: list = []
        points = self.tables["points"]
        self.several_hosts = points["host"].nunique() > 1
        self.multi_device = set(points.groupby("backend")["device"].nunique().loc[lambda n: n > 1].index)
        self.points = points.assign(series=self.series(points))
        self.models = sorted(self.points["model"].unique())
        self.style = self._series_style(self.points)
        #: (host name, run folder, record) of every profiled point
        self.profiles = [(str(m.get("host", {}).get("hostname")), run_dir, rec)
                         for run_dir, m in zip(run_dirs, manifests) for rec in read_profiles(run_dir)]

    @property
    def serving_only(self) -> bool:
        """The runs hold serving trials and no timed point (``rechar serve`` runs only)."""
        return self.points.empty and not self.tables["serving"].empty

    def series(self, df: pd.DataFrame) -> pd.Series:
        """Series label: the backend, with the device when a backend ran on several, and the
        host when the runs come from several machines."""
        label = df["backend"].astype(str)
        label = label.where(~df["backend"].isin(self.multi_device), label + " (" + df["device"].astype(str) + ")")
        return label + (" @ " + df["host"] if self.several_hosts else "")

    @staticmethod
    def _series_style(points: pd.DataFrame) -> dict[str, tuple[str, str]]:
        """series -> (colour, marker): colour by backend and device, marker by host, the same in
        every chart; the dict's order is the order series are shown in."""
        keys = points[["series", "backend", "device", "host"]].drop_duplicates()
        keys = keys.sort_values(["backend", "device", "host"])
        stacks = list(dict.fromkeys(zip(keys["backend"], keys["device"])))
        hosts = sorted(set(keys["host"]))
        return {
            s: (SERIES_COLORS[stacks.index((b, d)) % len(SERIES_COLORS)], HOST_MARKERS[hosts.index(h) % len(HOST_MARKERS)])
            for s, b, d, h in keys.itertuples(index=False)
        }

    def ordered(self, series) -> list[str]:
        """The given series in the report's order."""
        present = set(series)
        return [s for s in self.style if s in present]

    def chart(self, root) -> str:
        """Adds a Bokeh root to the page; returns the placeholder the page puts it in place of."""
        self.roots.append(root)
        return f"<!--chart:{len(self.roots) - 1}-->"

    def series_cell(self, series: str) -> str:
        """A series' colour swatch and its label, as a table cell."""
        return swatch(self.style[series][0]) + text(series)


def tidy(df: pd.DataFrame) -> pd.DataFrame:
    """Host names as text: a host may be named "1", which pandas would read as a number."""
    if df.empty:
        return df
    return df.apply(lambda c: c.map(lambda h: h if pd.isna(h) else str(h)) if c.name in HOSTS else c)
