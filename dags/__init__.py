"""Airflow 3 DAGs that wire tasks to library calls (the DAG issue builds them)."""
