-- Where the hub's ingest statement spends its time, measured inside PostgreSQL (issue 10).
--
-- Run against a migrated hub database with sites S1..S4 registered (UTC):
--   central-hub migrate --database-url postgres://postgres@127.0.0.1/prof_ingest
--   central-hub site add S1 --name P --region EU --database-url … (S2, S3, S4 likewise)
--   psql -d prof_ingest -f docs/profiles/ingest-statement-breakdown.sql
-- Each variant inserts 30 batches of 8,192 production counts (the hub's group size) as the
-- hub role under row-level security; the procedure times the statement alone (no client,
-- no parameter transfer) and the commit. The `full` variant is the single-statement ingest
-- the hub used before this change (insert … RETURNING every column, rollups grouped in SQL).
--
-- Measured 2026-11-29 (2 cores, PostgreSQL 15, other work on the machine):
--   full       129.0 ms/batch =  63,502 events/s   (commit 3.7 ms)
--   plain_nc    67.1 ms/batch = 122,040 events/s   (INSERT … ON CONFLICT DO NOTHING)
--   plain       46.9 ms/batch = 174,831 events/s   (plain INSERT … UNNEST)
--   plain_ret   84.6 ms/batch =  96,853 events/s   (ON CONFLICT … RETURNING the rollup columns)
-- So the rollup CTEs cost about a third of the statement and RETURNING every row another
-- eighth: the hub now returns only the new ids when some were duplicates and writes rollups
-- from sums formed in Rust (central-hub/src/db/store.rs, INGEST_SQL and ROLLUP_SQL).

CREATE OR REPLACE PROCEDURE bench_ingest(site text, q text, batches int, tag text) LANGUAGE plpgsql AS $proc$
DECLARE
  a2 uuid[]; a3 timestamptz[]; a5 text[]; a6 text[]; a7 text[]; a8 text[]; a9 int8[]; a10 int8[]; a11 bytea[]; a12 text[];
  t0 timestamptz; t1 timestamptz; stmt float8 := 0; com float8 := 0; b int;
BEGIN
  FOR b IN 0..batches-1 LOOP
    SELECT array_agg(gen_random_uuid()), array_agg(timestamptz '2026-11-01' + (b*8192+i) * interval '1.2 s' ORDER BY i),
           array_agg('production_count'::text), array_agg('PRESS-' || lpad((i%40+1)::text,2,'0') ORDER BY i),
           array_agg(site || '-WO-' || lpad((i%100)::text,6,'0') ORDER BY i), array_agg('B-0042'::text),
           array_agg((1 + i%5)::int8 ORDER BY i), array_agg(CASE WHEN i%23=0 THEN 1 ELSE 0 END::int8 ORDER BY i),
           array_agg(decode(repeat('ab', 70), 'hex')), array_agg(NULL::text)
      INTO a2, a3, a5, a6, a7, a8, a9, a10, a11, a12 FROM generate_series(0,8191) i;
    PERFORM set_config('app.current_site_id', site, true);
    t0 := clock_timestamp();
    EXECUTE q USING site, a2, a3, a3, a5, a6, a7, a8, a9, a10, a11, a12, 'UTC'::text;
    t1 := clock_timestamp();
    stmt := stmt + extract(epoch from t1 - t0);
    COMMIT;
    com := com + extract(epoch from clock_timestamp() - t1);
  END LOOP;
  RAISE NOTICE '% : % events, statement % ms/batch = % events/s; commit % ms/batch', tag, batches*8192, round((stmt*1000/batches)::numeric,1), round((batches*8192/stmt)::numeric), round((com*1000/batches)::numeric,1);
END $proc$;
SET ROLE mes_hub;
CALL bench_ingest('S1', $q$
WITH ins AS (
    INSERT INTO events (site_id, event_id, occurred_at, recorded_at, kind, equipment, work_order,
                        operator, good, scrap, body, reason)
    SELECT $1, u.* FROM UNNEST($2::uuid[], $3::timestamptz[], $4::timestamptz[], $5::text[],
                               $6::text[], $7::text[], $8::text[], $9::int8[], $10::int8[],
                               $11::bytea[], $12::text[]) AS u
    ON CONFLICT DO NOTHING
    RETURNING event_id, occurred_at, kind, equipment, work_order, good, scrap, reason
), fl AS (
    SELECT ins.*, date_trunc('hour', ins.occurred_at, $13) AS hour,
           (SELECT EXISTS (SELECT 1 FROM corrections WHERE site_id = $1))
           AND EXISTS (SELECT 1 FROM corrections c
                       WHERE c.site_id = $1 AND c.corrects = ins.event_id) AS corrected
    FROM ins
), roll AS (
    INSERT INTO production_hourly AS p (site_id, hour, equipment, work_order, scrap_reason,
                                        good, scrap, events)
    SELECT $1, hour, equipment, coalesce(work_order, ''), coalesce(reason, ''),
           sum(good), sum(scrap), count(*)
    FROM fl WHERE kind = 'production_count' AND NOT corrected
    GROUP BY 2, 3, 4, 5
    ON CONFLICT (site_id, hour, equipment, work_order, scrap_reason) DO UPDATE
        SET good = p.good + excluded.good, scrap = p.scrap + excluded.scrap,
            events = p.events + excluded.events
), seen AS (
    INSERT INTO equipment_seen AS s (site_id, equipment, first_hour)
    SELECT $1, equipment, min(hour) FROM fl
    WHERE kind IN ('production_count', 'equipment_state') AND equipment IS NOT NULL
    GROUP BY equipment
    ON CONFLICT (site_id, equipment) DO UPDATE SET first_hour = excluded.first_hour
        WHERE excluded.first_hour < s.first_hour
), touched AS (
    UPDATE sites SET last_event_at = now()
    WHERE site_id = $1 AND EXISTS (SELECT 1 FROM ins)
)
SELECT count(*) AS inserted,
       coalesce(array_agg(event_id) FILTER (WHERE kind <> 'production_count'), '{}') AS others,
       coalesce(array_agg(event_id) FILTER (WHERE corrected), '{}') AS corrected
FROM fl
$q$, 30, 'full');
RESET ROLE;
SET ROLE mes_hub;
CALL bench_ingest('S2', $q$INSERT INTO events (site_id, event_id, occurred_at, recorded_at, kind, equipment, work_order,
                        operator, good, scrap, body, reason)
    SELECT $1, u.* FROM UNNEST($2::uuid[], $3::timestamptz[], $4::timestamptz[], $5::text[],
                               $6::text[], $7::text[], $8::text[], $9::int8[], $10::int8[],
                               $11::bytea[], $12::text[]) AS u ON CONFLICT DO NOTHING$q$, 30, 'plain_nc');
RESET ROLE;
SET ROLE mes_hub;
CALL bench_ingest('S3', $q$INSERT INTO events (site_id, event_id, occurred_at, recorded_at, kind, equipment, work_order,
                        operator, good, scrap, body, reason)
    SELECT $1, u.* FROM UNNEST($2::uuid[], $3::timestamptz[], $4::timestamptz[], $5::text[],
                               $6::text[], $7::text[], $8::text[], $9::int8[], $10::int8[],
                               $11::bytea[], $12::text[]) AS u$q$, 30, 'plain');
RESET ROLE;
SET ROLE mes_hub;
CALL bench_ingest('S4', $q$INSERT INTO events (site_id, event_id, occurred_at, recorded_at, kind, equipment, work_order,
                        operator, good, scrap, body, reason)
    SELECT $1, u.* FROM UNNEST($2::uuid[], $3::timestamptz[], $4::timestamptz[], $5::text[],
                               $6::text[], $7::text[], $8::text[], $9::int8[], $10::int8[],
                               $11::bytea[], $12::text[]) AS u ON CONFLICT DO NOTHING RETURNING event_id, occurred_at, kind, equipment, work_order, good, scrap, reason$q$, 30, 'plain_ret');
RESET ROLE;