-- Runs once, on the first start of an empty data volume (postgres image's /docker-entrypoint-initdb.d), as
-- POSTGRES_USER. The image creates POSTGRES_DB (optuna, Optuna's storage); this adds MLflow's backend store.
CREATE DATABASE mlflow;
