"""The evaluation report on disk: JSON, a Markdown table and PNG plots beside it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.evaluation.protocol import KS


def write_report(report: dict[str, Any], output: Path) -> list[Path]:
    """Writes report.json, a Markdown table and PNG plots beside it."""
    from catalog.fsutil import write_json

    write_json(output, report)
    rows = [
        *_methods_table(report),
        *_exposure_table(report),
        *_sources_table(report),
        *_stage_tables(report),
        *_seeds_table(report),
        *_arrivals_table(report),
    ]
    table = output.with_suffix(".md")
    table.write_text("\n".join(rows) + "\n")
    return [output, table, *_plots(report, output)]


def _methods_table(report: dict[str, Any]) -> list[str]:
    """The best baseline and every method's headline figures."""
    best = report.get("best_baseline")
    protocol = report.get("protocol", {})
    rows = [
        f"Protocol: {protocol.get('split', 'duorank')}."
        + (
            f" Kept {protocol['kept']['users']} users, {protocol['kept']['items']} items, "
            f"{protocol['kept']['events']} events ({protocol.get('dropped_events', 0)} dropped, "
            f"{protocol.get('ties_moved', 0)} tied events moved)."
            if "kept" in protocol
            else ""
        ),
        "",
        f"Best baseline of the run: {best}." if best else "No baseline in this run.",
        "",
        "| method | NDCG@10 (95% CI) | / best | Recall@10 | MRR@10 | Recall@100 | AUC "
        "| cold Recall@100 | seconds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, m in report["methods"].items():
        lo, hi = m["ndcg@10_ci95"]
        ratio = m.get("ndcg@10_vs_best_baseline")
        rows.append(
            f"| {name} | {m['ndcg@10']:.4f} ({lo:.4f}-{hi:.4f}) "
            f"| {'' if ratio is None else f'{ratio:.2f}x'} | {m['recall@10']:.4f} "
            f"| {m['mrr@10']:.4f} | {m['recall@100']:.4f} | "
            f"{m.get('auc', float('nan')):.3f} | {m.get('cold_recall@100', float('nan')):.3f} "
            f"| {m.get('tune_seconds', 0.0) + m['train_seconds']:.0f} |"
        )
    return rows


def _exposure_table(report: dict[str, Any]) -> list[str]:
    """Beyond accuracy: how the top 10 spreads over the catalog."""
    rows: list[str] = []
    rows += [
        "",
        "| method | coverage@10 | Gini@10 | most shown item: share of users | most shown cold "
        "item: share | cold items' share of slots |",
        "|---|---|---|---|---|---|",
    ]
    for name, m in report["methods"].items():
        if "gini@10" in m:
            rows.append(
                f"| {name} | {m['coverage@10']:.3f} | {m['gini@10']:.3f} "
                f"| {m['max_item_share@10']:.3f} ({m['max_item_share@10_item']}) "
                f"| {m['cold_max_item_share@10']:.3f} ({m['cold_max_item_share@10_item']}) "
                f"| {m['cold_slot_share@10']:.3f} |"
            )
    return rows


def _sources_table(report: dict[str, Any]) -> list[str]:
    """The room the ranking stage has: each candidate source's recall on validation."""
    rows: list[str] = []
    sources = report.get("candidate_sources")
    if sources:  # the room the ranking stage has (validation)
        depth = sources["depth"]
        rows += [
            "",
            f"Candidate sources on validation ({depth} items each):",
            "",
            "| source | Recall@20 | Recall@50 | Recall@100 | merged without it |",
            "|---|---|---|---|---|",
        ]
        for name, m in sources["sources"].items():
            rows.append(
                f"| {name} | {m['recall@20']:.3f} | {m['recall@50']:.3f} "
                f"| {m['recall@100']:.3f} | {sources['without'][name]:.3f} |"
            )
        merged = sources["merged"]
        rows.append(
            f"| merged ({merged[f'size@{depth}']:.0f} items at {depth}) "
            f"| {merged['recall@20']:.3f} | {merged['recall@50']:.3f} "
            f"| {merged['recall@100']:.3f} | |"
        )
    return rows


def _stage_tables(report: dict[str, Any]) -> list[str]:
    """The ranking stage on validation: the served choice, the ablations, the text beside it."""
    rows: list[str] = []
    stage = report.get("ranking_stage")
    if stage:  # the ranking stage on validation: the served choice and the ablations
        choice = stage["choice"]
        rows += [
            "",
            f"Ranking stage on validation ({stage['stacked_lists']} stacked training lists, "
            f"{stage['candidates_per_list']:.0f} candidates per list, target among them for "
            f"{stage['candidate_recall']:.3f}): serves the {choice['served'].replace('_', ' ')} "
            f"(first stage NDCG@10 {choice['first_stage_ndcg@10']:.4f}, ranker "
            f"{choice['ndcg@10']:.4f}, difference {choice['minus_first_stage']:+.4f}, one "
            f"standard error {choice['minus_first_stage_se']:.4f}).",
            "",
            "| variant | NDCG@10 | / first stage | difference (+- 1 se) | rounds |",
            "|---|---|---|---|---|",
        ]
        for name, a in stage["ablation"].items():
            rows.append(
                f"| {name} | {a['ndcg@10']:.4f} | {a['vs_first_stage']:.2f}x "
                f"| {a['minus_first_stage']:+.4f} +- {a['minus_first_stage_se']:.4f} "
                f"| {a['rounds']} |"
            )
        text = stage.get("text")
        if text:  # the cross-encoder's text against and beside the features ranker
            rows += [
                "",
                f"Text on validation (the cross-encoder's logit over the tower's top "
                f"{text['depth']}, {text['pairs']} pairs, {text['ms_per_pair']:.2f} ms a pair on "
                f"{text['backend']}; blend weights cross-fitted on the other half of the users): "
                f"serves the {text['served']}.",
                "",
                "| variant | NDCG@10 | difference to the ranker (+- 1 se) |",
                "|---|---|---|",
            ]
            for name, t in text["variants"].items():
                rows.append(
                    f"| {name} | {t['ndcg@10']:.4f} "
                    f"| {t['minus_ranker']:+.4f} +- {t['minus_ranker_se']:.4f} |"
                )
    batch = report.get("methods", {}).get("ranking_stage", {}).get("batch")
    if batch:  # reports written before the batch protocol lack it
        vs = batch["vs_online"]
        lo, hi = vs["ndcg@10_mean_minus_reference_ci95"]
        rows += [
            "",
            f"Served as a nightly batch (`recommend-all`: every test user at the log's end, "
            f"time {batch['request_time']}): NDCG@10 {batch['ndcg@10']:.4f}, "
            f"{vs['ndcg@10_mean_vs_reference']:.2f}x the online call at each user's event "
            f"(paired 95% CI {lo:+.4f} to {hi:+.4f}).",
        ]
    return rows


def _arrivals_table(report: dict[str, Any]) -> list[str]:
    """The new-arrivals protocol: (a) to (d) per method, paired against the served pipeline."""
    arrivals = report.get("new_arrivals")
    if not arrivals or not arrivals.get("methods"):
        return []
    rows = [
        "",
        f"New arrivals (cut-off {arrivals['cutoff']}, {arrivals['new_items']} new items; "
        f"{arrivals['events_on_new_items']} events on new items of "
        f"{arrivals['returning_users']} returning users; {arrivals['cold_events']} events of "
        f"{arrivals['cold_users']} cold users):",
        "",
        "| method | shelf NDCG@10 (95% CI) | - served (95% CI) | new items NDCG@10 "
        "| Recall@10 | Recall@50 | - served (95% CI) | AUC new items | cold users NDCG@10 "
        "| - served (95% CI) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]

    def ci(pair: Any) -> str:
        return "" if pair is None else f"{pair[0]:+.4f} to {pair[1]:+.4f}"

    for name, m in arrivals["methods"].items():
        shelf, new, cold = m["shelf"], m["new_items"], m["cold_users"]
        lo, hi = shelf["ndcg@10_ci95"]
        rows.append(
            f"| {name} | {shelf['ndcg@10']:.4f} ({lo:.4f}-{hi:.4f}) "
            f"| {ci(m.get('shelf_ndcg@10_minus_served_ci95'))} | {new['ndcg@10']:.4f} "
            f"| {new['recall@10']:.4f} | {new['recall@50']:.4f} "
            f"| {ci(m.get('new_items_recall@50_minus_served_ci95'))} "
            f"| {m['like_auc_new_items']:.3f} | {cold['ndcg@10']:.4f} "
            f"| {ci(m.get('cold_ndcg@10_minus_served_ci95'))} |"
        )
    verdicts = arrivals.get("text_features")
    if verdicts:  # reports written before the slice-by-slice verdict lack it
        said = "; ".join(
            f"{name}: {v['text']} ({ci(v['without_minus_with_ci95'])} without them)"
            for name, v in verdicts.items()
        )
        rows += ["", f"The stage's text features (`text_cos_*`), slice by slice: {said}."]
    return rows


def _seeds_table(report: dict[str, Any]) -> list[str]:
    """The headline over seeds, with the interval of the seeds' mean."""
    rows: list[str] = []
    seeded = {n: m["seeds"] for n, m in report["methods"].items() if "runs" in m.get("seeds", {})}
    if seeded:  # the headline over seeds, with the interval of the seeds' mean
        rows += [
            "",
            "| method | seeds | NDCG@10 mean +- sd | mean / best | paired 95% CI, mean - best "
            "| mean / ALS | paired 95% CI, mean - ALS |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, sm in seeded.items():
            cells = []
            for key in ("vs_best_baseline", "vs_als"):
                vs = sm.get(key, {})
                lo, hi = vs.get("ndcg@10_mean_minus_reference_ci95", (float("nan"),) * 2)
                ratio = vs.get("ndcg@10_mean_vs_reference") or float("nan")
                cells.append(f"{ratio:.2f}x | {lo:+.4f} to {hi:+.4f}")
            rows.append(
                f"| {name} | {len(sm['runs'])} | {sm['ndcg@10_mean']:.4f} +- "
                f"{sm['ndcg@10_std']:.4f} | {' | '.join(cells)} |"
            )
    return rows


def _plots(report: dict[str, Any], output: Path) -> list[Path]:
    """Recall@K per method, and the calibration of each P(like), as PNG beside the report."""
    written: list[Path] = []
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, m in report["methods"].items():
        ax.plot(KS, [m[f"recall@{k}"] for k in KS], marker="o", label=name)
    ax.set_xlabel("K")
    ax.set_ylabel("Recall@K (test)")
    ax.set_xscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    png = output.with_name(output.stem + "-recall.png")
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)
    written.append(png)
    curves = {n: m["calibration"] for n, m in report["methods"].items() if "calibration" in m}
    if curves:
        fig, ax = plt.subplots(figsize=(4.8, 4.5))
        ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect")
        for name, curve in curves.items():
            ax.plot(
                [c["predicted"] for c in curve],
                [c["observed"] for c in curve],
                marker="o",
                label=name,
            )
        ax.set_xlabel("predicted P(like) of the held-out interaction")
        ax.set_ylabel("observed like rate (rating >= 4)")
        ax.legend(fontsize=7)
        png = output.with_name(output.stem + "-calibration.png")
        fig.tight_layout()
        fig.savefig(png, dpi=120)
        plt.close(fig)
        written.append(png)
    return written
