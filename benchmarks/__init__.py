"""Speed and memory benchmarks of minisolo (run ``python benchmarks/run.py``)."""
