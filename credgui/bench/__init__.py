"""``credgui benchmark``: CW-RED against plain RELION on simulated data (Kimanius et al. 2021,
section 3.2, Figs. 4-5). No Qt; matplotlib only when drawing the report.

    plan = load_plan("bench/paper_plan.toml")
    for event in iter_benchmark(plan, "bench_out"):   # credgui.progress.Progress; resumable
        print(event.line())
    write_report("bench_out")                         # results.md, fig4_fsc.png, fig5_angles.png
"""

from credgui.bench.plan import VARIANTS, Plan, RunSpec, load_plan, parse_plan
from credgui.bench.report import write_report
from credgui.bench.results import load_results, read_result
from credgui.bench.runner import iter_benchmark

__all__ = ["VARIANTS", "Plan", "RunSpec", "load_plan", "parse_plan", "iter_benchmark", "read_result",
           "load_results", "write_report"]
