-- Least privilege for ml-analytics in PostgreSQL. Run once as a superuser (or the
-- database owner) in the service's database, after replacing the two passwords:
--   psql -d ml_analytics -f deploy/postgres-roles.sql
--
-- ml_analytics_migrator owns the schema's objects: use it for `ml-analytics migrate
-- --topics` (the compose `init` service). ml_analytics_app can only read and write
-- rows: use it for `ml-analytics run` (it checks the migrations are applied, which
-- needs no DDL once they are). Neither may create databases or roles.

CREATE ROLE ml_analytics_migrator LOGIN PASSWORD 'change-me-migrator'
    NOSUPERUSER NOCREATEDB NOCREATEROLE;
CREATE ROLE ml_analytics_app LOGIN PASSWORD 'change-me-app'
    NOSUPERUSER NOCREATEDB NOCREATEROLE;

CREATE SCHEMA IF NOT EXISTS ml_analytics AUTHORIZATION ml_analytics_migrator;
REVOKE ALL ON SCHEMA ml_analytics FROM PUBLIC;
GRANT USAGE ON SCHEMA ml_analytics TO ml_analytics_app;
ALTER ROLE ml_analytics_migrator SET search_path = ml_analytics;
ALTER ROLE ml_analytics_app SET search_path = ml_analytics;

-- No single query of the service may write more than this in temporary files (sorts,
-- hashes spilled to disk): a runaway query fails instead of filling the disk. Only a
-- superuser may set it; the service sets its own statement_timeout.
ALTER ROLE ml_analytics_app SET temp_file_limit = '2GB';

-- Tables the migrator creates later are readable and writable by the service.
ALTER DEFAULT PRIVILEGES FOR ROLE ml_analytics_migrator IN SCHEMA ml_analytics
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO ml_analytics_app;
ALTER DEFAULT PRIVILEGES FOR ROLE ml_analytics_migrator IN SCHEMA ml_analytics
    GRANT USAGE, SELECT ON SEQUENCES TO ml_analytics_app;
