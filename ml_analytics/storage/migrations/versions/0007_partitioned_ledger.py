"""The ledger of transaction event ids, partitioned by the event's own week, so that it
stays bounded: weeks older than the dedup window are dropped whole.

A redelivered event has the same business day as its first copy, so it meets it in the
same partition: the primary key (event_id, business_day) is what dedup checks. The
service's role may not create or drop tables (least privilege): two functions owned
by the migrating role do that, and only that, on its behalf.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-28
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("ALTER TABLE transaction_events RENAME TO transaction_events_unpartitioned")
    op.execute(
        "ALTER INDEX transaction_events_pkey RENAME TO transaction_events_unpartitioned_pkey"
    )
    op.execute(
        """
CREATE TABLE transaction_events (
    event_id text NOT NULL,
    product_id text NOT NULL,
    business_day date NOT NULL,
    quantity_units numeric NOT NULL,
    ingested_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (event_id, business_day)
) PARTITION BY RANGE (business_day)
"""
    )
    op.execute(
        """
CREATE TABLE ledger_retention (
    retention_id smallint PRIMARY KEY CHECK (retention_id = 1),
    floor date,
    updated_at timestamptz
)
"""
    )
    op.execute("INSERT INTO ledger_retention (retention_id) VALUES (1)")
    # Weeks start on Monday; one partition per week, named after its Monday.
    op.execute(
        """
CREATE FUNCTION ensure_ledger_partitions(weeks date[]) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
    week date;
    created integer := 0;
    name text;
    oldest date := (SELECT floor FROM ledger_retention WHERE retention_id = 1);
BEGIN
    FOREACH week IN ARRAY weeks LOOP
        week := week - (extract(isodow FROM week)::integer - 1);
        IF oldest IS NOT NULL AND week + 7 <= oldest THEN
            CONTINUE;  -- dropped for good: its events can no longer be checked
        END IF;
        name := 'transaction_events_' || to_char(week, 'YYYYMMDD');
        IF to_regclass(name) IS NULL THEN
            BEGIN
                EXECUTE format(
                    'CREATE TABLE %I PARTITION OF transaction_events FOR VALUES FROM (%L) TO (%L)',
                    name, week, week + 7);
                created := created + 1;
            EXCEPTION WHEN duplicate_table OR invalid_object_definition THEN
                NULL;  -- another session created it first
            END;
        END IF;
    END LOOP;
    RETURN created;
END $$
"""
    )
    op.execute(
        """
CREATE FUNCTION drop_ledger_partitions(below date) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
    part record;
    dropped integer := 0;
BEGIN
    FOR part IN
        SELECT child.relname AS name FROM pg_inherits
        JOIN pg_class parent ON parent.oid = pg_inherits.inhparent
        JOIN pg_class child ON child.oid = pg_inherits.inhrelid
        WHERE parent.relname = 'transaction_events'
          AND child.relname ~ '^transaction_events_[0-9]{8}$'
          AND to_date(right(child.relname, 8), 'YYYYMMDD') + 7 <= below
    LOOP
        EXECUTE format('DROP TABLE %I', part.name);
        dropped := dropped + 1;
    END LOOP;
    RETURN dropped;
END $$
"""
    )
    op.execute(
        "SELECT ensure_ledger_partitions(ARRAY(SELECT DISTINCT business_day "
        "FROM transaction_events_unpartitioned))"
    )
    op.execute("INSERT INTO transaction_events SELECT * FROM transaction_events_unpartitioned")
    op.execute("DROP TABLE transaction_events_unpartitioned")


def downgrade() -> None:
    op.execute("CREATE TABLE transaction_events_flat (LIKE transaction_events INCLUDING DEFAULTS)")
    op.execute("INSERT INTO transaction_events_flat SELECT * FROM transaction_events")
    op.execute("DROP TABLE transaction_events")
    op.execute("ALTER TABLE transaction_events_flat RENAME TO transaction_events")
    op.execute("ALTER TABLE transaction_events ADD PRIMARY KEY (event_id)")
    op.execute("DROP FUNCTION drop_ledger_partitions(date)")
    op.execute("DROP FUNCTION ensure_ledger_partitions(date[])")
    op.execute("DROP TABLE ledger_retention")
