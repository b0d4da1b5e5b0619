//! The hub's PostgreSQL schema, applied by `central-hub migrate` as the database owner.
//!
//! * `events` is partitioned `LIST (site_id)`, each site `RANGE (occurred_at)` by month, with a
//!   DEFAULT partition per site so no event is ever refused for its timestamp. Partitions are
//!   created by `mes_ensure_partitions`, a SECURITY DEFINER function the hub role may call
//!   (at `site add` and periodically) without owning the tables.
//! * Every site-scoped table has row-level security keyed on
//!   `current_setting('app.current_site_id', true)`, which the hub sets per transaction with
//!   `set_config(..., true)`. The hub connects as `mes_hub`, neither owner nor superuser and
//!   without BYPASSRLS, so the policies bind it. `mes_reporting` may read across sites.
//! * Migrations are append-only and recorded in `schema_migrations`; an advisory lock makes
//!   concurrent `migrate` runs (two hub replicas starting) safe.

use sqlx::{Executor, PgPool};

/// The role the hub's sync and API connections use.
pub const HUB_ROLE: &str = "mes_hub";
/// The role reporting queries use (read-only, across sites).
pub const REPORTING_ROLE: &str = "mes_reporting";

/// `mes_ensure_partitions`, as the first migration creates it and a later one replaces it:
/// `$create` is `CREATE` or `CREATE OR REPLACE`, `$on_month_with_rows` what it does with a
/// month whose rows already sit in the site's DEFAULT partition. One text, so the two
/// versions differ only there.
macro_rules! ensure_partitions_fn {
    ($create:literal, $on_month_with_rows:literal) => {
        concat!(
            $create,
            r#" FUNCTION mes_ensure_partitions(p_site text, p_from date, p_months int)
RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = public AS $fn$
DECLARE
    site_tbl text := 'events_p_' || lower(p_site);
    m date;
    part text;
BEGIN
    IF p_site !~ '^[A-Z][A-Z0-9_]{0,19}$' THEN
        RAISE EXCEPTION 'invalid site id %', p_site;
    END IF;
    IF p_months < 0 OR p_months > 36 THEN
        RAISE EXCEPTION 'months ahead must be 0..36, got %', p_months;
    END IF;
    -- Serialise creators of the same site's partitions (two hub replicas, a site add).
    PERFORM pg_advisory_xact_lock(hashtext('mes_partitions_' || p_site));
    IF to_regclass(site_tbl) IS NULL THEN
        EXECUTE format('CREATE TABLE %I PARTITION OF events FOR VALUES IN (%L) PARTITION BY RANGE (occurred_at)',
                       site_tbl, p_site);
        EXECUTE format('CREATE TABLE %I PARTITION OF %I DEFAULT', site_tbl || '_default', site_tbl);
    END IF;
    FOR i IN 0..p_months LOOP
        m := (date_trunc('month', p_from) + make_interval(months => i))::date;
        part := site_tbl || '_' || to_char(m, 'YYYYMM');
        IF to_regclass(part) IS NULL THEN
            BEGIN
                EXECUTE format('CREATE TABLE %I PARTITION OF %I FOR VALUES FROM (%L) TO (%L)',
                               part, site_tbl,
                               (m::timestamp AT TIME ZONE 'UTC'),
                               ((m + interval '1 month')::timestamp AT TIME ZONE 'UTC'));
            EXCEPTION WHEN check_violation THEN
"#,
            $on_month_with_rows,
            r#"            END;
        END IF;
    END LOOP;
END
$fn$;
"#
        )
    };
}

const MIGRATIONS: &[&str] = &[
    concat!(
        r#"
DO $$ BEGIN
    CREATE ROLE mes_hub LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS;
EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$;
DO $$ BEGIN
    CREATE ROLE mes_reporting LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS;
EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$;

CREATE TABLE sites (
    site_id        varchar(20) PRIMARY KEY CHECK (site_id ~ '^[A-Z][A-Z0-9_]{0,19}$'),
    name           text NOT NULL,
    region         text NOT NULL,
    timezone       text NOT NULL DEFAULT 'UTC',
    created_at     timestamptz NOT NULL DEFAULT now(),
    revoked_at     timestamptz,
    connected      boolean NOT NULL DEFAULT false,
    last_seen_at   timestamptz,
    agent_version  text,
    down_acked     bigint NOT NULL DEFAULT 0
);

CREATE TABLE events (
    site_id        varchar(20) NOT NULL,
    event_id       uuid NOT NULL,
    occurred_at    timestamptz NOT NULL,
    recorded_at    timestamptz NOT NULL,
    received_at    timestamptz NOT NULL DEFAULT now(),
    kind           text NOT NULL,
    equipment      text,
    work_order     text,
    operator       text,
    good           bigint,
    scrap          bigint,
    body           bytea NOT NULL,
    -- A unique key on a partitioned table must contain the partition keys; an event's
    -- occurred_at never changes, so this is uniqueness of event_id per site in practice.
    PRIMARY KEY (site_id, occurred_at, event_id)
) PARTITION BY LIST (site_id);

-- Rollup maintained on ingest from the rows actually inserted (never from duplicates).
CREATE TABLE production_hourly (
    site_id        varchar(20) NOT NULL,
    hour           timestamptz NOT NULL,
    equipment      text NOT NULL,
    work_order     text NOT NULL DEFAULT '',
    good           bigint NOT NULL DEFAULT 0,
    scrap          bigint NOT NULL DEFAULT 0,
    events         bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (site_id, hour, equipment, work_order)
);

CREATE TABLE records (
    site_id        varchar(20) NOT NULL,
    record_kind    text NOT NULL,
    record_id      text NOT NULL,
    doc            bytea NOT NULL,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (site_id, record_kind, record_id)
);

CREATE TABLE work_orders (
    site_id          varchar(20) NOT NULL,
    id               text NOT NULL,
    state            text NOT NULL,
    material         text NOT NULL,
    planned_quantity bigint NOT NULL,
    due              timestamptz,
    priority         int NOT NULL,
    good_count       bigint NOT NULL DEFAULT 0,
    scrap_count      bigint NOT NULL DEFAULT 0,
    actual_start     timestamptz,
    actual_end       timestamptz,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (site_id, id)
);

-- Automerge actor ids are bound to the site that first used them.
CREATE TABLE actors (
    actor_id       bytea PRIMARY KEY,
    site_id        varchar(20) NOT NULL,
    first_seen     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE down_log (
    cursor         bigserial,
    site_id        varchar(20) NOT NULL,
    item           bytea NOT NULL,        -- postcard-encoded sync_protocol::message::DownItem
    created_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (site_id, cursor)
);

CREATE TABLE conflicts (
    id             bigserial PRIMARY KEY,
    site_id        varchar(20) NOT NULL,
    record_kind    text NOT NULL,
    record_id      text NOT NULL,
    description    text NOT NULL,
    detected_at    timestamptz NOT NULL DEFAULT now(),
    resolved_at    timestamptz
);

CREATE TABLE master_data (
    kind           text NOT NULL,
    key            text NOT NULL,
    version        bigint NOT NULL,
    json           jsonb,
    PRIMARY KEY (kind, key)
);

"#,
        ensure_partitions_fn!(
            "CREATE",
            r#"                -- Rows of that month already sit in the DEFAULT partition; they stay there
                -- (still queryable) rather than failing the caller.
                RAISE NOTICE 'month % of % has rows in the default partition; not split', m, p_site;
"#
        ),
        r#"REVOKE ALL ON FUNCTION mes_ensure_partitions(text, date, int) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION mes_ensure_partitions(text, date, int) TO mes_hub;

-- Row-level security: the hub role sees and writes only the site of the transaction.
DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['sites', 'events', 'production_hourly', 'records', 'work_orders',
                             'actors', 'down_log', 'conflicts'] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format($p$CREATE POLICY site_scope ON %I TO mes_hub
                          USING (site_id = current_setting('app.current_site_id', true))
                          WITH CHECK (site_id = current_setting('app.current_site_id', true))$p$, t);
        EXECUTE format('CREATE POLICY hq_read ON %I FOR SELECT TO mes_reporting USING (true)', t);
        EXECUTE format('GRANT SELECT ON %I TO mes_reporting', t);
    END LOOP;
END $$;

GRANT SELECT, UPDATE ON sites TO mes_hub;
GRANT SELECT, INSERT ON events TO mes_hub;
GRANT SELECT, INSERT, UPDATE ON production_hourly, records, work_orders, conflicts TO mes_hub;
GRANT SELECT, INSERT ON actors, down_log TO mes_hub;
GRANT USAGE ON SEQUENCE down_log_cursor_seq, conflicts_id_seq TO mes_hub;
GRANT SELECT ON master_data TO mes_hub, mes_reporting;
"#
    ),
    r#"
-- HQ API tokens: HQ-wide or one site, read or write. Only a SHA-256 of each token is kept.
CREATE TABLE api_tokens (
    hash           bytea PRIMARY KEY,
    name           text NOT NULL,
    scope          text NOT NULL CHECK (scope IN ('hq:read', 'hq:write')),
    site_id        varchar(20) REFERENCES sites (site_id),
    created_at     timestamptz NOT NULL DEFAULT now(),
    revoked_at     timestamptz
);
GRANT SELECT ON api_tokens TO mes_hub;

-- One open conflict per record and contradiction, however often the merge sees it.
CREATE UNIQUE INDEX conflicts_open_once ON conflicts (site_id, record_kind, record_id, description)
    WHERE resolved_at IS NULL;
"#,
    r#"
-- Master data versions: one sequence, so a newer version always has a larger number.
CREATE SEQUENCE master_version_seq;
GRANT USAGE ON SEQUENCE master_version_seq TO mes_hub;
GRANT INSERT, UPDATE ON master_data TO mes_hub;
"#,
    r#"
-- The edge's own report of its backlog (protocol capability STATUS).
ALTER TABLE sites
    ADD COLUMN edge_pending_events bigint,
    ADD COLUMN edge_pending_changes bigint,
    ADD COLUMN edge_oldest_pending_at timestamptz,
    ADD COLUMN edge_status_at timestamptz;
"#,
    r#"
-- Reporting rollups, maintained on ingest (docs/reports.md). Hour buckets are the start of the
-- site-local hour, as an instant.
ALTER TABLE production_hourly ADD COLUMN scrap_reason text NOT NULL DEFAULT '';
ALTER TABLE production_hourly DROP CONSTRAINT production_hourly_pkey;
ALTER TABLE production_hourly ADD PRIMARY KEY (site_id, hour, equipment, work_order, scrap_reason);

-- Each equipment's state timeline: one row per effective state change (an original event, or
-- the replacement of the correction that won for it, keyed by the correction's id).
CREATE TABLE state_changes (
    site_id        varchar(20) NOT NULL,
    equipment      text NOT NULL,
    at             timestamptz NOT NULL,
    fact_id        uuid NOT NULL,
    state          text NOT NULL,
    reason         text,
    PRIMARY KEY (site_id, equipment, at, fact_id)
);

-- Reasons (a scrap reason, a state's reason) as a column: the rollups need them at ingest.
ALTER TABLE events ADD COLUMN reason text;
-- When a site's last new event arrived, kept on ingest (the site list must not scan events).
ALTER TABLE sites ADD COLUMN last_event_at timestamptz;

-- Time per state and reason in each site-local hour, from closed intervals of the timeline;
-- `starts` counts intervals that begin in the hour, `small` marks stops under 120 s.
CREATE TABLE state_hourly (
    site_id        varchar(20) NOT NULL,
    hour           timestamptz NOT NULL,
    equipment      text NOT NULL,
    state          text NOT NULL,
    reason         text NOT NULL DEFAULT '',
    small          boolean NOT NULL,
    micros         bigint NOT NULL DEFAULT 0,
    starts         bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (site_id, hour, equipment, state, reason, small)
);

-- The last point of each timeline: the interval that is still open (until now).
CREATE TABLE state_current (
    site_id        varchar(20) NOT NULL,
    equipment      text NOT NULL,
    at             timestamptz NOT NULL,
    state          text NOT NULL,
    reason         text,
    PRIMARY KEY (site_id, equipment)
);

-- Microseconds two half-open intervals share.
CREATE FUNCTION mes_overlap_us(a1 timestamptz, a2 timestamptz, b1 timestamptz, b2 timestamptz)
RETURNS bigint LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $f$
    SELECT greatest(0, (extract(epoch FROM least(a2, b2) - greatest(a1, b1)) * 1000000)::bigint)
$f$;

-- Lot genealogy edges: material consumed into and produced by work orders.
CREATE TABLE lot_movements (
    site_id        varchar(20) NOT NULL,
    fact_id        uuid NOT NULL,
    direction      text NOT NULL CHECK (direction IN ('consumed', 'produced')),
    lot            text NOT NULL,
    material       text NOT NULL,
    quantity       float8 NOT NULL,
    work_order     text,
    occurred_at    timestamptz NOT NULL,
    PRIMARY KEY (site_id, fact_id)
);
CREATE INDEX lot_movements_lot ON lot_movements (lot, direction);
CREATE INDEX lot_movements_order ON lot_movements (work_order, direction);

-- Which corrections reference which event; the greatest correction id wins.
CREATE TABLE corrections (
    site_id        varchar(20) NOT NULL,
    corrects       uuid NOT NULL,
    correction     uuid NOT NULL,
    PRIMARY KEY (site_id, corrects, correction)
);

-- The first site-local hour each piece of equipment reported in: where its planned
-- production time starts.
CREATE TABLE equipment_seen (
    site_id        varchar(20) NOT NULL,
    equipment      text NOT NULL,
    first_hour     timestamptz NOT NULL,
    PRIMARY KEY (site_id, equipment)
);

DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['state_changes', 'state_hourly', 'lot_movements', 'corrections',
                             'equipment_seen', 'state_current'] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format($p$CREATE POLICY site_scope ON %I TO mes_hub
                          USING (site_id = current_setting('app.current_site_id', true))
                          WITH CHECK (site_id = current_setting('app.current_site_id', true))$p$, t);
        EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON %I TO mes_hub', t);
        EXECUTE format('GRANT SELECT ON %I TO mes_reporting', t);
    END LOOP;
END $$;
GRANT DELETE ON production_hourly TO mes_hub;

-- A site-scoped HQ token's reports run as mes_reporting_site (SET LOCAL ROLE inside the
-- transaction, with app.report_site set): row-level security then hides the other sites in
-- SQL, not only in Rust. HQ-wide reads keep a policy of plain `true`, which the planner drops,
-- so their row estimates (and plans) stay those of the tables.
DO $$ BEGIN
    CREATE ROLE mes_reporting_site NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS;
EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$;
GRANT mes_reporting_site TO mes_reporting;
DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['sites', 'events', 'production_hourly', 'records', 'work_orders',
                             'actors', 'down_log', 'conflicts', 'state_changes', 'state_hourly',
                             'lot_movements', 'corrections', 'equipment_seen',
                             'state_current'] LOOP
        EXECUTE format('DROP POLICY IF EXISTS hq_read ON %I', t);
        EXECUTE format('CREATE POLICY hq_read ON %I FOR SELECT TO mes_reporting USING (true)', t);
        EXECUTE format($p$CREATE POLICY site_read ON %I FOR SELECT TO mes_reporting_site
                          USING (site_id = current_setting('app.report_site', true))$p$, t);
        EXECUTE format('GRANT SELECT ON %I TO mes_reporting_site', t);
    END LOOP;
END $$;
GRANT SELECT ON master_data TO mes_reporting_site;

-- Master data as columns for the report queries.
CREATE VIEW md_equipment AS
    SELECT key AS equipment, json->'equipment'->>'parent' AS parent,
           json->'equipment'->>'class' AS class, json->'equipment'->>'name' AS name
    FROM master_data WHERE kind = 'equipment';
CREATE VIEW md_reasons AS
    SELECT key AS code, json->'reason_code'->>'name' AS name,
           json->'reason_code'->>'loss_category' AS loss_category,
           (json->'reason_code'->>'counts_against_availability')::boolean AS counts_against_availability
    FROM master_data WHERE kind = 'reason-codes';
CREATE VIEW md_routing AS
    SELECT json->'routing_step'->>'material' AS material,
           (json->'routing_step'->>'version')::int AS version,
           (json->'routing_step'->>'seq')::int AS seq,
           json->'routing_step'->>'work_center_class' AS work_center_class,
           (json->'routing_step'->>'ideal_cycle_time_ms')::bigint AS ideal_ms
    FROM master_data WHERE kind = 'routings';
-- The ideal cycle time of a material on equipment of a class: the step of that class, else the
-- material's first step.
CREATE VIEW md_ideal AS
    SELECT m.material, c.class,
           coalesce((SELECT r.ideal_ms FROM md_routing r
                     WHERE r.material = m.material AND r.work_center_class = c.class
                     ORDER BY r.version, r.seq LIMIT 1),
                    (SELECT r.ideal_ms FROM md_routing r WHERE r.material = m.material
                     ORDER BY r.version, r.seq LIMIT 1)) AS ideal_ms
    FROM (SELECT DISTINCT material FROM md_routing) m
    CROSS JOIN (SELECT DISTINCT class FROM md_equipment UNION SELECT '') c;
CREATE VIEW md_shifts AS
    SELECT split_part(md.key, '/', 1) AS site_id, s->>'name' AS shift_name,
           (s->>'start')::timestamptz AS start_at, (s->>'end')::timestamptz AS end_at,
           s->'planned_breaks' AS breaks
    FROM master_data md, jsonb_array_elements(md.json->'shift_calendar'->'shifts') s
    WHERE md.kind = 'shift-calendars';
GRANT SELECT ON md_equipment, md_reasons, md_routing, md_ideal, md_shifts
    TO mes_reporting, mes_reporting_site, mes_hub;
"#,
    r#"
-- Enrollment: one-time, expiring tokens (only their SHA-256 is kept), each for one site.
CREATE TABLE enroll_tokens (
    hash           bytea PRIMARY KEY,
    site_id        varchar(20) NOT NULL REFERENCES sites (site_id),
    created_at     timestamptz NOT NULL DEFAULT now(),
    expires_at     timestamptz NOT NULL,
    used_at        timestamptz,
    used_by        text
);
GRANT SELECT, UPDATE ON enroll_tokens TO mes_hub;
"#,
    // The quality-alert gauge counts failed samples of the last shift per site; a partial
    // index holds only those rows, so the count never scans a shift of events.
    r#"
CREATE INDEX events_out_of_spec ON events (site_id, occurred_at) WHERE reason = 'out_of_spec';
"#,
    // Rows older than a site's first month partition (a backlog from before enrollment, an
    // edge offline across a month boundary, a wrong clock) land in the site's DEFAULT
    // partition. A month left there is never archived by retention, so the hub moves such a
    // month into its own partition: `mes_split_month` under an ACCESS EXCLUSIVE lock on the
    // site's table (concurrent ingests wait and are then routed to the new partition),
    // `mes_split_default` for the months found there, and `mes_ensure_partitions` calls
    // it instead of leaving a month "not split".
    concat!(
        r#"
CREATE FUNCTION mes_split_month(p_site text, p_month date)
RETURNS bigint LANGUAGE plpgsql SECURITY DEFINER SET search_path = public AS $fn$
DECLARE
    site_tbl text := 'events_p_' || lower(p_site);
    def text := 'events_p_' || lower(p_site) || '_default';
    m date := date_trunc('month', p_month)::date;
    part text;
    lo timestamptz;
    hi timestamptz;
    moved bigint;
BEGIN
    IF p_site !~ '^[A-Z][A-Z0-9_]{0,19}$' THEN
        RAISE EXCEPTION 'invalid site id %', p_site;
    END IF;
    part := site_tbl || '_' || to_char(m, 'YYYYMM');
    lo := m::timestamp AT TIME ZONE 'UTC';
    hi := (m + interval '1 month')::timestamp AT TIME ZONE 'UTC';
    -- The same order of locks as mes_ensure_partitions (advisory, then the table).
    PERFORM pg_advisory_xact_lock(hashtext('mes_partitions_' || p_site));
    -- Writers of this site wait here until the move commits; their rows are then routed to
    -- the new partition (PostgreSQL resolves a sub-partition's bounds when it opens it).
    EXECUTE format('LOCK TABLE %I IN ACCESS EXCLUSIVE MODE', site_tbl);
    IF to_regclass(part) IS NOT NULL THEN
        RETURN 0;
    END IF;
    -- Detach, create, move, attach: the month's rows leave DEFAULT in this transaction.
    EXECUTE format('ALTER TABLE %I DETACH PARTITION %I', site_tbl, def);
    EXECUTE format('CREATE TABLE %I PARTITION OF %I FOR VALUES FROM (%L) TO (%L)',
                   part, site_tbl, lo, hi);
    EXECUTE format('WITH moved AS (DELETE FROM %I WHERE site_id = %L AND occurred_at >= %L AND occurred_at < %L RETURNING *)
                    INSERT INTO %I SELECT * FROM moved', def, p_site, lo, hi, part);
    GET DIAGNOSTICS moved = ROW_COUNT;
    EXECUTE format('ALTER TABLE %I ATTACH PARTITION %I DEFAULT', site_tbl, def);
    RETURN moved;
END
$fn$;
REVOKE ALL ON FUNCTION mes_split_month(text, date) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION mes_split_month(text, date) TO mes_hub;

-- Splits up to p_months_max months out of the site's DEFAULT partition, oldest first; walks
-- the primary key (site_id, occurred_at, …) month by month instead of scanning the partition.
CREATE FUNCTION mes_split_default(p_site text, p_months_max int)
RETURNS TABLE (month date, moved bigint) LANGUAGE plpgsql SECURITY DEFINER SET search_path = public AS $fn$
DECLARE
    def text := 'events_p_' || lower(p_site) || '_default';
    t timestamptz;
    after timestamptz := '-infinity';
    m date;
    n int := 0;
BEGIN
    IF p_site !~ '^[A-Z][A-Z0-9_]{0,19}$' THEN
        RAISE EXCEPTION 'invalid site id %', p_site;
    END IF;
    IF to_regclass(def) IS NULL THEN
        RETURN;
    END IF;
    WHILE n < p_months_max LOOP
        EXECUTE format('SELECT min(occurred_at) FROM %I WHERE site_id = $1 AND occurred_at >= $2', def)
            INTO t USING p_site, after;
        EXIT WHEN t IS NULL;
        m := date_trunc('month', t AT TIME ZONE 'UTC')::date;
        month := m;
        moved := mes_split_month(p_site, m);
        RETURN NEXT;
        after := (m + interval '1 month')::timestamp AT TIME ZONE 'UTC';
        n := n + 1;
    END LOOP;
END
$fn$;
REVOKE ALL ON FUNCTION mes_split_default(text, int) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION mes_split_default(text, int) TO mes_hub;

"#,
        ensure_partitions_fn!(
            "CREATE OR REPLACE",
            r#"                -- Rows of that month already sit in the DEFAULT partition: move them out.
                PERFORM mes_split_month(p_site, m);
"#
        ),
    ),
    // Revocation per certificate (docs/operations.md, "Certificates"): every site certificate
    // the hub issues is recorded; a session is admitted only if its certificate's row is not
    // revoked. `certs_revoked_before` is when the site was last revoked: a certificate without
    // a row (issued before this registry existed) that is older than that is refused, so a
    // stolen pre-upgrade certificate stays out after the site is re-admitted.
    r#"
CREATE TABLE certificates (
    serial         text PRIMARY KEY CHECK (serial ~ '^[0-9a-f]{1,42}$'),
    fingerprint    bytea NOT NULL UNIQUE CHECK (length(fingerprint) = 32),
    site_id        varchar(20) NOT NULL REFERENCES sites (site_id),
    source         text NOT NULL CHECK (source IN ('bundle', 'enrollment', 'renewal', 'legacy')),
    renewed_from   text REFERENCES certificates (serial),
    not_before     timestamptz NOT NULL,
    not_after      timestamptz NOT NULL,
    issued_at      timestamptz NOT NULL DEFAULT now(),
    first_used_at  timestamptz,
    revoked_at     timestamptz,
    revoke_reason  text
);
CREATE INDEX certificates_site ON certificates (site_id, issued_at);
CREATE INDEX certificates_renewed_from ON certificates (renewed_from) WHERE renewed_from IS NOT NULL;
ALTER TABLE certificates ENABLE ROW LEVEL SECURITY;
CREATE POLICY site_scope ON certificates TO mes_hub
    USING (site_id = current_setting('app.current_site_id', true))
    WITH CHECK (site_id = current_setting('app.current_site_id', true));
CREATE POLICY hq_read ON certificates FOR SELECT TO mes_reporting USING (true);
GRANT SELECT, INSERT, UPDATE ON certificates TO mes_hub;
GRANT SELECT ON certificates TO mes_reporting;

ALTER TABLE sites
    ADD COLUMN certs_revoked_before timestamptz,
    -- The serial of the certificate the site's last session presented.
    ADD COLUMN cert_serial text;
-- Outstanding tokens die with `site revoke` and are not revived by `site add`.
ALTER TABLE enroll_tokens ADD COLUMN revoked_at timestamptz;
"#,
    // HQ tokens are listed and revoked by name (`central-hub api-token list|revoke`), and
    // looked up on the read side: the reporting role (maybe on a replica) checks one hash
    // through a SECURITY DEFINER function without being able to read the table, so an unknown
    // token costs the write pool nothing. The hub role records a token's last use (at most
    // once a minute per token and instance), nothing else.
    r#"
ALTER TABLE api_tokens ADD COLUMN last_used_at timestamptz;
CREATE INDEX api_tokens_name ON api_tokens (name);
GRANT UPDATE (last_used_at) ON api_tokens TO mes_hub;
CREATE FUNCTION mes_token_scope(p_hash bytea)
RETURNS TABLE (scope text, site_id text)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public AS $fn$
    SELECT t.scope, t.site_id::text FROM api_tokens t
    WHERE t.hash = p_hash AND t.revoked_at IS NULL
$fn$;
REVOKE ALL ON FUNCTION mes_token_scope(bytea) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION mes_token_scope(bytea) TO mes_hub, mes_reporting;
"#,
    // The database's generation (`crate::db::generation`, issue 22): a point-in-time restore
    // or a promotion starts a new WAL timeline, a logical reload into another cluster brings
    // a new system identifier, and either means the data went back in time. The hub notices
    // it from PostgreSQL itself, with no flag an operator must remember to set.
    r#"
CREATE TABLE hub_generations (
    number         int PRIMARY KEY CHECK (number > 0),
    system_id      bigint NOT NULL,
    timeline       int NOT NULL CHECK (timeline > 0),
    detected_at    timestamptz NOT NULL DEFAULT now(),
    -- The newest instant the data of this generation knew when it was detected (NULL for the
    -- first generation: nothing was restored).
    restore_point  timestamptz
);
GRANT SELECT ON hub_generations TO mes_hub, mes_reporting;

-- Returns the current generation, recording a new one when the (system identifier, timeline)
-- pair differs from the newest row's. Runs as the owner: the hub role can neither read the
-- control file nor move sequences nor read across sites. `row_security = off` makes a policy
-- that would hide rows from the owner (FORCE ROW LEVEL SECURITY, which this schema does not
-- set) an error instead of a restore point computed from part of the data.
CREATE FUNCTION mes_observe_generation()
RETURNS TABLE (number int, system_id bigint, timeline int, detected_at timestamptz,
               restore_point timestamptz, is_new boolean)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = public SET row_security = off AS $fn$
#variable_conflict use_column
DECLARE
    v_system bigint;
    v_timeline int;
    v_prev hub_generations%ROWTYPE;
    v_found boolean;
    v_restore timestamptz;
    v_new hub_generations%ROWTYPE;
BEGIN
    IF pg_is_in_recovery() THEN
        RAISE EXCEPTION 'the hub database is a standby in recovery; the hub needs the primary'
            USING ERRCODE = 'read_only_sql_transaction';
    END IF;
    -- The insert timeline, right at once after a promotion: the first 8 hex digits of the
    -- current WAL file's name. pg_control_checkpoint()'s timeline lags until the next
    -- checkpoint (tests/tests/hub/generation.rs checks both right after `pg_ctl promote`).
    SELECT c.system_identifier,
           ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int
      INTO v_system, v_timeline
      FROM pg_control_system() c;
    -- The common path: the same pair as the newest row, nothing written.
    SELECT * INTO v_prev FROM hub_generations g ORDER BY g.number DESC LIMIT 1;
    v_found := FOUND;
    IF v_found AND v_prev.system_id = v_system AND v_prev.timeline = v_timeline THEN
        RETURN QUERY SELECT v_prev.number, v_prev.system_id, v_prev.timeline,
                            v_prev.detected_at, v_prev.restore_point, false;
        RETURN;
    END IF;
    -- Two hub instances observing at once make one row: the second waits here, then sees the
    -- first's row (each statement of a READ COMMITTED function takes a new snapshot).
    PERFORM pg_advisory_xact_lock(727275);
    SELECT * INTO v_prev FROM hub_generations g ORDER BY g.number DESC LIMIT 1;
    v_found := FOUND;
    IF v_found AND v_prev.system_id = v_system AND v_prev.timeline = v_timeline THEN
        RETURN QUERY SELECT v_prev.number, v_prev.system_id, v_prev.timeline,
                            v_prev.detected_at, v_prev.restore_point, false;
        RETURN;
    END IF;
    IF v_found THEN
        -- A real change. What the restored data knows last: events received, down-log items
        -- written, shared records merged. Full scans, once per generation.
        SELECT greatest((SELECT max(e.received_at) FROM events e),
                        (SELECT max(d.created_at) FROM down_log d),
                        (SELECT max(r.updated_at) FROM records r))
          INTO v_restore;
        -- Edges may hold down cursors and master versions the lost timeline issued; new ones
        -- must be above all of them, or an edge would skip them as already seen. 2^32 is more
        -- than any timeline issues between two observations.
        PERFORM setval('down_log_cursor_seq', nextval('down_log_cursor_seq') + 4294967296);
        PERFORM setval('master_version_seq', nextval('master_version_seq') + 4294967296);
    END IF;
    INSERT INTO hub_generations AS g (number, system_id, timeline, restore_point)
    VALUES (CASE WHEN v_found THEN v_prev.number + 1 ELSE 1 END, v_system, v_timeline, v_restore)
    RETURNING g.* INTO v_new;
    RETURN QUERY SELECT v_new.number, v_new.system_id, v_new.timeline, v_new.detected_at,
                        v_new.restore_point, v_found;
END
$fn$;
REVOKE ALL ON FUNCTION mes_observe_generation() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION mes_observe_generation() TO mes_hub;
"#,
    // Each site's last heal after a generation change (what its edge found the hub lacked and
    // sent again, and what it could not: events its retention had already pruned), for the
    // sites API, a metric and an alert.
    r#"
ALTER TABLE sites
    ADD COLUMN heal_generation int,
    ADD COLUMN heal_resent bigint,
    ADD COLUMN heal_unrecoverable_events bigint,
    ADD COLUMN heal_unrecoverable jsonb,
    ADD COLUMN heal_search_bytes bigint,
    ADD COLUMN healed_at timestamptz;
"#,
];

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error(
        "the database has schema version {found}, newer than this central-hub supports ({supported}); upgrade central-hub"
    )]
    TooNew { found: i64, supported: i64 },
}

/// The schema version this binary writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Applies missing migrations; safe to run from several processes at once.
pub async fn migrate(pool: &PgPool) -> Result<i64, MigrateError> {
    let mut conn = pool.acquire().await?;
    conn.execute("SELECT pg_advisory_lock(727274)").await?;
    let result = migrate_locked(&mut conn).await;
    // The lock ends with the session anyway; a failed unlock only matters if the connection
    // goes back to the pool, so it is logged, and the migration's own result is returned.
    if let Err(e) = conn.execute("SELECT pg_advisory_unlock(727274)").await {
        tracing::warn!(error = %e, "could not release the migration lock");
    }
    result
}

async fn migrate_locked(conn: &mut sqlx::PgConnection) -> Result<i64, MigrateError> {
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version bigint PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())",
    )
    .await?;
    let current: i64 =
        crate::db::query_scalar("SELECT coalesce(max(version), 0) FROM schema_migrations")
            .fetch_one(&mut *conn)
            .await?;
    if current > SCHEMA_VERSION {
        return Err(MigrateError::TooNew {
            found: current,
            supported: SCHEMA_VERSION,
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        tx.execute(*sql).await?;
        crate::db::query("INSERT INTO schema_migrations (version) VALUES ($1)")
            .bind(i as i64 + 1)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
    }
    Ok(SCHEMA_VERSION)
}
