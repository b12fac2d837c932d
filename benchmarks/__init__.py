"""Speed and quality measurements of sas_fast (not installed with it): run from the repository
root as modules, ``python -m benchmarks.speed.NAME`` / ``python -m benchmarks.studies.NAME``.
``benchmarks/README.md`` lists every script with what it measures, its command and runtime."""
