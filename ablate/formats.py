"""How the report reads: the record it renders, the views a reader sees (VIEWS: compact, all; the table against the
paper), the footnote that says what the numbers mean, the file formats (WRITERS) and a figure's PNG bytes.
report.py computes the numbers; this file only writes them, and imports nothing of the study, the stores or
matplotlib (a report that draws no figure does not pay for it)."""
from __future__ import annotations

import base64
import html
import io
import re
from dataclasses import dataclass
from typing import Callable, Mapping

import pandas as pd

from ablate import replication
from ablate.errors import AblateError
from ablate.reference import MATCH_RULE

DELTA = "Δ top-1"  # the table's delta columns: report.py computes them, the views here print them
DELTA_PREV = "Δ prev top-1"


@dataclass
class AblationTable:
    """The report's numbers and what they were measured against (notebooks read `.frame`)."""

    frame: pd.DataFrame  # one row per configuration: counts, mean and sd, deltas, verdicts, the paper's numbers
    study: str
    baseline: str  # the row every DELTA is against
    ladder: bool  # a ladder: each row is also judged against the row before (DELTA_PREV)
    per_seed: pd.DataFrame  # top-1 of each seed (rows) and configuration (columns): the samples of the intervals
    refused: dict[str, str]  # configurations study.constraints refused before training: label -> why
    hidden: int  # finished trials of configurations the study file no longer holds, left out of `frame`
    classes: int | None  # the study's number of classes (top-5 means something above 10)
    covers: str = "seeds"  # what the intervals cover: seeds, or seeds+images (study.interval)
    metric: str = "val/acc1"  # what the means and deltas are: study.metric (its test/* twin after a holdout)
    adjust: str = "none"  # how a family of comparisons shares the level (study.adjust: holm or none)
    margin: float | None = None  # study.min_effect: inside it, `equivalent`
    looks: tuple[int, ...] | None = None  # seeds on demand's looks (min..max): Pocock's boundary spends the level
    missing: tuple[str, ...] = ()  # the declared ablations of the study's modules it has not run (paper_plan)

    @property
    def top1(self) -> bool:
        """Is the study's metric top-1 accuracy (the table's top-1 columns are then its numbers)?"""
        return self.metric.endswith("/acc1")

    def render(self, fmt: str = "md", columns: str = "compact") -> str:
        """The table as `fmt` writes it: the numbers (CSV, JSON), or the `columns` view a reader sees (Markdown,
        LaTeX, HTML); Markdown and HTML add the reproduction table (compact, with references) and the footnote."""
        return writer(fmt)(self.page(columns))

    def page(self, columns: str = "compact") -> Page:
        view = one_of(VIEWS, columns, "--columns")
        against = against_paper(self) if columns == "compact" else None
        note = footnote(self, columns, against is not None) + checklist(self.missing)  # what a reviewer will ask
        return Page(self.frame, view(self), against, note)

    def landing(self, figures: Mapping[str, bytes]) -> str:
        """The study's landing page in MLflow (the parent run's report/index.html): the compact table, the table
        against the paper, the footnote and the figures (PNG bytes), one self-contained HTML file."""
        return html_page(self.page(), f"{self.study}: {self.metric} over seeds", figures)


# ---------------------------------------------------------------- cells

def _pm(mean: pd.Series, sd: pd.Series, digits: int = 2) -> pd.Series:
    def one(m, s):
        if pd.isna(m):
            return "-"
        return f"{m:.{digits}f} ± {s:.{digits}f}" if pd.notna(s) else f"{m:.{digits}f}"  # one seed: no spread

    return pd.Series([one(m, s) for m, s in zip(mean, sd)], index=mean.index)


def _raw_text(table: pd.DataFrame, name: str) -> pd.Series:
    """'[+0.40, +2.06]': the unadjusted 95% interval, each comparison alone ('-' without one)."""
    return pd.Series([f"[{lo:+.2f}, {hi:+.2f}]" if pd.notna(lo) else "-"
                      for lo, hi in zip(table[f"{name} raw lo"], table[f"{name} raw hi"])], index=table.index)


def _delta_text(table: pd.DataFrame, name: str, base: bool = True) -> pd.Series:
    """'+1.23 [+0.40, +2.06]*' per row; '(baseline)' for a control itself (with `base`: not a ladder's steps)."""
    def one(row, label):
        if base and row.get("vs") == label:
            return "(baseline)"
        d, lo, hi = row[name], row[f"{name} lo"], row[f"{name} hi"]
        if pd.isna(d):
            return "-"
        ci = f" [{lo:+.2f}, {hi:+.2f}]" if pd.notna(lo) else ""
        return f"{d:+.2f}{ci}{'*' if row[f'{name} sig'] else ''}"

    return pd.Series([one(row, label) for label, row in table.iterrows()], index=table.index)


def _num(series: pd.Series, digits: int, sign: str = "") -> pd.Series:
    return series.map(lambda v: "-" if pd.isna(v) else f"{v:{sign}.{digits}f}")


def _check(series: pd.Series) -> pd.Series:
    return series.map(lambda v: "-" if pd.isna(v) else "yes" if v else "no")


# ---------------------------------------------------------------- views

def compact(table: AblationTable) -> pd.DataFrame:
    """The columns a paper prints: params, GMACs, top-1 mean ± sd over n seeds, the delta with its interval and
    what it says; top-5 only above 10 classes (below, it is ~100% for every row)."""
    frame = table.frame
    out = pd.DataFrame(index=frame.index)
    out["params (M)"] = _num(frame["params (M)"], 3)
    out["GMACs"] = _num(frame["GMACs"], 4)
    step_price(out, frame)
    top1 = _pm(frame["top-1 acc (%)"], frame["top-1 acc (%) sd"])
    out["top-1 acc (%)"] = [f"{t} (n {n})" if t != "-" else f"- (n {n})" for t, n in zip(top1, frame["n"])]
    if (table.classes or 0) > 10:
        out["top-5 acc (%)"] = _pm(frame["top-5 acc (%)"], frame["top-5 acc (%) sd"])
    if not table.top1:  # the study's own metric, which the deltas are over
        percent = "/acc" in table.metric  # accuracies in percent, as stats.percent reads them
        shown = _pm(frame["metric"], frame["metric sd"], 2 if percent else 4)
        out[table.metric + (" (%)" if percent else "")] = [f"{t} (n {n})" for t, n in zip(shown, frame["n"])]
    out["seeds n / pruned / failed"] = seeds_text(frame)
    if "stage" in frame:  # a search: whose numbers these are
        out.insert(0, "stage", frame["stage"])
    name = DELTA_PREV if table.ladder else DELTA
    if not table.ladder and frame["vs"].nunique(dropna=True) > 1:  # matched controls: say which each row has
        out["vs"] = frame["vs"].fillna("(no matched control)")
    header = name if table.top1 else name.replace("top-1", table.metric)
    out[f"{header} (95% CI)"] = _delta_text(frame, name, not table.ladder)
    if table.ladder:  # each step's delta above, and where the steps have got to: each row against the first
        cumulative = DELTA if table.top1 else DELTA.replace("top-1", table.metric)
        out[f"cumulative {cumulative} vs {table.baseline} (95% CI)"] = _delta_text(frame, DELTA, True)
    out["verdict"] = frame["verdict"]  # a ladder's: each step's (summary.compare), as its configuration runs say
    return out


def step_price(out: pd.DataFrame, frame: pd.DataFrame) -> None:
    """The training step's measured price (step_cost.py), where the study measured it: its time over the plain
    backbone's and its peak memory."""
    if frame.get("step time ×", pd.Series(dtype=float)).notna().any():
        out["step time ×"] = _num(frame["step time ×"], 2)
        out["peak mem (MB)"] = _num(frame["peak mem (MB)"], 0)


def seeds_text(frame: pd.DataFrame) -> list[str]:
    """'3 / 0 / 1' per row: the seeds that finished, were pruned and failed, and '+2 repeats' where some seed ran
    more than once (averaged into its seed, not counted)."""
    return [f"{n} / {p} / {f}" + (f" (+{r} repeat{'s' if r > 1 else ''})" if r else "")
            for n, p, f, r in zip(frame["n"], frame["pruned"], frame["failed"], frame["repeats"])]


def every_column(table: AblationTable) -> pd.DataFrame:
    """Every number the report has: mean ± sd strings, deltas with their 95% intervals (* when it excludes 0),
    the paper's numbers and the verdicts."""
    frame = table.frame
    out = pd.DataFrame(index=frame.index)
    out["n"] = frame["n"]
    for col in ("top-1 acc (%)", "top-5 acc (%)", "top-1 err (%)", "top-5 err (%)"):
        out[col] = _pm(frame[col], frame[col + " sd"])
    out["params (M)"] = _num(frame["params (M)"], 3)
    out["GMACs"] = _num(frame["GMACs"], 4)
    out["img/s"] = _pm(frame["throughput (img/s)"], frame["throughput (img/s) sd"], 0)
    out["vs"] = frame["vs"].fillna("-")
    out[f"{DELTA} (95% CI)"] = _delta_text(frame, DELTA)
    out[f"{DELTA} unadjusted 95% CI"] = _raw_text(frame, DELTA)
    if DELTA_PREV in frame:
        out[f"{DELTA_PREV} (95% CI)"] = _delta_text(frame, DELTA_PREV, False)
        out[f"{DELTA_PREV} unadjusted 95% CI"] = _raw_text(frame, DELTA_PREV)
    out["verdict"] = frame["verdict"]
    for col in [c for c in frame.columns if c.startswith(("paper ", "ours "))]:
        out[col] = _num(frame[col], 2)
    if "setup" in frame:
        out["setup"] = frame["setup"].fillna("-")
    for col in ("params match", "GMACs Δ match"):
        if col in frame:
            out[col] = _check(frame[col])
    if "effect" in frame:
        out["effect"] = frame["effect"].fillna("-")
    out["pruned"], out["failed"], out["repeats"] = frame["pruned"], frame["failed"], frame["repeats"]
    if "stage" in frame:
        out.insert(0, "stage", frame["stage"])
    return out


# --columns: what a paper prints, or every number the report has
VIEWS: dict[str, Callable[[AblationTable], pd.DataFrame]] = {"compact": compact, "all": every_column}
COLUMNS = tuple(VIEWS)


def against_paper(table: AblationTable) -> pd.DataFrame | None:
    """The reproduction table: the paper's numbers beside ours and the verdicts (None without references)."""
    frame = table.frame
    if not any(c.startswith("paper ") for c in frame):
        return None
    out = pd.DataFrame(index=frame.index)
    if "setup" in frame:  # whether the paper measured this setup, else which part differs: what the judging skips
        out["setup"] = frame["setup"].fillna("-")
    if "paper params (M)" in frame:
        out["params (M) ours / paper"] = _num(frame["params (M)"], 2) + " / " + _num(frame["paper params (M)"], 2)
        out["params match"] = _check(frame["params match"])
    if "paper Δ GMACs" in frame:
        out["Δ GMACs ours / paper"] = (_num(frame["ours Δ GMACs"], 4, "+") + " / " +
                                       _num(frame["paper Δ GMACs"], 3, "+"))
        out["GMACs match"] = _check(frame["GMACs Δ match"])
    if "paper Δ top-1" in frame:
        name = DELTA_PREV if table.ladder else DELTA
        out[f"{name} ours / paper"] = _num(frame[name], 2, "+") + " / " + _num(frame["paper Δ top-1"], 2, "+")
        if not table.ladder:
            out.loc[frame.index[frame["vs"] == frame.index], f"{name} ours / paper"] = "(baseline)"
        out["effect"] = frame["effect"].fillna("-")
    return out


def footnote(table: AblationTable, columns: str, reproduction: bool) -> str:
    """What the numbers mean, and what the table leaves out (Markdown prints it below the tables)."""
    frame = table.frame
    matched = not table.ladder and frame["vs"].nunique(dropna=True) > 1
    against = ("the row before" if table.ladder else "each row's matched control (`vs`: the plain cell that "
               "matches it on every other factor)" if matched else f"`{table.baseline}`")
    covers = ("seeds and validation images (study.interval: seeds+images)" if table.covers == "seeds+images"
              else "seeds (paired by seed, else Welch)")
    what = ("top-1 accuracy" + (" on the test split (selected on data.holdout)" if table.metric.startswith("test/")
                                else "") + " in points") if table.top1 else \
        f"{table.metric} (study.metric{', in points' if '/acc' in table.metric else ''})"
    note = (f"\n\nΔ: {what} vs {against}, 95% CI over {covers}{_level(table)}; "
            "* the interval excludes 0; verdict: better / worse when it does, "
            + (f"equivalent when it lies inside ±{table.margin:g} (study.min_effect), " if table.margin else "")
            + "undecided while it holds 0 (or has no spread: tied seeds), unstable when a seed failed. n counts "
            "seeds (a seed's repeats are averaged into it).")
    if "stage" in frame:
        note += (" A search's numbers: `confirmed` rows are their confirmation runs on fresh seeds (study.confirm), "
                 "compared with the baseline named in advance; `search` rows are the selection runs that chose "
                 "them, compared with nothing.")
    if reproduction:
        note += " Reproduction: " + MATCH_RULE + " " + replication.RULE
    if table.hidden:
        note += (f" {table.hidden} finished trials of configurations the study file no longer holds "
                 "are left out (--all shows them).")
    if table.refused:
        note += " Refused by study.constraints before training: " + "; ".join(
            f"{label} ({why})" for label, why in table.refused.items()) + "."
    if columns == "compact":
        note += " More columns: --columns all."
    return note


def checklist(missing) -> str:
    """The ablations a reviewer will ask for: each declared ablation of the study's modules it has not run."""
    if not missing:
        return ""
    return ("\n\nNot yet run, of the ablations its modules declare (`ablate plan MODULE` writes them as a study):\n"
            + "".join(f"\n- {line}" for line in missing))


def _level(table: AblationTable) -> str:
    """How the intervals share their 95%: Holm within a family, Pocock over seeds on demand's looks."""
    parts = []
    if table.adjust == "holm":
        family = "a ladder's steps" if table.ladder else "the rows compared with one control"
        parts.append(f"Holm-adjusted across {family} (study.adjust: holm; Holm 1979)")
    else:
        parts.append("each comparison alone (study.adjust: none)")
    if table.looks:
        parts.append(f"spent over the looks at {table.looks[0]}..{table.looks[-1]} seeds that seeds on demand take "
                     "(Pocock's boundary)")
    return ", " + ", ".join(parts) + "; unadjusted intervals: --columns all"


def dry_run_page(table: pd.DataFrame) -> Page:
    """A dry run's table (report.dry_run_table) as a reader sees it: params and GMACs to the digits the papers
    print, and a footnote on how GMACs are counted."""
    digits = lambda col: 4 if col == "ours Δ GMACs" else 3 if "GMACs" in col else 2  # noqa: E731  (as the papers)
    sign = lambda col: "+" if "Δ" in col else ""  # noqa: E731
    table = table.assign(setup=table["setup"].fillna("-")) if "setup" in table else table
    view = table.apply(lambda col: _check(col) if col.name.endswith("match") else col.map(
        lambda v: "-" if pd.isna(v) else f"{v:{sign(col.name)}.{digits(col.name)}f}") if col.dtype.kind == "f" else col)
    note = ("\n\nDry run: nothing trained. GMACs (multiply-accumulates) by torch.utils.flop_counter; the papers' "
            "\"GFLOPs\" columns count MACs too, with other counters (ResNet-50: 4.089 here, 3.858 in CBAM), so "
            "compare the differences between rows (Δ: each row against its matched plain cell). " + MATCH_RULE
            + (" `setup`: whether the paper's row measured this configuration's dataset, backbone, image size, epochs "
               "and recipe; params and GMACs are matched only on its backbone and image size." if "setup" in table
               else ""))
    return Page(table, view, note=note)


# ---------------------------------------------------------------- formats

@dataclass
class Page:
    """What a format writes from: CSV and JSON the numbers, Markdown, LaTeX and HTML the view a reader sees;
    Markdown also the reproduction table after it and the footnote."""

    numbers: pd.DataFrame
    view: pd.DataFrame
    against: pd.DataFrame | None = None
    note: str = ""


def markdown(view: pd.DataFrame, note: str = "") -> str:
    """An aligned Markdown table of strings (pandas' to_markdown needs tabulate, which we do without)."""
    view = view.reset_index().astype(str)
    widths = [max(len(c), *view[c].str.len()) for c in view.columns]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    rule = "| " + " | ".join("-" * w for w in widths) + " |"
    return "\n".join([line(view.columns), rule, *(line(r) for r in view.itertuples(index=False))]) + note


def _markdown(page: Page) -> str:
    if page.against is not None:
        return markdown(page.view) + "\n\nAgainst the paper:\n\n" + markdown(page.against, page.note)
    return markdown(page.view, page.note)


def _latex(page: Page) -> str:
    latex = page.view.rename_axis(None).style.to_latex(hrules=True)  # booktabs rules
    return latex.replace("±", r"$\pm$").replace("Δ", r"$\Delta$")


# --format -> its writer
WRITERS: dict[str, Callable[[Page], str]] = {
    "md": _markdown,
    "csv": lambda page: page.numbers.to_csv(),
    "latex": _latex,
    "html": lambda page: html_page(page),
    "json": lambda page: page.numbers.reset_index().to_json(orient="records", indent=2, force_ascii=False),
}
FORMATS = tuple(WRITERS)


STYLE = """body{font:13px/1.4 system-ui,sans-serif;margin:12px;color:#1f272d}h2{font-size:18px;margin:4px 0}
table{border-collapse:collapse;margin:8px 0 14px}th,td{border:1px solid #d1d9e1;padding:3px 8px;text-align:right}
td,tbody th{white-space:nowrap}thead th{background:#f5f7f9}tbody th{text-align:left}
p.note{max-width:1000px;color:#445461;font-size:12px}img{max-width:100%;display:block;margin:4px 0 12px}
td.better{color:#1b7a3d;font-weight:600}td.worse{color:#b3261e;font-weight:600}"""


def html_page(page: Page, title: str = "", figures: Mapping[str, bytes] | None = None) -> str:
    """A self-contained HTML page of what Markdown prints (the table, its figures inline as data: URIs, the table
    against the paper, the footnote): MLflow shows an HTML artifact in a sandboxed iframe, which cannot fetch the
    run's other artifacts."""
    def table(view: pd.DataFrame) -> str:
        out = view.to_html(border=0, index_names=False)  # the row labels say what they are
        if "verdict" in view:  # the verdict's word as its cell's class too, so that its colour says it
            for verdict in ("better", "worse"):
                out = out.replace(f"<td>{verdict}</td>", f'<td class="{verdict}">{verdict}</td>')
        return out

    note = re.sub(r"`([^`]*)`", r"<code>\1</code>", html.escape(page.note.strip()))
    parts = [f"<h2>{html.escape(title)}</h2>" if title else "", table(page.view)]
    parts += [f'<img alt="{html.escape(name)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'
              for name, data in (figures or {}).items()]
    if page.against is not None:
        parts += ["<h3>Against the paper</h3>", table(page.against)]
    parts.append(f'<p class="note">{note}</p>' if note else "")
    return (f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{STYLE}</style></head><body>\n" + "\n".join(p for p in parts if p) + "\n</body></html>\n")


def png(fig) -> bytes:
    """A matplotlib figure as PNG bytes, written in one go: a full disk is one error, not a silent half-file."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    return buffer.getvalue()


def one_of(choices: dict, name: str, option: str):
    """choices[name], or the one-line error that names the option and what it allows."""
    if name not in choices:
        raise AblateError(f"{option}: {name!r} is not one of {', '.join(choices)}")
    return choices[name]


def writer(fmt: str) -> Callable[[Page], str]:
    """The writer of --format `fmt`."""
    return one_of(WRITERS, fmt, "--format")


def check_options(fmt: str, columns: str = "compact") -> None:
    """--format and --columns name a writer and a view: checked before a store is read."""
    writer(fmt)
    one_of(VIEWS, columns, "--columns")
