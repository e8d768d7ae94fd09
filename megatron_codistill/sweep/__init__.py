"""`codistill sweep SPEC.yaml`: a grid of `codistill train` runs and its aggregate (scaling studies).

A spec names a base config, common overrides and axes (named values, each a list of `section.key=value`
overrides); the cells are the cartesian product of the axes. Each cell is one run directory under
`<out>/cells/<axis=value,...>/`, trained locally one after another (`local`) or as one SLURM job array
through `slurm/codistill.sbatch` (`slurm`), always with `--resume`, so interrupted cells continue and
finished ones are skipped (`cells.status`). `aggregate` reads every finished cell's metrics.jsonl and
writes `<out>/summary.md`, `<out>/summary.json` and `<out>/plots/`: mean and 95% t-interval over seeds per
cell group, paired differences by seed against a baseline, and mean curves with 95% bands.

Modules: `spec` (parsing and validation), `cells` (grid expansion, commands, finished state), `local`,
`slurm`, `stats` (t-intervals), `aggregate` (tables, JSON), `plots`, `cli`.
"""
