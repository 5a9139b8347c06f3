"""A self-contained HTML report over one or more runs (e.g. a CPU server's and a GPU server's).

    >>> from rechar.report import write_report
    >>> write_report(["runs/cpu-server-run", "runs/gpu-server-run"], "reports/cpu-vs-gpu.html")

One file with every script and style inlined (BokehJS once, core only), so that it opens from
``file://`` with no network, and a print stylesheet. It opens with what was found (fastest stack
per model, bottleneck shift, best deployment, noisy and untimed points: ``findings``), then one
section per analysis of ``rechar analyze`` (``assemble.SECTIONS``), and ends with the runs'
machines, software and options, collapsed.

The package: ``assemble`` (the page and its list of sections), ``context`` (what sections are
built from), one module per group of sections (``findings``, ``latency``, ``profiles``,
``deployment``, ``precision``, ``serving``, ``counters``, ``features``, ``runs``), ``charts``
(Bokeh) and ``page`` (escaped HTML building blocks).
"""

from rechar.report.assemble import default_report_path, write_report

__all__ = ["write_report", "default_report_path"]
