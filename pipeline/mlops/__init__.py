"""MLOps: the MLflow client, loading registered versions, aliases and the promotion lock, tracking, the pyfunc,
model cards, candidate evaluation, the promotion policy and notifications."""
