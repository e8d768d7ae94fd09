"""Per-benchmark summaries of the stored samples, and the markdown table of a run."""

from __future__ import annotations

from megatron_codistill.eval.metrics import Equivalent, k_values, majority_votes, pass_at_k
from megatron_codistill.eval.records import SampleStore


def summarise(store: SampleStore, benchmark: str, problems: list[int], n: int,
              equivalent: Equivalent | None = None) -> dict:
    """Metrics of `benchmark` over `problems` (row indices) from the stored records.

    greedy: fraction correct at temperature 0. With n > 1 sampled responses per problem also
    pass@k for k in 1, 2, 4, ..., n (unbiased, averaged over problems) and maj@n (majority vote over
    groups of verified-equivalent answers, `metrics.majority_votes`).
    """
    greedy = store.select(benchmark, problems, "greedy")
    out: dict = {"benchmark": benchmark, "problems": len(problems)}
    firsts = [rs[0] for rs in greedy.values() if rs]
    out["greedy"] = sum(r["score"] >= 1.0 for r in firsts) / max(len(firsts), 1)
    every = list(firsts)
    if n > 1:
        sampled = {p: rs[:n] for p, rs in store.select(benchmark, problems, "sampled").items()}
        full = [rs for rs in sampled.values() if len(rs) == n]
        for k in k_values(n):
            out[f"pass@{k}"] = sum(pass_at_k(n, sum(r["score"] >= 1.0 for r in rs), k) for rs in full) / max(
                len(full), 1
            )
        votes = majority_votes([([r["extracted"] for r in rs], [r["score"] for r in rs]) for rs in full], equivalent)
        out[f"maj@{n}"] = sum(votes) / max(len(full), 1)
        every += [r for rs in full for r in rs]
    out["mean_response_tokens"] = sum(r["response_tokens"] for r in every) / max(len(every), 1)
    out["truncated"] = sum(r["finish_reason"] == "length" for r in every) / max(len(every), 1)
    return out


def markdown_table(summaries: list[dict], *, title: str = "") -> str:
    """One row per benchmark; accuracies in percent, two decimals."""
    if not summaries:
        return ""
    metrics = [k for k in summaries[0] if k not in ("benchmark", "problems")]
    header = ["benchmark", "problems", *metrics]
    lines = [f"## {title}\n" if title else "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for s in summaries:
        cells = [s["benchmark"], str(s["problems"])]
        for m in metrics:
            v = s.get(m, float("nan"))
            cells.append(f"{v:.1f}" if m == "mean_response_tokens" else f"{100 * v:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(line for line in lines if line) + "\n"
