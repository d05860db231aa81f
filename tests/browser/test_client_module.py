"""The client's pure helpers (format.js, portfolio-stream.js, ui.js), run in the real browser."""

from __future__ import annotations

from typing import Any

from tests.browser.conftest import BROWSER_TEST, PageFactory, ServerFactory

pytestmark = BROWSER_TEST

EXERCISE = """async () => {
  const format = await import("/static/format.js");
  const stream = await import("/static/portfolio-stream.js");
  const ui = await import("/static/ui.js");
  const fixed = (r) => ({ random: () => r });
  return {
    decimals: [
      format.formatDecimal("550"),
      format.formatDecimal("104550.5"),
      format.formatDecimal("0.125"),
      format.formatDecimal("-0.125"),
      format.formatDecimal("-0.004"),
      format.formatDecimal("1234567.891", 2, { grouping: true }),
      format.formatDecimal("12.5", 0),
      format.formatDecimal("1e-7"),
      format.formatDecimal(null),
      format.formatDecimal("abc"),
      format.formatDecimal("99.995"),
    ],
    money: [
      format.formatSignedMoney("550.00"),
      format.formatSignedMoney("-12.3"),
      format.formatSignedMoney("0"),
      format.formatSignedMoney("-1234.5", { grouping: true }),
    ],
    sums: [format.sumMoney(["1.10", "2.205", "-0.01"]), format.sumMoney(["-5", "2.5"]),
           format.sumMoney([])],
    trimmed: ["10.000", "0.50", "100", null].map(format.trimDecimal),
    durations: [0, 12.4, 59.6, 250, 3600, 7322, -3, null].map(format.formatDuration),
    millis: [0.4231, 12.46, 99.96, 1250.4, -0.5, null, "x"].map(format.formatMilliseconds),
    counts: [0, 15420, null].map(format.formatCount),
    safeNext: [ui.safeNext("/admin/websocket"), ui.safeNext("//evil.example"),
               ui.safeNext("https://evil.example"), ui.safeNext("/\\\\evil"), ui.safeNext(null)],
    ceilings: [1, 2, 3, 4, 5, 6, 10].map((n) => stream.reconnectDelay(n, null, fixed(0.999999))),
    floors: [1, 5].map((n) => stream.reconnectDelay(n, null, fixed(0))),
    limited: [1, 2, 6].map((n) => [
      stream.reconnectDelay(n, 1013, fixed(0)),
      stream.reconnectDelay(n, 1013, fixed(0.999999)),
    ]),
  };
}"""


async def test_formatting_and_backoff_helpers(
    live_server: ServerFactory, new_page: PageFactory
) -> None:
    server = await live_server()
    page, console = await new_page(server)
    await page.goto("/login")
    result: dict[str, Any] = await page.evaluate(EXERCISE)
    # Exact decimal strings, rounded half away from zero, never through binary floats.
    assert result["decimals"] == [
        "550.00", "104550.50", "0.13", "-0.13", "0.00", "1,234,567.89", "13", "0.00", "—",
        "—", "100.00",
    ]  # fmt: skip
    assert result["money"] == ["+$550.00", "-$12.30", "+$0.00", "-$1,234.50"]
    assert result["sums"] == ["3.30", "-2.50", "0.00"]
    assert result["trimmed"] == ["10", "0.5", "100", "—"]
    assert result["durations"] == ["0s", "12s", "1m 00s", "4m 10s", "1h 00m", "2h 02m", "0s", "0s"]
    # Finer below 1 ms and 100 ms, where a round trip on a LAN lives.
    assert result["millis"] == ["0.42 ms", "12.5 ms", "100.0 ms", "1,250 ms", "-0.50 ms", "—", "—"]
    assert result["counts"] == ["0", "15,420", "0"]  # the browser's locale: en-US here
    assert result["safeNext"] == ["/admin/websocket"] + ["/admin/positions"] * 4
    # Full jitter: the ceiling doubles from 1000 ms and stops at 30 s; the floor is zero.
    assert result["ceilings"] == [1000, 2000, 4000, 8000, 16000, 30000, 30000]
    assert result["floors"] == [0, 0]
    # After 1013: five times the ceiling, drawn from its upper half, capped at 120 s.
    assert result["limited"] == [[2500, 5000], [5000, 10000], [60000, 120000]]
    assert console.errors == []
