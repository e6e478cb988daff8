"""Run-time services that know nothing of DAGs: running steps, status, metrics."""
