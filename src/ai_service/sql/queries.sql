-- Every runtime query of the service. `store.py` is the only module that runs them.
-- Each state change is one guarded statement: it changes the row only when the
-- job is in an allowed status (and, for running jobs, holds the caller's lease).
-- Placeholders are psycopg named parameters: %(name)s.

-- name: job_create_many
-- Insert jobs given as one JSON array of objects (one parameter, parsed by PostgreSQL:
-- far cheaper than ten typed arrays); idempotency conflicts insert nothing.
-- Returns what the database decided for each inserted row; the rest of a new job is
-- what was sent and the columns' defaults (reading 1000 rows back would cost more
-- than inserting them).
INSERT INTO jobs (id, owner_service, owner_ref, task_type, model_profile, priority,
                  input, max_attempts, run_after, idempotency_key, request_hash)
SELECT id, owner_service, owner_ref, task_type, model_profile, priority,
       input, max_attempts, coalesce(run_after, now()), idempotency_key, request_hash
  FROM jsonb_to_recordset(%(jobs)s::jsonb)
       AS t(id uuid, owner_service text, owner_ref text, task_type text, model_profile text,
            priority int, input jsonb, max_attempts int, run_after timestamptz,
            idempotency_key text, request_hash text)
    ON CONFLICT (owner_service, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
RETURNING id, run_after, created_at, updated_at;

-- name: job_get_by_idempotency_keys
-- Existing jobs for (owner_service, idempotency_key) pairs.
SELECT j.*
  FROM jobs j
  JOIN unnest(%(owner_services)s::text[], %(idempotency_keys)s::text[]) AS k(owner_service, idempotency_key)
    ON j.owner_service = k.owner_service AND j.idempotency_key = k.idempotency_key;

-- name: job_get
-- One job by id.
SELECT * FROM jobs WHERE id = %(id)s;

-- name: job_list
-- Jobs matching optional filters, newest first (ids are UUIDv7), after a keyset cursor.
-- The big columns come only when asked for: a CASE that is false never reads (detoasts)
-- the value.
SELECT id, owner_service, owner_ref, task_type, model_profile, status, priority,
       CASE WHEN %(with_input)s THEN input END AS input,
       CASE WHEN %(with_result)s THEN result END AS result,
       error_category, error_message,
       CASE WHEN %(with_error_details)s THEN error_details END AS error_details,
       CASE WHEN %(with_errors)s THEN errors END AS errors,
       error_count, attempt, max_attempts, run_after, worker_id, lease_token,
       lease_expires_at, lease_seconds, timeout_seconds, idempotency_key, created_at,
       updated_at, started_at, finished_at
  FROM jobs
 WHERE (%(statuses)s::text[] IS NULL OR status = ANY(%(statuses)s::text[]))
   AND (%(owner_service)s::text IS NULL OR owner_service = %(owner_service)s::text)
   AND (%(owner_ref)s::text IS NULL OR owner_ref = %(owner_ref)s::text)
   AND (%(task_type)s::text IS NULL OR task_type = %(task_type)s::text)
   AND (%(model_profile)s::text IS NULL OR model_profile = %(model_profile)s::text)
   AND (%(worker_id)s::text IS NULL OR worker_id = %(worker_id)s::text)
   AND (%(error_category)s::text IS NULL OR error_category = %(error_category)s::text)
   AND (%(created_after)s::timestamptz IS NULL OR created_at >= %(created_after)s::timestamptz)
   AND (%(created_before)s::timestamptz IS NULL OR created_at < %(created_before)s::timestamptz)
   AND (%(cursor_id)s::uuid IS NULL OR id < %(cursor_id)s::uuid)
 ORDER BY id DESC
 LIMIT %(limit)s;

-- name: job_claim
-- Atomically take up to `limit` runnable pending jobs, optionally of the given task types
-- and model profiles, in priority order, with fresh leases. Index-driven whatever the
-- table holds: the (task_type, model_profile) pairs present are found by skip scans of
-- jobs_claim_idx (or taken from the filters), then each pair's priority levels, and each
-- level's runnable range (run_after <= now()) is read in order, so neither other types'
-- or profiles' backlogs nor jobs scheduled for later are ever visited. The candidates
-- (`scan`, a bounded excess over `limit`) are read without locks; only the rows returned
-- are locked (SKIP LOCKED: concurrent claimers never wait for each other).
WITH RECURSIVE
all_types(t) AS (
    SELECT min(task_type) FROM jobs
     WHERE status = 'pending' AND %(task_types)s::text[] IS NULL
  UNION ALL
    SELECT (SELECT min(task_type) FROM jobs WHERE status = 'pending' AND task_type > a.t)
      FROM all_types a
     WHERE a.t IS NOT NULL
),
types(t) AS (
    SELECT unnest(%(task_types)s::text[])
  UNION ALL
    SELECT t FROM all_types WHERE t IS NOT NULL
),
all_pairs(t, p) AS (
    SELECT types.t,
           (SELECT min(model_profile) FROM jobs WHERE status = 'pending' AND task_type = types.t)
      FROM types
     WHERE %(model_profiles)s::text[] IS NULL
  UNION ALL
    SELECT a.t,
           (SELECT min(model_profile) FROM jobs
             WHERE status = 'pending' AND task_type = a.t AND model_profile > a.p)
      FROM all_pairs a
     WHERE a.p IS NOT NULL
),
pairs(t, p) AS (
    SELECT types.t, m.p FROM types CROSS JOIN unnest(%(model_profiles)s::text[]) AS m(p)
  UNION ALL
    SELECT t, p FROM all_pairs WHERE p IS NOT NULL
),
levels(t, p, pr) AS (
    SELECT pairs.t, pairs.p,
           (SELECT max(priority) FROM jobs
             WHERE status = 'pending' AND task_type = pairs.t AND model_profile = pairs.p)
      FROM pairs
  UNION ALL
    SELECT l.t, l.p,
           (SELECT max(priority) FROM jobs
             WHERE status = 'pending' AND task_type = l.t AND model_profile = l.p
               AND priority < l.pr)
      FROM levels l
     WHERE l.pr IS NOT NULL
),
candidates AS (
    SELECT c.id, c.priority, c.run_after
      FROM levels l
     CROSS JOIN LATERAL (
        SELECT id, priority, run_after
          FROM jobs
         WHERE status = 'pending' AND task_type = l.t AND model_profile = l.p
           AND priority = l.pr AND run_after <= now()
         ORDER BY run_after, id
         LIMIT %(scan)s
     ) AS c
     WHERE l.pr IS NOT NULL
     ORDER BY c.priority DESC, c.run_after, c.id
     LIMIT %(scan)s
),
picked AS (
    SELECT j.id
      FROM jobs j
     WHERE j.id = ANY(ARRAY(SELECT id FROM candidates))
       AND j.status = 'pending'
       AND j.run_after <= now()
     ORDER BY j.priority DESC, j.run_after, j.id
     LIMIT %(limit)s
       FOR UPDATE SKIP LOCKED
),
claimed AS (
    UPDATE jobs j
       SET status = 'running',
           attempt = j.attempt + 1,
           worker_id = %(worker_id)s,
           lease_token = gen_random_uuid(),
           lease_seconds = %(lease_seconds)s,
           lease_expires_at = now() + make_interval(secs => %(lease_seconds)s),
           started_at = now(),
           updated_at = now()
      FROM picked
     WHERE j.id = picked.id
    RETURNING j.*
)
-- Always one row at least: `seen` tells the caller how many candidates there were, so
-- that a claim that lost its candidates to concurrent claimers can look further.
SELECT claimed.*, c.seen
  FROM (SELECT count(*) AS seen FROM candidates) AS c
  LEFT JOIN claimed ON true;

-- name: job_complete
-- Store a result: a running job whose lease matches, or a pending job (mirror path, no token).
-- The token stays on the row, so a repeat of this completion is recognised.
UPDATE jobs
   SET status = 'completed',
       result = %(result)s,
       error_category = NULL,
       error_message = NULL,
       error_details = NULL,
       lease_expires_at = NULL,
       finished_at = now(),
       updated_at = now()
 WHERE id = %(id)s
   AND ((status = 'running' AND lease_token = %(lease_token)s::uuid)
        OR (status = 'pending' AND %(lease_token)s::uuid IS NULL))
RETURNING *;

-- name: job_complete_many
-- Complete many running jobs, each fenced by its own lease token. Returns the jobs done,
-- and those this batch had already completed under the same token (a repeat after a lost
-- reply). Driven by the batch's ids (primary-key lookups), so its cost follows the batch
-- size, whatever the statistics say; rows are locked in id order, like every multi-row
-- statement, so that concurrent batches and bulk actions cannot deadlock.
WITH batch AS (
    SELECT *
      FROM jsonb_to_recordset(%(completions)s::jsonb) AS u(id uuid, lease_token uuid, result jsonb)
), locked AS (
    SELECT j.id, b.result
      FROM jobs j
      JOIN batch b ON b.id = j.id AND b.lease_token = j.lease_token
     WHERE j.id = ANY(%(ids)s::uuid[])
       AND j.status = 'running'
     ORDER BY j.id
       FOR UPDATE OF j
), done AS (
    UPDATE jobs j
       SET status = 'completed',
           result = locked.result,
           error_category = NULL,
           error_message = NULL,
           error_details = NULL,
           lease_expires_at = NULL,
           finished_at = now(),
           updated_at = now()
      FROM locked
     WHERE j.id = ANY(%(ids)s::uuid[])
       AND j.id = locked.id
    RETURNING j.id, j.task_type, j.model_profile, j.started_at, j.finished_at
)
SELECT * FROM done
UNION ALL
SELECT j.id, j.task_type, j.model_profile, j.started_at, j.finished_at
  FROM jobs j
  JOIN batch b ON b.id = j.id AND b.lease_token = j.lease_token
 WHERE j.id = ANY(%(ids)s::uuid[])
   AND j.status = 'completed';

-- name: job_fail
-- Record a failed attempt. Running jobs with attempts left and a retryable error go back
-- to pending after an exponential backoff with jitter; otherwise the job is failed.
UPDATE jobs
   SET status = CASE WHEN status = 'running' AND %(retryable)s AND attempt < max_attempts
                     THEN 'pending' ELSE 'failed' END,
       run_after = CASE WHEN status = 'running' AND %(retryable)s AND attempt < max_attempts
                        THEN now() + make_interval(secs => least(%(backoff_max)s::float8,
                                 %(backoff_base)s::float8 * power(2, greatest(attempt - 1, 0)))
                                 * (0.5 + random() * 0.5))
                        ELSE run_after END,
       finished_at = CASE WHEN status = 'running' AND %(retryable)s AND attempt < max_attempts
                          THEN NULL ELSE now() END,
       error_category = %(category)s,
       error_message = %(message)s,
       error_details = %(details)s,
       -- the newest `errors_kept` entries; error_count counts every failure
       errors = (SELECT coalesce(jsonb_agg(h.e ORDER BY h.n), '[]'::jsonb)
                   FROM jsonb_array_elements(errors || jsonb_build_array(jsonb_build_object(
                            'attempt', attempt, 'category', %(category)s::text,
                            'message', %(message)s::text, 'worker', worker_id, 'at', now())))
                        WITH ORDINALITY AS h(e, n)
                  WHERE h.n > jsonb_array_length(errors) + 1 - %(errors_kept)s),
       error_count = error_count + 1,
       lease_expires_at = NULL,
       updated_at = now()
 WHERE id = %(id)s
   AND ((status = 'running' AND lease_token = %(lease_token)s::uuid)
        OR (status = 'pending' AND %(lease_token)s::uuid IS NULL))
RETURNING *;

-- name: job_heartbeat
-- Extend the lease of a running job held by the caller's token: by `extend_seconds`, or by
-- the lease length of its claim; never past the job's deadline (started_at + timeout).
UPDATE jobs j
   SET lease_expires_at = CASE WHEN j.timeout_seconds IS NULL
                               THEN now() + make_interval(secs => coalesce(%(extend_seconds)s::float8, j.lease_seconds))
                               ELSE least(now() + make_interval(secs => coalesce(%(extend_seconds)s::float8, j.lease_seconds)),
                                          j.started_at + make_interval(secs => j.timeout_seconds))
                          END,
       updated_at = now()
 WHERE j.id = %(id)s
   AND j.status = 'running'
   AND j.lease_token = %(lease_token)s::uuid
RETURNING *;

-- name: job_heartbeat_many
-- Extend the leases of many running jobs, as job_heartbeat; returns the ids still held.
-- Driven by the ids (primary-key lookups), rows locked in id order. Touches no indexed
-- column, so each row update is HOT.
WITH locked AS (
    SELECT j.id
      FROM jobs j
      JOIN unnest(%(ids)s::uuid[], %(lease_tokens)s::uuid[]) AS u(id, lease_token)
        ON j.id = u.id AND j.lease_token = u.lease_token
     WHERE j.id = ANY(%(ids)s::uuid[])
       AND j.status = 'running'
     ORDER BY j.id
       FOR UPDATE OF j
)
UPDATE jobs j
   SET lease_expires_at = CASE WHEN j.timeout_seconds IS NULL
                               THEN now() + make_interval(secs => coalesce(%(extend_seconds)s::float8, j.lease_seconds))
                               ELSE least(now() + make_interval(secs => coalesce(%(extend_seconds)s::float8, j.lease_seconds)),
                                          j.started_at + make_interval(secs => j.timeout_seconds))
                          END,
       updated_at = now()
  FROM locked
 WHERE j.id = ANY(%(ids)s::uuid[])
   AND j.id = locked.id
RETURNING j.id;

-- name: job_release_many
-- Give running jobs back to pending without counting the attempt (graceful shutdown);
-- driven by the ids, rows locked in id order.
WITH locked AS (
    SELECT j.id
      FROM jobs j
      JOIN unnest(%(ids)s::uuid[], %(lease_tokens)s::uuid[]) AS u(id, lease_token)
        ON j.id = u.id AND j.lease_token = u.lease_token
     WHERE j.id = ANY(%(ids)s::uuid[])
       AND j.status = 'running'
     ORDER BY j.id
       FOR UPDATE OF j
)
UPDATE jobs j
   SET status = 'pending',
       attempt = greatest(j.attempt - 1, 0),
       run_after = now(),
       lease_token = NULL,
       lease_expires_at = NULL,
       started_at = NULL,
       updated_at = now()
  FROM locked
 WHERE j.id = ANY(%(ids)s::uuid[])
   AND j.id = locked.id
RETURNING j.id, j.task_type;

-- name: job_retry
-- Manual retry of a failed or running job: back to pending, one more attempt granted,
-- but max_attempts never grows past `max_attempts_limit` (jobs.retry_allowed).
UPDATE jobs
   SET status = 'pending',
       max_attempts = greatest(max_attempts, attempt + 1),
       run_after = now(),
       lease_token = NULL,
       lease_expires_at = NULL,
       finished_at = NULL,
       updated_at = now()
 WHERE id = %(id)s
   AND status IN ('failed', 'running')
   AND attempt < greatest(max_attempts, %(max_attempts_limit)s)
RETURNING *;

-- name: job_retry_by_filter
-- Manual retry of the next batch (by id, after `after`) of failed/running jobs matching
-- the filter; returns their ids. Walking by id visits each job once even while workers
-- claim and fail the retried ones again. Jobs that used `max_attempts_limit` attempts
-- are not selected (jobs.retry_allowed). The batch is picked and locked once in a CTE:
-- a subquery under `id IN (...)` may be rescanned, and a rescan skips the rows this
-- statement already updated and locks the next ones, going past the batch size.
WITH picked AS (
    SELECT id FROM jobs
     WHERE status = ANY(%(statuses)s::text[])
       AND (%(owner_service)s::text IS NULL OR owner_service = %(owner_service)s::text)
       AND (%(owner_ref)s::text IS NULL OR owner_ref = %(owner_ref)s::text)
       AND (%(task_type)s::text IS NULL OR task_type = %(task_type)s::text)
       AND (%(model_profile)s::text IS NULL OR model_profile = %(model_profile)s::text)
       AND (%(worker_id)s::text IS NULL OR worker_id = %(worker_id)s::text)
       AND (%(error_category)s::text IS NULL OR error_category = %(error_category)s::text)
       AND (%(created_after)s::timestamptz IS NULL OR created_at >= %(created_after)s::timestamptz)
       AND (%(created_before)s::timestamptz IS NULL OR created_at < %(created_before)s::timestamptz)
       AND attempt < greatest(max_attempts, %(max_attempts_limit)s)
       AND id > %(after)s::uuid
     ORDER BY id
     LIMIT %(batch)s
       FOR UPDATE
)
UPDATE jobs j
   SET status = 'pending',
       max_attempts = greatest(j.max_attempts, j.attempt + 1),
       run_after = now(),
       lease_token = NULL,
       lease_expires_at = NULL,
       finished_at = NULL,
       updated_at = now()
  FROM picked
 WHERE j.id = picked.id
   AND j.status IN ('failed', 'running')
   AND j.attempt < greatest(j.max_attempts, %(max_attempts_limit)s)
RETURNING j.id, j.task_type;

-- name: job_cancel
-- Cancel one pending or running job; its category becomes `cancelled` (an earlier
-- failed attempt stays in the errors history).
UPDATE jobs
   SET status = 'cancelled',
       error_category = 'cancelled',
       error_message = 'cancelled on request',
       error_details = NULL,
       lease_token = NULL,
       lease_expires_at = NULL,
       finished_at = now(),
       updated_at = now()
 WHERE id = %(id)s
   AND status IN ('pending', 'running')
RETURNING *;

-- name: job_cancel_by_filter
-- Cancel the next batch (by id, after `after`) of pending/running jobs matching the
-- filter; returns their ids. Their category becomes `cancelled`.
UPDATE jobs
   SET status = 'cancelled',
       error_category = 'cancelled',
       error_message = 'cancelled on request',
       error_details = NULL,
       lease_token = NULL,
       lease_expires_at = NULL,
       finished_at = now(),
       updated_at = now()
 WHERE id IN (SELECT id FROM jobs
               WHERE status = ANY(%(statuses)s::text[])
                 AND (%(owner_service)s::text IS NULL OR owner_service = %(owner_service)s::text)
                 AND (%(owner_ref)s::text IS NULL OR owner_ref = %(owner_ref)s::text)
                 AND (%(task_type)s::text IS NULL OR task_type = %(task_type)s::text)
                 AND (%(model_profile)s::text IS NULL OR model_profile = %(model_profile)s::text)
                 AND (%(worker_id)s::text IS NULL OR worker_id = %(worker_id)s::text)
                 AND (%(error_category)s::text IS NULL OR error_category = %(error_category)s::text)
                 AND (%(created_after)s::timestamptz IS NULL OR created_at >= %(created_after)s::timestamptz)
                 AND (%(created_before)s::timestamptz IS NULL OR created_at < %(created_before)s::timestamptz)
                 AND id > %(after)s::uuid
               ORDER BY id
               LIMIT %(batch)s
                 FOR UPDATE)
   AND status IN ('pending', 'running')
RETURNING id;

-- name: job_rescue_expired
-- Return running jobs whose lease expired to pending (attempts left, with backoff) or fail
-- them as lease_expired; each rescue is appended to the (bounded) error history.
UPDATE jobs j
   SET status = CASE WHEN j.attempt < j.max_attempts THEN 'pending' ELSE 'failed' END,
       run_after = CASE WHEN j.attempt < j.max_attempts
                        THEN now() + make_interval(secs => least(%(backoff_max)s::float8,
                                 %(backoff_base)s::float8 * power(2, greatest(j.attempt - 1, 0)))
                                 * (0.5 + random() * 0.5))
                        ELSE j.run_after END,
       finished_at = CASE WHEN j.attempt < j.max_attempts THEN NULL ELSE now() END,
       error_category = 'lease_expired',
       error_message = 'lease expired on worker ' || j.worker_id,
       error_details = NULL,
       errors = (SELECT coalesce(jsonb_agg(h.e ORDER BY h.n), '[]'::jsonb)
                   FROM jsonb_array_elements(j.errors || jsonb_build_array(jsonb_build_object(
                            'attempt', j.attempt, 'category', 'lease_expired',
                            'message', 'lease expired on worker ' || j.worker_id,
                            'worker', j.worker_id, 'at', now())))
                        WITH ORDINALITY AS h(e, n)
                  WHERE h.n > jsonb_array_length(j.errors) + 1 - %(errors_kept)s),
       error_count = j.error_count + 1,
       lease_token = NULL,
       lease_expires_at = NULL,
       updated_at = now()
 WHERE j.id IN (SELECT id FROM jobs
                 WHERE status = 'running' AND lease_expires_at < now()
                 ORDER BY lease_expires_at
                 LIMIT %(batch)s
                   FOR UPDATE SKIP LOCKED)
   AND j.status = 'running'
   AND j.lease_expires_at < now()
RETURNING j.id, j.status;

-- name: job_prune_finished
-- Delete a batch of finished jobs older than their retention (database clock); never pending
-- or running. Each status class is read oldest first from its own partial index, so a pass
-- with nothing to delete touches a few index pages whatever the history holds. Rows another
-- statement holds are skipped (next round), so it never waits or deadlocks.
WITH done AS (
    SELECT id FROM jobs
     WHERE status IN ('completed', 'cancelled')
       AND finished_at < now() - make_interval(secs => %(completed_seconds)s::float8)
     ORDER BY finished_at
     LIMIT %(batch)s
       FOR UPDATE SKIP LOCKED
), failed AS (
    SELECT id FROM jobs
     WHERE status = 'failed'
       AND finished_at < now() - make_interval(secs => %(failed_seconds)s::float8)
     ORDER BY finished_at
     LIMIT %(batch)s
       FOR UPDATE SKIP LOCKED
)
DELETE FROM jobs
 WHERE id IN (SELECT id FROM done UNION ALL SELECT id FROM failed)
   AND status IN ('completed', 'cancelled', 'failed')
RETURNING id;

-- name: job_counts_compact
-- Fold the counter deltas written by the triggers into job_counts (one replica at a time).
WITH gate AS (
    SELECT pg_try_advisory_xact_lock(1095324502) AS ok
), moved AS (
    DELETE FROM job_count_deltas WHERE (SELECT ok FROM gate) RETURNING *
)
INSERT INTO job_counts (status, task_type, model_profile, error_category, n)
SELECT status, task_type, model_profile, error_category, sum(n)
  FROM moved
 GROUP BY 1, 2, 3, 4
 ORDER BY 1, 2, 3, 4
    ON CONFLICT (status, task_type, model_profile, error_category)
    DO UPDATE SET n = job_counts.n + excluded.n;

-- name: job_counts_drop_zero
-- Remove counter rows that reached zero.
DELETE FROM job_counts WHERE n = 0;

-- name: stats_counts
-- Exact job counts by status, task type, model profile and (failed) error category.
SELECT status, task_type, model_profile, error_category, sum(n)::bigint AS n
  FROM (SELECT status, task_type, model_profile, error_category, n FROM job_counts
        UNION ALL
        SELECT status, task_type, model_profile, error_category, n FROM job_count_deltas) AS c
 GROUP BY 1, 2, 3, 4
HAVING sum(n) <> 0;

-- name: stats_oldest_pending
-- Creation time of the oldest pending job and the database clock.
SELECT (SELECT min(created_at) FROM jobs WHERE status = 'pending') AS oldest_pending,
       now() AS now;

-- name: stats_recent
-- Finished jobs in the last hour and day, and run-duration percentiles, by task type.
SELECT task_type,
       count(*) FILTER (WHERE status = 'completed' AND finished_at >= now() - interval '1 hour')
           AS completed_1h,
       count(*) FILTER (WHERE status = 'failed' AND finished_at >= now() - interval '1 hour')
           AS failed_1h,
       count(*) FILTER (WHERE status = 'completed') AS completed_24h,
       count(*) FILTER (WHERE status = 'failed') AS failed_24h,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - started_at))
           FILTER (WHERE status = 'completed' AND started_at IS NOT NULL) AS p50_seconds,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - started_at))
           FILTER (WHERE status = 'completed' AND started_at IS NOT NULL) AS p95_seconds
  FROM jobs
 WHERE finished_at >= now() - interval '24 hours'
 GROUP BY task_type;

-- name: jobs_notify
-- Wake the listeners of these task types (payload: the task type).
SELECT pg_notify('ai_service_jobs', t) FROM unnest(%(task_types)s::text[]) AS t;

-- name: db_now
-- The transaction's timestamp: what now() gives every statement of it.
SELECT now() AS now;

-- name: db_ping
-- Readiness probe: the server answers and accepts writes (not a standby).
SELECT NOT pg_is_in_recovery() AND current_setting('transaction_read_only') = 'off' AS ok;
