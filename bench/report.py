"""Render ``docs/benchmarks.md`` from a ``bench all`` result: each figure beside its baseline.

Why generated: the table must be the latest run's numbers, not a hand-copied memory of them.
``onyx-wa bench all`` calls :func:`write_report` after saving the JSON to ``bench/results/``;
``python -m bench.report FILE.json`` re-renders from a saved result.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def _n(value: Any, digits: int = 0, unit: str = "") -> str:
    if value is None:
        return "—"
    if isinstance(value, float) and value != value:  # NaN
        return "—"
    text = f"{value:,.{digits}f}" if isinstance(value, int | float) else str(value)
    return f"{text}{unit}"


def _verdict(ok: bool | None) -> str:
    return "" if ok is None else (" ✅" if ok else " ❌")


def _floor_baseline(e: dict[str, Any], name: str) -> str:
    """The bare client runs around an egress floor (results before those existed: the
    worker's)."""
    around = e.get(f"floor_{name}_bare_client_sends_per_s")
    if around is None:
        return f"bare aiohttp client: {_n(e.get('bare_client_sends_per_s'))} sends/s"
    return f"bare aiohttp client, runs around it: {_n(around)} sends/s"


def _rounds(ratios: list[float] | None) -> str:
    """ " (median of rounds 0.41, 0.45, 0.47)"; nothing for a one-run result."""
    if not ratios or len(ratios) < 2:
        return ""
    return f" (median of rounds {', '.join(f'{r:.2f}' for r in ratios)})"


def rows(results: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(benchmark, measured, same-run baseline, ratio / goal) for every figure present."""
    out: list[tuple[str, str, str, str]] = []
    c = results.get("codec")
    if c:
        out.append((
            "codec: Avro encode+decode (InboundMessage)",
            _n(c.get("encode_decode_us_median"), 1, " µs"),
            f"json.dumps+loads {_n(c.get('json_baseline_us_median'), 1, ' µs')}",
            f"{_n(c.get('ratio_vs_json'), 2)}× the time",
        ))  # fmt: skip
        if c.get("classified_spliced_us_median") is not None:
            out.append((
                "codec: ClassifiedMessage encoded spliced (the embedded inbound body reused)",
                _n(c.get("classified_spliced_us_median"), 1, " µs"),
                f"encoded whole {_n(c.get('classified_encode_us_median'), 1, ' µs')}",
                f"{_n(c.get('spliced_ratio'), 2)}× the time",
            ))  # fmt: skip
    f = results.get("format")
    if f:
        out.append((
            "format: answer → WhatsApp parts",
            _n(f.get("render_answer_median_us"), 1, " µs"),
            f"markdown-it → HTML {_n(f.get('markdown_it_html_median_us'), 1, ' µs')}",
            f"{_n(f.get('ratio_vs_baseline'), 2)}× the time",
        ))  # fmt: skip
    i = results.get("ingress")
    if i:
        best = max(i.get("closed_loop") or [{}], key=lambda r: r.get("ratio", 0))
        fixed = (i.get("open_loop") or {}).get("ingress") or {}
        out.append((
            f"ingress: signed POST → broker ack, c={best.get('concurrency')}",
            f"{_n(best.get('ingress_rps'))} req/s, p99 {_n(best.get('ingress_p99_ms'), 1, ' ms')}",
            f"bare aiohttp 200: {_n(best.get('baseline_rps'))} req/s",
            f"{_n(best.get('ratio'), 2)} (goal 0.5){_verdict((best.get('ratio') or 0) >= 0.5)}",
        ))  # fmt: skip
        out.append((
            "ingress: open loop at 1,000 req/s",
            f"p50 {_n(fixed.get('p50_ms'), 1, ' ms')}, p99 {_n(fixed.get('p99_ms'), 1, ' ms')}",
            "", f"goal p99 < 50 ms{_verdict((fixed.get('p99_ms') or 1e9) < 50)}",
        ))  # fmt: skip
    s = results.get("streams")
    if s:
        base = s["baseline"]["throughput"]
        for i, store in enumerate(s.get("config", {}).get("stores", [])):
            row = s[store]
            tp = row["throughput"]
            if i == 0 and "ratio" in s:  # the store whose bursts alternated with the baseline's
                ratio = s["ratio"]
                how = f"median of {len(s.get('paired_ratios', []))} paired rounds"
            else:
                ratio = round(tp["events_per_s"] / base["events_per_s"], 2)
                how = "against the baseline's median round"
            out.append((
                f"streams: raw → answer request, {store} store",
                f"{_n(tp['events_per_s'])} events/s, {_n(tp.get('worker_cpu_ms_per_event'), 2)}"
                " ms CPU/event",
                f"bare Faust 2 hops: {_n(base['events_per_s'])} events/s",
                f"{ratio}, {how} (goal 0.6){_verdict(ratio >= 0.6)}",
            ))  # fmt: skip
            eager = s.get("baseline_eager")
            if i == 0 and eager and "ratio_like_for_like" in s:
                out.append((
                    f"streams: like for like, {store} store",
                    "the same pipeline rounds",
                    f"bare Faust 2 hops with the worker's eager delivery: "
                    f"{_n(eager['throughput']['events_per_s'])} events/s",
                    f"{s['ratio_like_for_like']}, median of "
                    f"{len(eager.get('paired_ratios', []))} paired rounds (what this pipeline's "
                    "own work costs; no goal)",
                ))  # fmt: skip
            goal = 400 if store == "memory" else 200
            rss = row["rss_final_mb"].get("VmRSS")
            out.append((
                f"streams: worker RSS, {row['live_conversations']:,} conversations, {store}",
                f"{_n(rss, 0, ' MB')} ({_n(row.get('rss_per_10k_conversations_mb'), 1)} MB per"
                " 10k)",
                f"idle {_n(row['rss_idle_mb'].get('VmRSS'), 0, ' MB')}",
                f"goal < {goal} MB{_verdict(rss is not None and rss < goal)}",
            ))  # fmt: skip
    a = results.get("answers")
    if a:
        out.append((
            f"answers: {a.get('pipeline', {}).get('requests', 500)} conversations at once, "
            "Onyx answering in 1 s",
            f"wall {_n(a['pipeline'].get('wall_s'), 2, ' s')}, p50 "
            f"{_n(a['pipeline'].get('latency_p50_ms'), 0, ' ms')}",
            f"direct client: wall {_n(a['direct'].get('wall_s'), 2, ' s')}, p50 "
            f"{_n(a['direct'].get('latency_p50_ms'), 0, ' ms')}",
            f"goal wall < 5 s{_verdict(a.get('meets_wall_goal'))}; overhead p50 "
            f"{_n(a.get('overhead_p50_ms'), 0, ' ms')} (goal < 100 ms)"
            f"{_verdict(a.get('meets_overhead_goal'))}",
        ))  # fmt: skip
    e = results.get("egress")
    if e:
        out.append((
            "egress: one worker → simulator, throttling off",
            f"{_n(e.get('worker_sends_per_s'))} sends/s",
            f"bare aiohttp client: {_n(e.get('bare_client_sends_per_s'))} sends/s",
            f"{_n(e.get('ratio'), 2)}{_rounds(e.get('ratios'))} (goal 0.7)"
            f"{_verdict((e.get('ratio') or 0) >= 0.7)}",
        ))  # fmt: skip
        floors = (
            ("faust", "a stock Faust agent"),
            ("faust_eager", "a Faust agent on the worker's eager-delivery consumer"),
            ("aiokafka", "a plain aiokafka loop"),
        )
        for name, what in floors:
            if e.get(f"floor_{name}_sends_per_s") is None:
                continue
            out.append((
                f"egress floor, {what}: consume, decode, post, ack, nothing else",
                f"{_n(e.get(f'floor_{name}_sends_per_s'))} sends/s",
                _floor_baseline(e, name),
                f"{_n(e.get(f'floor_{name}_ratio'), 2)}{_rounds(e.get(f'floor_{name}_ratios'))}: "
                "the most any sender on it can reach",
            ))  # fmt: skip
        out.append((
            "egress: token bucket precision",
            f"{_n(e.get('bucket_80_achieved'), 2)}/s at 80/s; "
            f"{_n(e.get('bucket_1000_achieved'), 1)}/s at 1,000/s",
            "", "",
        ))  # fmt: skip
    x = results.get("e2e")
    if x:
        b, p = x["baseline"]["burst"], x["pipeline"]["burst"]
        out.append((
            "end to end: webhook → reply at the simulator, burst, one worker",
            f"{_n(p.get('replies_per_s'))} replies/s",
            f"bare Faust chain, same hops: {_n(b.get('replies_per_s'))} replies/s",
            f"{_n(x.get('ratio'), 2)}",
        ))  # fmt: skip
        for prow, brow in zip(x["pipeline"]["fixed"], x["baseline"]["fixed"], strict=False):
            out.append((
                f"end to end at {_n(prow['offered_per_s'])}/s offered",
                f"p50 {_n(prow['e2e_p50_ms'])} / p95 {_n(prow['e2e_p95_ms'])} / p99 "
                f"{_n(prow['e2e_p99_ms'])} ms",
                f"p50 {_n(brow['e2e_p50_ms'])} / p95 {_n(brow['e2e_p95_ms'])} / p99 "
                f"{_n(brow['e2e_p99_ms'])} ms",
                f"replied {prow['replied']}/{prow['questions']}",
            ))  # fmt: skip
        slow = x.get("slow_answers")
        if slow:
            sp, si = slow["pipeline"], slow["inline_bot"]
            ok = (sp["webhook_p99_ms"] or 1e9) < 100 and (si["webhook_p99_ms"] or 0) > 1000
            out.append((
                f"answers taking {slow['answer_latency_s']} s, {slow['offered_per_s']}/s offered:"
                " webhook latency",
                f"pipeline p99 {_n(sp['webhook_p99_ms'], 1, ' ms')}, "
                f"{_n(sp.get('replies_per_s'), 1)} replies/s",
                f"naive inline bot p99 {_n(si['webhook_p99_ms'], 0, ' ms')}, "
                f"{_n(si.get('replies_per_s'), 1)} replies/s",
                f"goal: pipeline < 100 ms, inline > 1 s{_verdict(ok)}",
            ))  # fmt: skip
        two = x.get("two_workers")
        if two:
            out.append((
                "scaling: two workers vs one (burst)",
                f"{_n(two['burst'].get('replies_per_s'))} replies/s",
                f"one worker: {_n(p.get('replies_per_s'))} replies/s",
                f"×{_n(two.get('scaling_ratio'), 2)}",
            ))  # fmt: skip
    return out


def render(results: dict[str, Any], source: str) -> str:
    lines = [
        "# Benchmarks",
        "",
        "Generated by `make bench` (`onyx-wa bench all --json`) from "
        f"`{source}` on {time.strftime('%Y-%m-%d', time.gmtime())}. Every figure is a median "
        "measured in the same run as its baseline, on one 2-core machine that also runs the "
        "broker, the simulator and the load generator. Re-render with "
        "`python -m bench.report FILE.json`.",
        "",
        "| benchmark | measured | same-run baseline | ratio / goal |",
        "|---|---|---|---|",
    ]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows(results)]
    lines += ["", "What each benchmark does is described in its module docstring in `bench/`.", ""]
    return "\n".join(lines)


def write_report(results: dict[str, Any], source: str, path: Path = DOC) -> Path:
    path.write_text(render(results, source))
    return path


if __name__ == "__main__":  # pragma: no cover
    file = Path(sys.argv[1])
    written = write_report(json.loads(file.read_text()), str(file))
    print(f"wrote {written}")
