"""Report building blocks for ``python -m studies.report`` (tables, figures, statistics, report.md).

Modules: :mod:`load` (results table and run records), :mod:`stats` (mean ± std, tests, Holm),
:mod:`tables` (LaTeX via ``Styler.to_latex`` and Markdown), :mod:`figures` and :mod:`qualitative`
(PNG + PDF in one :mod:`style`), :mod:`markdown` (report.md), :mod:`build` (one suite end to end).
"""

from studies.reporting.load import ReportError

__all__ = ["ReportError"]
