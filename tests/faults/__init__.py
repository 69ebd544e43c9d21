"""Fault injection in the style of Jepsen: the shop under faults, then a checker.

``python -m tests.faults --profile short|long`` prints the report table; ``test_scenarios.py``
runs the short profile under pytest.
"""
