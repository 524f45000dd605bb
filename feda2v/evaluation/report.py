"""The results table printed at the end of a run, built from the MLflow run's metrics."""

from __future__ import annotations


def phases_param(plan: list[tuple[str, int]]) -> str:
    """[('run1', 30), ('run2', 50)] -> 'run1:30,run2:50' (stored as an MLflow param)."""
    return ",".join(f"{phase}:{rounds}" for phase, rounds in plan)


def parse_phases(text: str) -> list[tuple[str, int]]:
    out = []
    for part in filter(None, text.split(",")):
        phase, rounds = part.split(":")
        out.append((phase, int(rounds)))
    return out


def step_labels(plan: list[tuple[str, int]]) -> dict[int, tuple[str, int]]:
    """Global step -> (phase, round within that phase)."""
    labels, step = {}, 0
    for phase, rounds in plan:
        for r in range(1, rounds + 1):
            step += 1
            labels[step] = (phase, r)
    return labels


def result_keys(num_clients: int) -> list[str]:
    """The metrics `results_rows` reads."""
    return ["eval/global_accuracy", "server/synthetic_samples_total",
            *(f"train/node_{i}/generator_loss" for i in range(num_clients))]


def results_rows(plan: list[tuple[str, int]], history: dict[str, list[tuple[int, float]]],
                 num_clients: int) -> list[dict]:
    def at(key: str, step: int):
        return dict(history.get(key, [])).get(step)

    rows = []
    for step, (phase, rnd) in step_labels(plan).items():
        rows.append({
            "phase": phase, "round": rnd, "step": step,
            "accuracy": at("eval/global_accuracy", step),
            "generator_loss": [at(f"train/node_{i}/generator_loss", step) for i in range(num_clients)],
            "synthetic": at("server/synthetic_samples_total", step),
        })
    return rows


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def results_table(rows: list[dict], markdown: bool = False) -> str:
    n = len(rows[0]["generator_loss"]) if rows else 0
    head = ["phase", "round", "global acc", *[f"gen loss c{i}" for i in range(n)], "synthetic pooled"]
    body = [[r["phase"], str(r["round"]), _fmt(r["accuracy"], ".3f"),
             *[_fmt(v, ".4f") for v in r["generator_loss"]], _fmt(r["synthetic"], ".0f")]
            for r in rows]
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(row) + " |" for row in body]
        return "\n".join(lines)
    widths = [max(len(h), *(len(row[i]) for row in body)) for i, h in enumerate(head)]
    fmt = "  ".join(f"{{:>{w}}}" for w in widths)
    return "\n".join([fmt.format(*head), fmt.format(*["-" * w for w in widths]),
                      *(fmt.format(*row) for row in body)])
