"""Settings for the whole suite."""

from hypothesis import settings

# No hypothesis example may fail for taking long: these machines are shared, and a deadline is a
# timed assertion (one flaked at 366 ms against 200 on a loaded 2-core machine). Budgets that
# matter are asserted by counting steps, not by the clock.
settings.register_profile("kube-iam", deadline=None)
settings.load_profile("kube-iam")
