"""``credgui benchmark``: CW-RED against plain RELION on simulated data (Kimanius et al. 2021,
section 3.2, Figs. 4-5). No Qt; matplotlib only when drawing the report.

    plan = load_plan("bench/paper_plan.toml")
    for event in iter_benchmark(plan, "bench_out"):   # resumable; one JSON per run
        print(event.line())
    write_report("bench_out")                         # results.md, fig4_fsc.png, fig5_angles.png
"""

from credgui.bench.plan import VARIANTS, Plan, RunSpec, load_plan, parse_plan
from credgui.bench.report import load_results, write_report
from credgui.bench.runner import Event, iter_benchmark, read_result

__all__ = ["VARIANTS", "Plan", "RunSpec", "Event", "load_plan", "parse_plan", "iter_benchmark", "read_result",
           "load_results", "write_report"]
