"""The HTML report: built from one real tiny run (three stacks, profiled) and a synthetic GPU
run made from it, checked as a file and in headless Chromium (Debian's, driven by Selenium)."""

from __future__ import annotations

import json
import math
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import pandas as pd
import pytest

from rechar.analysis import analyze
from rechar.taxonomy import CATEGORIES
from rechar.report import charts, write_report
from rechar.report.charts import CATEGORY_COLORS
from rechar.measure.timing import TimingOptions
from rechar.results.store import POINTS, write_parquet
from rechar.sweep import RunOptions, run_sweep

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
#: The GPU run's host name and one of its error messages carry markup that would run if the
#: report (or a chart's tooltip) wrote them unescaped: each opens an alert or sets window.__xss.
EVIL_HOST = 'gpu-box<script>alert(1)</script><img src=x onerror="window.__xss=2">'
EVIL_ERROR = 'RuntimeError: CUDA out of memory <img src=x onerror="window.__xss=1">'


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory) -> Path:
    """A real profiled run: ncf at tiny scale on torch, ort-cpu and tf, batches 1 and 16."""
    tmp = tmp_path_factory.mktemp("report")
    timing = TimingOptions(warmup_iters=2, warmup_seconds=0.0, min_iters=20, min_seconds=0.02)
    return run_sweep(RunOptions(models=["ncf"], backends=["torch", "ort-cpu", "tf"], batch_sizes=[1, 16],
                                scale="tiny", threads=1, exports_dir=str(tmp / "exports"), profile_iters=5,
                                timing=timing), tmp / "cpu-run")


def _copy_run(src: Path, dst: Path, run_id: str, host: dict, **fields) -> None:
    """A copy of a run without its profiles, under a new run id, with host and manifest fields
    replaced."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("profiles.jsonl", "ops.parquet", "traces"))
    m = json.loads((dst / "manifest.json").read_text())
    m["run_id"] = run_id
    m["host"].update(host)
    m.update(fields)
    (dst / "manifest.json").write_text(json.dumps(m))


@pytest.fixture(scope="module")
def gpu_run(cpu_run, tmp_path_factory) -> Path:
    """A synthetic second machine: the CPU run's torch and ort-cpu points as torch-cuda and
    ort-cuda points, 2x slower at batch 1 and 4x faster at 16 (torch: crossover at 16); ort-cuda
    failed at 16 (onnxruntime: no crossover)."""
    dst = tmp_path_factory.mktemp("gpu") / "gpu-run"
    gpus = [{"name": "NVIDIA H100", "driver": "550.54", "memory": "81559 MiB"}]
    _copy_run(cpu_run, dst, "gpu-run", {"hostname": EVIL_HOST, "gpus": gpus},
              skipped_backends={"tf": "TensorFlow sees no GPU <b>here</b>"})
    p = pd.read_parquet(dst / POINTS)
    p = p[p["backend"].isin(["torch", "ort-cpu"])].copy()
    p["run_id"], p["device"] = "gpu-run", "cuda"
    p["backend"] = p["backend"].map({"torch": "torch-cuda", "ort-cpu": "ort-cuda"})
    factor = p["batch"].map({1: 2.0, 16: 0.25})
    for col in ["p50_us", "p90_us", "p99_us", "mean_us", "min_us", "max_us", "p50_ci_low_us", "p50_ci_high_us"]:
        p[col] = p[col] * factor
    p["throughput_sps"] = p["throughput_sps"] / factor
    failed = (p["backend"] == "ort-cuda") & (p["batch"] == 16)
    p.loc[failed, "status"], p.loc[failed, "error"] = "failed", EVIL_ERROR
    p.loc[failed, ["p50_us", "p99_us", "throughput_sps"]] = float("nan")
    write_parquet(p.reset_index(drop=True), dst / POINTS)
    # ort-cuda's profile at batch 1: its node times host-side only (no CUPTI kernel matched)
    for line in (cpu_run / "profiles.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec["backend"] == "ort-cpu" and rec["batch"] == 1:
            rec.update(run_id="gpu-run", backend="ort-cuda", device="cuda", time_basis="host")
            shutil.copytree(cpu_run / Path(rec["trace"]).parent, dst / Path(rec["trace"]).parent)
            with open(dst / "profiles.jsonl", "a") as f:
                f.write(json.dumps(rec) + "\n")
    return dst


@pytest.fixture(scope="module")
def report(cpu_run, gpu_run, tmp_path_factory) -> Path:
    return write_report([cpu_run, gpu_run], tmp_path_factory.mktemp("out") / "reports" / "both.html")


@pytest.fixture(scope="module")
def html(report) -> str:
    return report.read_text(encoding="utf-8")


class _Tags(HTMLParser):
    """Start tags with their attributes, and the text of the document."""

    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def _parse(html: str) -> _Tags:
    parser = _Tags()
    parser.feed(html)
    return parser


#: The synthetic run's figures: (backend, batch) -> p50 µs and its interval, how it was measured.
#: At batch 1 (one round each) torch is 2.0x faster than ort-cpu; at 16 (five rounds each, log
#: standard error 0.02) ort-cpu is 1.25x faster than torch; tf failed at 16; torch at 1 was noisy.
SYNTH_ROUNDS, SYNTH_LOG_SE = 5, 0.02
SYNTH_POINTS = {
    ("torch", 1): (100.0, 95.0, 105.0, "iterations"), ("ort-cpu", 1): (200.0, 190.0, 210.0, "iterations"),
    ("tf", 1): (300.0, 290.0, 310.0, "iterations"), ("ort-cpu", 16): (400.0, None, None, "rounds"),
    ("torch", 16): (500.0, None, None, "rounds"), ("tf", 16): None,
}
#: (backend, batch) -> {category: self µs per iteration}: the stacks disagree on the dominant
#: category at batch 1 only.
SYNTH_OPS = {
    ("torch", 1): {"fc": 60.0, "embedding": 40.0}, ("ort-cpu", 1): {"embedding": 70.0, "fc": 30.0},
    ("tf", 1): {"fc": 55.0, "embedding": 45.0}, ("torch", 16): {"embedding": 80.0, "fc": 20.0},
    ("ort-cpu", 16): {"embedding": 90.0, "fc": 10.0},
}


@pytest.fixture(scope="module")
def synthetic_run(cpu_run, tmp_path_factory) -> Path:
    """The CPU run's points with the figures above, its profiles replaced by SYNTH_OPS."""
    from scipy.stats import t

    dst = tmp_path_factory.mktemp("synth") / "synth"
    _copy_run(cpu_run, dst, "synth", {"hostname": "synth-host"},
              skipped_backends={"openvino": "not installed <i>here</i>"})
    p = pd.read_parquet(dst / POINTS)
    p["run_id"] = "synth"
    half = t.ppf(0.975, SYNTH_ROUNDS - 1) * SYNTH_LOG_SE  # a t interval over 5 rounds with that log error
    for i, row in p.iterrows():
        figures = SYNTH_POINTS[(row["backend"], row["batch"])]
        if figures is None:
            p.loc[i, ["status", "error"]] = "failed", "RuntimeError: boom"
            p.loc[i, ["p50_us", "p99_us", "throughput_sps", "p50_ci_low_us", "p50_ci_high_us"]] = float("nan")
            continue
        p50, low, high, method = figures
        if method == "rounds":
            low, high = p50 * math.exp(-half), p50 * math.exp(half)
        p.loc[i, ["p50_us", "p50_ci_low_us", "p50_ci_high_us", "p99_us"]] = p50, low, high, 2 * p50
        p.loc[i, "throughput_sps"] = row["batch"] / p50 * 1e6
        p.loc[i, "ci_method"] = method
        p.loc[i, ["rounds", "timed_rounds"]] = (SYNTH_ROUNDS, SYNTH_ROUNDS) if method == "rounds" else (1, 1)
    noisy = (p["backend"] == "torch") & (p["batch"] == 1)
    p["noisy"] = noisy
    p.loc[noisy, ["others_cpu_share", "noise"]] = 0.4, "round 0: other processes used 40% of a CPU"
    write_parquet(p.reset_index(drop=True), dst / POINTS)
    ops = [{"run_id": "synth", "model": "ncf", "backend": backend, "device": "cpu", "batch": batch, "round": 0,
            "native_op": f"{category}_op", "op_category": category, "category": category, "layer": None,
            "node": None, "fused": None, "calls_per_iter": 1.0, "self_us_per_iter": us,
            "share": us / sum(by_category.values())}
           for (backend, batch), by_category in SYNTH_OPS.items() for category, us in by_category.items()]
    write_parquet(pd.DataFrame(ops), dst / "ops.parquet")
    return dst


def test_report_leads_with_findings_computed_from_the_run(synthetic_run, tmp_path):
    """The findings (fastest stack at the smallest and largest batch with its lead and interval,
    bottleneck shift, best deployment, noisy and untimed points, skipped backends) say what the
    synthetic figures give by hand, come before everything else, and the runs' machine,
    software and options come last, collapsed."""
    from scipy.stats import t

    html = write_report([synthetic_run], tmp_path / "synth.html").read_text()
    findings = "".join(_parse(html[html.index('<section id="findings">'):html.index("<nav>")]).text)
    # batch 16: ratio 500/400 with Welch's interval; both log errors 0.02 over 4 degrees of
    # freedom give Welch's df = (2 * 0.02^2)^2 / (2 * 0.02^4 / 4) = 8
    half = t.ppf(0.975, 8) * math.sqrt(2) * SYNTH_LOG_SE
    interval = f"{1.25 * math.exp(-half):.2f}–{1.25 * math.exp(half):.2f}"
    assert interval == "1.17–1.33"
    assert ("ncf: at batch 1, torch (0.100 ms p50) is 2.00× faster than ort-cpu (0.200 ms); at batch 16, ort-cpu "
            f"(0.400 ms p50) is 1.25× faster than torch (0.500 ms) (95% interval {interval} over rounds).") in findings
    assert "A ratio without an interval compares points measured in one round" in findings  # batch 1's
    assert "ncf on cpu, batch 1: embedding (70%) on ort-cpu; fc (55%) on tf; fc (60%) on torch." in findings
    assert "on cpu, batch 16" not in findings and "on cpu, batches" not in findings  # they agree at 16
    # best under p99 <= 10 ms: ort-cpu at 16 (16 / 400 µs = 40,000/s) over torch at 16 (32,000/s)
    assert ("ncf: ort-cpu at batch 16, 40,000 samples/s (p99 0.800 ms), 1.25× the throughput of the runner-up, "
            f"torch b16 (synth-host) (95% interval {interval} over rounds).") in findings
    assert "1 point(s) were timed while the machine was busy" in findings and "ncf on torch, batch 1." in findings
    assert "1 point(s) were not timed:" in findings and "ncf on tf, batch 16: failed." in findings
    assert "openvino was skipped on synth-host: not installed <i>here</i>" in findings
    assert "not installed <i>" not in html and "not installed &lt;i&gt;here&lt;/i&gt;" in html
    # order: findings, then the table of contents and the sections; the runs' details last, collapsed
    assert re.findall(r'<section id="([^"]+)"', html)[0] == "findings"
    assert re.findall(r'<section id="([^"]+)"', html)[-1] == "runs"
    assert html.index('id="findings"') < html.index("<nav>") < html.index('id="not-timed"')
    options = html.index("<h4>Options</h4>")
    assert options > html.index('id="coverage"') and html.index('id="runs"') < html.index("<details>") < options
    assert html.index("</details>") > options


def test_findings_name_the_best_serving_policy(synthetic_run, tmp_path):
    """Per model and stack: the policy with the highest capacity, its gain over whole queries, or
    that no policy (or no whole-query rate) met the bound."""
    from rechar.report import findings
    from rechar.report.context import ReportContext

    tables = analyze([synthetic_run])
    tables["serving"] = pd.DataFrame({"host": ["synth-host"], "status": ["ok"]})  # the runs hold serving trials
    tables["serving_best"] = pd.DataFrame([
        {"host": "synth-host", "model": "ncf", "backend": "torch", "offload": None, "best_policy": "b4x1",
         "capacity_qps": 1500.0, "query_policy_qps": 1000.0, "gain_over_query": 1.5},
        {"host": "synth-host", "model": "ncf", "backend": "tf", "offload": None, "best_policy": "b8x2",
         "capacity_qps": 800.0, "query_policy_qps": 0.0, "gain_over_query": None},
        {"host": "synth-host", "model": "ncf", "backend": "ort-cpu", "offload": "torch>=10", "best_policy": None,
         "capacity_qps": 0.0, "query_policy_qps": 0.0, "gain_over_query": None},
    ])
    ctx = ReportContext(tables, [synthetic_run], [json.loads((synthetic_run / "manifest.json").read_text())],
                        tmp_path, 10.0)
    text = "".join(_parse(findings.section(ctx)).text)
    assert "ncf on torch: policy b4x1, 1,500 queries/s within the bound, 1.50× whole queries." in text
    assert "ncf on tf: policy b8x2, 800 queries/s within the bound; whole queries met the bound at no rate tried." in text
    assert "ncf on ort-cpu (offload torch>=10): no policy met the bound." in text


def test_report_is_one_self_contained_file_under_5_mb(report, html):
    """No tag loads anything (no script src, stylesheet link, image or font URL), BokehJS is
    inlined once, and the file stays small."""
    tags = _parse(html).tags
    assert not [a for t, a in tags if t == "script" and "src" in a]
    assert not [a for t, a in tags if t in ("link", "img", "iframe", "embed", "object")]
    assert not re.search(r"@import|url\(\s*['\"]?(https?:)?//", html)
    assert html.count("/* BEGIN bokeh.min.js") == 1
    assert report.stat().st_size < 5 * 2**20


def test_user_strings_are_escaped(html):
    """The host name and error carrying markup appear only escaped, never as live tags, in the
    page and in the charts' embedded data."""
    assert "<script>alert" not in html and "<img src=x" not in html and "<b>here" not in html
    assert "gpu-box&lt;script&gt;alert(1)&lt;/script&gt;&lt;img" in html
    assert "&lt;img src=x onerror=" in html


def test_failed_points_are_listed_with_their_reason(html):
    """The not-timed section names the failed point (model, backend, batch, status) and its error."""
    section = html[html.index('id="not-timed"'):html.index('id="latency"')]
    row = next(r for r in section.split("<tr>") if "ort-cuda" in r)
    cells = re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)
    assert cells[1:6] == ["ncf", "ort-cuda", "cuda", "16", "failed"]
    assert cells[6].startswith("RuntimeError: CUDA out of memory &lt;img")


def test_speedup_section_gives_the_crossover(html):
    """torch's GPU wins from batch 16 on; onnxruntime's GPU point at 16 failed, so it never does."""
    section = html[html.index('id="speedup"'):html.index('id="best"')]
    crossover_table = section[:section.index("</table>")]
    rows = {re.findall(r"<td[^>]*>(.*?)</td>", r)[2]: re.findall(r"<td[^>]*>(.*?)</td>", r)[5]
            for r in crossover_table.split("<tr>")[2:]}
    assert rows == {"torch-cuda": "16", "ort-cuda": "never"}
    # the per-batch table gives each speedup its interval and verdict
    per_batch = section[section.index("</table>"):]
    assert "95% interval" in per_batch and ("GPU faster" in per_batch or "no significant difference" in per_batch)


def test_breakdown_says_when_gpu_profiles_are_host_side(html):
    """A profile that holds host-side times only (ORT on CUDA without CUPTI's kernels matched)
    is said so in the breakdown section, not passed off as GPU time."""
    section = html[html.index('id="breakdown"'):]
    assert "ort-cuda on" in section and "1 profiles hold host-side node times only" in section


def test_header_names_machines_versions_options_and_skipped_backends(html, cpu_run):
    """Each run's card lists its machine, software versions, options and skipped backends."""
    manifest = json.loads((cpu_run / "manifest.json").read_text())
    text = " ".join(_parse(html).text)
    for value in (manifest["host"]["cpu"], manifest["software"]["torch"], manifest["software"]["onnxruntime"],
                  "NVIDIA H100 (81559 MiB, driver 550.54)", "TensorFlow sees no GPU <b>here</b>", "profile_iters"):
        assert value in text


def test_each_category_has_one_colour_in_every_chart(cpu_run, html):
    """The palette is defined once, keyed by the taxonomy: every bar of every breakdown panel
    and the page's legend use the category's colour."""
    assert list(CATEGORY_COLORS) == list(CATEGORIES) and len(set(CATEGORY_COLORS.values())) == len(CATEGORIES)
    breakdown = analyze([cpu_run])["breakdown"]
    panels = sorted(breakdown["backend"].unique())
    grid = charts.breakdown_chart(breakdown.assign(series=breakdown["backend"]), panels, "ncf")
    sources = [r.data_source.data for fig, _, _ in grid.children for r in fig.renderers]
    assert len(sources) == 3
    for data in sources:
        assert [CATEGORY_COLORS[c] for c in data["category"]] == list(data["color"])
    for category, color in CATEGORY_COLORS.items():
        assert f'background:{color}"></span>{category}' in html


def test_trace_links_are_relative_and_lead_to_the_traces(report, html):
    """Every profiled point links its raw trace by a path relative to the report."""
    links = [a["href"] for t, a in _parse(html).tags if t == "a" and "traces/" in a.get("href", "")]
    assert len(links) == 7  # 3 backends x 2 batch sizes, and the GPU run's ort-cuda at batch 1
    for href in links:
        assert not href.startswith(("/", "file:", "http"))
        assert (report.parent / unquote(href)).is_file()


def test_a_run_without_profiles_or_gpu_says_so(cpu_run, tmp_path):
    """Sections that need profiles or GPU points say why they are empty instead of failing."""
    bare = tmp_path / "bare"
    _copy_run(cpu_run, bare, "bare", {"hostname": "vm"})
    text = " ".join(_parse(write_report([bare], tmp_path / "bare.html").read_text()).text)
    assert "No GPU run was given" in text
    # breakdown, bottleneck shift, top operators, coverage
    assert text.count("No operator profiles in these runs") == 4


def test_cli_writes_the_report_under_reports_by_default(cpu_run, tmp_path, monkeypatch, run_cli):
    """``rechar report RUN_DIR`` writes reports/<run id>.html; a folder that is not a run is a
    one-line error with exit status 2."""
    monkeypatch.chdir(tmp_path)
    code, out, _ = run_cli("report", str(cpu_run))
    assert code == 0 and (tmp_path / "reports" / "cpu-run.html").is_file() and "reports/cpu-run.html" in out
    code, _, err = run_cli("report", str(tmp_path))
    assert code == 2 and err.count("\n") == 1 and "not a run folder" in err


# -- in the browser ---------------------------------------------------------------------------------

#: JS: the canvases of every chart, found through the shadow roots Bokeh renders into, as
#: [[width, height, painted]] per chart.
CANVASES_JS = """
function canvases(node, found) {
  for (const el of node.querySelectorAll('*')) {
    if (el.tagName === 'CANVAS') found.push(el);
    if (el.shadowRoot) canvases(el.shadowRoot, found);
  }
  return found;
}
return [...document.querySelectorAll('div.chart')].map(chart => canvases(chart, []).map(c => {
  const data = c.width && c.height ? c.getContext('2d').getImageData(0, 0, c.width, c.height).data : [];
  let painted = false;
  for (let i = 3; i < data.length; i += 4) if (data[i] > 0) { painted = true; break; }
  return [c.width, c.height, painted];
}));
"""


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip("Debian's chromium and chromium-driver are not installed (apt-get install chromium "
                    "chromium-driver; CI installs them)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[test]')")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1400,1000", f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=str(CHROMEDRIVER)))
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def page(browser, report):
    """The report opened from file:// with every chart painted."""
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(report.resolve().as_uri())
    WebDriverWait(browser, 30).until(lambda d: all(
        any(w > 0 and painted for w, _, painted in chart) for chart in d.execute_script(CANVASES_JS)))
    return browser


def test_no_alert_no_console_error_no_network(page, report):
    """The payloads did not run (no alert, window.__xss unset), the console has no error, and the
    only resource the page loaded is the file itself."""
    from selenium.common.exceptions import NoAlertPresentException

    with pytest.raises(NoAlertPresentException):
        page.switch_to.alert.text
    assert page.execute_script("return typeof window.__xss") == "undefined"
    assert [e for e in page.get_log("browser") if e["level"] == "SEVERE"] == []
    loaded = page.execute_script("return performance.getEntriesByType('resource').map(e => e.name)"
                                 ".concat(performance.getEntriesByType('navigation').map(e => e.name))")
    assert loaded == [report.resolve().as_uri()]


def test_every_chart_is_rendered(page, html):
    """One Bokeh document whose roots are the page's charts (latency, breakdown and speedup
    heatmap for the one model), each drawn on a canvas."""
    assert html.count('<div class="chart">') == 3
    assert page.execute_script("return Bokeh.documents.length") == 1
    assert page.execute_script("return Bokeh.documents[0].roots().length") == 3
    for chart in page.execute_script(CANVASES_JS):
        assert any(w > 0 and h > 0 and painted for w, h, painted in chart)


def test_page_text_shows_the_numbers_and_the_payloads_as_text(page, cpu_run):
    """The page shows the measured p50 as the tables format it, and the markup-laden names as text."""
    points = pd.read_parquet(cpu_run / POINTS)
    p50 = points[(points["backend"] == "torch") & (points["batch"] == 16)]["p50_us"].iloc[0]
    text = page.execute_script("return document.body.innerText")
    assert f"{p50 / 1e3:.3f}" in text and "ncf" in text
    assert EVIL_HOST in text and EVIL_ERROR in text


#: JS: the screen position of the first marker of a series whose label contains arguments[0], in
#: the first chart (latency), scrolled into view.
MARKER_JS = """
const fig = Object.values(Bokeh.index)[0].child_views[0];
for (const [model, view] of fig.renderer_views) {
  const label = model.data_source.data.label;
  if (model.glyph.type === 'Scatter' && label && label[0].includes(arguments[0])) {
    fig.el.scrollIntoView();
    const box = fig.el.getBoundingClientRect();
    return [box.left + view.glyph.sx[0], box.top + view.glyph.sy[0]];
  }
}
"""
SHADOW_TEXT_JS = """
function text(node) {
  let out = '';
  for (const el of node.querySelectorAll('*')) if (el.shadowRoot) out += el.shadowRoot.textContent + text(el.shadowRoot);
  return out;
}
return text(document);
"""


def test_tooltips_show_names_as_text(page):
    """Hovering a GPU point shows its tooltip with the markup-laden host name as text, and the
    markup does not run."""
    from selenium.webdriver.common.actions.action_builder import ActionBuilder
    from selenium.webdriver.support.ui import WebDriverWait

    shown = page.execute_script(SHADOW_TEXT_JS).count(EVIL_HOST)  # legend entries and titles
    x, y = page.execute_script(MARKER_JS, "gpu-box")
    actions = ActionBuilder(page)
    actions.pointer_action.move_to_location(int(x), int(y))
    actions.perform()
    WebDriverWait(page, 10).until(lambda d: d.execute_script(SHADOW_TEXT_JS).count(EVIL_HOST) > shown)
    assert page.execute_script("return typeof window.__xss") == "undefined"


def test_charts_fit_a_printed_page(page):
    """Printed (A4 landscape, 10 mm margins: 277 mm = 1047 px wide), no chart is wider than the
    page, and Chromium prints the report to a PDF."""
    page.execute_cdp_cmd("Emulation.setEmulatedMedia", {"media": "print"})
    widths = page.execute_script(
        "return [...document.querySelectorAll('div.chart > div > *')].map(e => e.getBoundingClientRect().width)")
    page.execute_cdp_cmd("Emulation.setEmulatedMedia", {"media": ""})
    assert widths and max(widths) <= 1047
    assert page.print_page().startswith("JVBERi")  # base64 of "%PDF"
