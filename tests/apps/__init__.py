"""Apps that tests serve in worker subprocesses (``leveret run tests.apps.NAME:app``)."""
