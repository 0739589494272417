"""The stack's default executor imports with the pinned packages. celery 5.7.0 dropped
`celery.backends.database.retry`, which apache-airflow-providers-celery 3.26 imports: the
scheduler and the workers crashed at start in the first real container run (issue 12)."""


def test_celery_executor_imports():
    from airflow.providers.celery.executors import celery_executor, celery_executor_utils  # noqa: F401
