"""Benchmarks: leveret next to hand-written aio-pika, bare aiormq and FastStream."""
