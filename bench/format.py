"""Formatter benchmark: ``render_answer`` on a realistic cited answer vs markdown-it → HTML.

Why this baseline: ``render_answer`` is citations + a markdown-it parse + a tree walk + footer +
splitting. markdown-it's own ``render()`` to HTML of the same text, timed in the same process
between the same rounds, is the cost of "just parsing Markdown"; the ratio says what the WhatsApp
rules add on top, and stays comparable across machines.

Each answer is timed on its own (``n`` samples per side, interleaved so that drift hits both
sides alike); figures are medians per answer. ``onyx-wa bench format`` runs it.
"""

from __future__ import annotations

import gc
import statistics
import time
from typing import Any

from markdown_it import MarkdownIt

from egress.compose import render_answer

SOURCES = [
    {"number": i, "title": title, "link": f"https://intranet.acme.example/docs/{i}"}
    for i, title in enumerate(
        [
            "Leave Policy 2025",
            "Public Holidays by Country",
            "HR Portal: Requesting Time Off",
            "Payroll FAQ",
            "Remote Work Guidelines",
            "Travel and Expenses Policy",
            "Onboarding Checklist",
        ],
        1,
    )
]


def sample_answer() -> str:
    """About 3,000 characters the way an LLM answers: headings, lists, a table, code, citations."""
    link = "https://intranet.acme.example/docs/{}".format
    return (
        "## Annual leave at Acme\n\n"
        f"Full-time employees get **25 working days** of paid leave per year "
        f"[[1]]({link(1)}), on top of the public holidays of their country "
        f"[[2]]({link(2)}). Part-time staff accrue leave *pro rata* to their contracted "
        f"hours [[1]]({link(1)}).\n\n"
        "### How to request time off\n\n"
        f"1. Open the **HR portal** and choose *Time off → New request* [[3]]({link(3)}).\n"
        "2. Pick the dates; the portal shows your remaining balance.\n"
        "3. Add a note for your manager if the request is longer than two weeks.\n"
        "   - Requests over 10 days need approval **at least 4 weeks** ahead.\n"
        "   - During the year-end freeze (Dec 15 – Jan 5) only emergencies are approved.\n"
        f"4. You get an e-mail once it is approved [[3]]({link(3)}).\n\n"
        "### Carry-over and payout\n\n"
        f"Up to **5 unused days** carry over to the next year and expire on March 31 "
        f"[[1]]({link(1)}). Days beyond that are ~~paid out~~ forfeited unless your manager "
        f"approved an exception in writing [[4]]({link(4)}).\n\n"
        "| Situation | Carry-over | Payout |\n"
        "|---|---|---|\n"
        "| Regular year | 5 days | none |\n"
        "| Parental leave | all days | none |\n"
        "| Leaving the company | n/a | all accrued days |\n\n"
        "### Checking your balance from the command line\n\n"
        "If you prefer scripts, the HR API returns your balance:\n\n"
        "```bash\n"
        'curl -H "Authorization: Bearer $HR_TOKEN" \\\n'
        "  https://hr.acme.example/api/v2/leave/balance?user=me\n"
        "```\n\n"
        "The response has `remaining_days`, `carried_over` and `expires_at` fields; "
        "`snake_case_names` like these are never turned into italics.\n\n"
        f"> **Remote workers:** leave rules are the same, but check the remote work "
        f"guidelines for working from abroad [[5]]({link(5)}).\n\n"
        f"For travel during leave, see the [travel policy]({link(6)}) or ask "
        "<hr@acme.example>. Questions about payslips go to payroll [[4]]"
        f"({link(4)}).\n\n"
        "---\n\n"
        "**Summary:** 25 days a year, request them in the HR portal, carry over at most 5 "
        "days until March 31, and plan long leave at least 4 weeks ahead. Have a great break 🌴!"
        "\n\nIn detail, the accrual works like this: every month you earn 25/12 ≈ 2.08 days, "
        "rounded to a quarter day; the portal shows both the accrued and the planned days, "
        "and planned days are reserved as soon as the request is submitted, even before it "
        "is approved. If a request is rejected, the reserved days return to your balance "
        "the same day. Sick days during approved leave do not count as leave when a doctor's "
        f"note is uploaded within three working days [[1]]({link(1)}).\n\n"
        "New joiners start with a prorated balance from their first day, and the first "
        "five days can be taken after the probation period ends; before that, unpaid leave "
        f"can be agreed with your manager [[7]]({link(7)}). Ask me about any of these "
        "rules in more detail, or type */reset* to start a new conversation."
    )


def _median_us(fn: Any, text: str, n: int) -> tuple[float, float]:
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        fn(text)
        samples.append((time.perf_counter() - started) * 1e6)
    return statistics.median(samples), statistics.quantiles(samples, n=100)[98]


def run(n: int = 2000, rounds: int = 5) -> dict[str, Any]:
    """Median microseconds per answer for render_answer and for the markdown-it baseline."""
    text = sample_answer()
    baseline = MarkdownIt("commonmark").enable(["table", "strikethrough"])

    def ours(t: str) -> list[str]:
        return render_answer(t, SOURCES, show_sources=True, top_n=5)

    parts = ours(text)
    if not parts or any(len(p) > 4096 for p in parts) or "[[" in "".join(parts):
        raise RuntimeError("render_answer produced a wrong result; not benchmarking it")
    per_round = max(1, n // rounds)
    ours_samples: list[float] = []
    base_samples: list[float] = []
    ours_p99: list[float] = []
    gc_was_enabled = gc.isenabled()
    gc.disable()  # a collection would land in whichever side happens to be running
    try:
        _median_us(ours, text, 50)  # warm-up: imports, regex compilation, caches
        _median_us(baseline.render, text, 50)
        for _ in range(rounds):
            median, p99 = _median_us(ours, text, per_round)
            ours_samples.append(median)
            ours_p99.append(p99)
            base_samples.append(_median_us(baseline.render, text, per_round)[0])
    finally:
        if gc_was_enabled:
            gc.enable()

    ours_us = statistics.median(ours_samples)
    base_us = statistics.median(base_samples)
    result = {
        "answer_chars": len(text),
        "parts": len(parts),
        "answers_per_round": per_round,
        "rounds": rounds,
        "render_answer_median_us": round(ours_us, 1),
        "render_answer_p99_us": round(statistics.median(ours_p99), 1),
        "markdown_it_html_median_us": round(base_us, 1),
        "ratio_vs_baseline": round(ours_us / base_us, 2),
        "answers_per_s": round(1e6 / ours_us),
    }
    print(f"answer: {len(text)} chars with citations → {len(parts)} WhatsApp part(s)")
    print(f"{'render_answer (citations+md→WhatsApp+footer+split)':<52}{ours_us:>10.1f} µs")
    print(f"{'baseline markdown-it render() → HTML':<52}{base_us:>10.1f} µs")
    print(f"{'ratio':<52}{ours_us / base_us:>10.2f} ×")
    return result


if __name__ == "__main__":
    run()
