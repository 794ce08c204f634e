"""PostgreSQL: tables, migrations and the queries the rest of the service uses."""
