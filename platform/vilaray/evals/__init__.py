"""Evaluation: task suites as data, 0/k-shot prompting, the official metrics, a Ray Data inference path and
the report (table, chart, floors)."""
