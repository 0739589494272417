"""Test stand-in for the site's `diagnosis` app in the DAG's task processes (tests/dags/test_approval_dag.py
puts this folder first on PYTHONPATH of those processes only): provides `diagnosis.shadow.evidence`."""
