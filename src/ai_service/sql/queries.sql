-- Every runtime query of the service. `store.py` is the only module that runs them.
-- Each state change is one guarded statement: it changes the row only when the
-- job is in an allowed status (and, for running jobs, holds the caller's lease).
-- Placeholders are psycopg named parameters: %(name)s. A `/*name*/` comment is replaced
-- by the fragment of that name (see sql/__init__.py).

-- fragment: job_statuses
-- The statuses a job filter (jobs.JobFilter) can match, as an array: those in
-- `statuses` (every status when NULL), and of them only `failed` when the filter names
-- an `error_category`: a claim keeps the previous attempt's category on a running job
-- (a retryable failure leaves it on a pending one), so a category describes failed jobs
-- only. A job matches the filter when its status is in this array and job_filter holds;
-- the statements read each of these statuses from jobs_status_idx (status, id), in id
-- order, so neither other statuses nor (for a status filter) the history are walked.
ARRAY(SELECT s
        FROM unnest(coalesce(%(statuses)s::text[],
                             '{pending,running,completed,failed,cancelled}'::text[])) AS s
       WHERE %(error_category)s::text IS NULL OR s = 'failed')

-- fragment: job_filter
-- The other conditions of the job filter, over a row of `jobs`: each parameter that is
-- NULL selects everything. The statements that use it are planned with their values
-- (never prepared), so the unused conditions fold away.
    (%(owner_service)s::text IS NULL OR owner_service = %(owner_service)s::text)
AND (%(owner_ref)s::text IS NULL OR owner_ref = %(owner_ref)s::text)
AND (%(task_type)s::text IS NULL OR task_type = %(task_type)s::text)
AND (%(model_profile)s::text IS NULL OR model_profile = %(model_profile)s::text)
AND (%(worker_id)s::text IS NULL OR worker_id = %(worker_id)s::text)
AND (%(error_category)s::text IS NULL OR error_category = %(error_category)s::text)
AND (%(created_after)s::timestamptz IS NULL OR created_at >= %(created_after)s::timestamptz)
AND (%(created_before)s::timestamptz IS NULL OR created_at < %(created_before)s::timestamptz)

-- fragment: retry_backoff
-- Seconds before a failed attempt (number `attempt`, 1-based) may run again:
-- exponential from `backoff_base`, capped at `backoff_max`, jittered into the upper
-- half of the window. jobs.backoff_seconds is its Python mirror (a test keeps them equal).
least(%(backoff_max)s::float8, %(backoff_base)s::float8 * power(2, greatest(attempt - 1, 0)))
    * (0.5 + random() * 0.5)

-- fragment: outage_backoff
-- Seconds before a job deferred by a provider outage (job_defer) may run again: the
-- time since its outage began (so the waits roughly double, as with attempts), at least
-- `backoff_base`, at most `outage_backoff_max`, jittered into the upper half like
-- retry_backoff. jobs.outage_backoff_seconds is its Python mirror.
least(%(outage_backoff_max)s::float8,
      greatest(%(backoff_base)s::float8,
               extract(epoch FROM now() - coalesce(outage_since, now()))::float8))
    * (0.5 + random() * 0.5)

-- fragment: outage_start
-- When the outage a deferred job meets began: its `outage_since`, unless the outage
-- ended meanwhile. It goes on while the job is retried as soon as it may run again (its
-- claim within 2 minutes of its run_after); a job that then waited longer (a long
-- queue, a breaker held open) starts a new outage, so a short outage long ago never
-- counts against the budget of a later one.
CASE WHEN outage_since IS NULL OR started_at > run_after + interval '2 minutes'
     THEN now() ELSE outage_since END

-- name: job_create_many
-- Insert jobs given as one JSON array of objects (one parameter, parsed by PostgreSQL:
-- far cheaper than ten typed arrays); idempotency conflicts insert nothing.
-- Returns what the database decided for each inserted row; the rest of a new job is
-- what was sent and the columns' defaults (reading 1000 rows back would cost more
-- than inserting them).
INSERT INTO jobs (id, owner_service, owner_ref, task_type, model_profile, priority,
                  input, max_attempts, run_after, idempotency_key, request_hash, timeout_seconds,
                  callback_url, traceparent)
SELECT id, owner_service, owner_ref, task_type, model_profile, priority,
       input, max_attempts, coalesce(run_after, now()), idempotency_key, request_hash,
       timeout_seconds, callback_url, traceparent
  FROM jsonb_to_recordset(%(jobs)s::jsonb)
       AS t(id uuid, owner_service text, owner_ref text, task_type text, model_profile text,
            priority int, input jsonb, max_attempts int, run_after timestamptz,
            idempotency_key text, request_hash text, timeout_seconds int, callback_url text,
            traceparent text)
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
-- Jobs matching the filter, newest first (ids are UUIDv7), after a keyset cursor. When
-- the filter names statuses (or a category, which names `failed`), each of them is read
-- newest first from its own index, at most `limit` ids each, and the newest `limit` of
-- those make the page: a rare status is never looked for among the whole history.
-- Otherwise the primary key is walked newest first. Only one of the two branches is
-- planned (the other's condition folds to false). The big columns come only when asked
-- for: a CASE that is false never reads (detoasts) the value.
WITH page AS MATERIALIZED (
    (SELECT c.id
       FROM unnest(/*job_statuses*/) AS s(status)
      CROSS JOIN LATERAL (
         SELECT id FROM jobs
          WHERE status = s.status
            AND /*job_filter*/
            AND (%(cursor_id)s::uuid IS NULL OR id < %(cursor_id)s::uuid)
          ORDER BY id DESC
          LIMIT %(limit)s
      ) AS c
      WHERE %(statuses)s::text[] IS NOT NULL OR %(error_category)s::text IS NOT NULL
      ORDER BY c.id DESC
      LIMIT %(limit)s)
    UNION ALL
    (SELECT id FROM jobs
      WHERE %(statuses)s::text[] IS NULL AND %(error_category)s::text IS NULL
        AND /*job_filter*/
        AND (%(cursor_id)s::uuid IS NULL OR id < %(cursor_id)s::uuid)
      ORDER BY id DESC
      LIMIT %(limit)s)
)
SELECT id, owner_service, owner_ref, task_type, model_profile, status, priority,
       CASE WHEN %(with_input)s THEN input END AS input,
       CASE WHEN %(with_result)s THEN result END AS result,
       error_category, error_message,
       CASE WHEN %(with_error_details)s THEN error_details END AS error_details,
       CASE WHEN %(with_errors)s THEN errors END AS errors,
       error_count, attempt, max_attempts, run_after, worker_id, lease_token,
       lease_expires_at, lease_seconds, timeout_seconds, idempotency_key, created_at,
       updated_at, started_at, finished_at, outage_since, callback_url, traceparent
  FROM jobs
 WHERE id = ANY(ARRAY(SELECT id FROM page))
 ORDER BY id DESC;

-- name: job_claim_lock_profiles
-- Serialise admission to model profiles with a cluster-wide limit (MODEL_PROFILE_LIMITS):
-- a transaction-level advisory lock per profile, taken in key order (no deadlock between
-- claimers) before the claim statement, whose snapshot then sees every earlier claim of
-- those profiles committed. Claims of unlimited profiles take no lock.
SELECT count(pg_advisory_xact_lock(k))
  FROM (SELECT DISTINCT hashtextextended('ai_service.profile:' || p, 0) AS k
          FROM unnest(%(locked_profiles)s::text[]) AS p
         ORDER BY 1) AS keys;

-- name: job_claim
-- Atomically take up to `limit` runnable pending jobs, optionally of the given task types
-- and model profiles, with fresh leases: the highest priority first; within a priority,
-- shared between owner_services by weighted round robin (fair share); at most the free
-- capacity of each limited model profile. Index-driven whatever the table holds, and at
-- a cost bounded by `scan`, whatever the number of owners or the backlog:
-- - the (task_type, model_profile) pairs present are found by skip scans of
--   jobs_claim_idx (or taken from the filters), then each pair's priority levels;
-- - each level's owners are found by skip scans too, in name order from the caller's
--   fair-share cursor (`fair_from`), wrapping around, at most `owners` of them;
-- - each owner's runnable range (run_after <= now()) is read in order, at most its
--   quota (weight x rounds), so neither other backlogs nor jobs scheduled for later are
--   ever visited. Round r of an owner of weight w holds its jobs number r*w+1 .. (r+1)*w;
--   candidates are ordered by priority, round, then the owner's position after the cursor.
-- The candidates (`scan`) are read without locks; only the rows returned are locked (SKIP
-- LOCKED: concurrent claimers never wait for each other). A limited profile's capacity is
-- its limit less its running jobs (jobs_running_idx); job_claim_lock_profiles, earlier in
-- the same transaction, makes that count exact until this claim commits.
WITH RECURSIVE
limits(p, cap) AS (
    SELECT l.p,
           greatest(l.n - (SELECT count(*) FROM jobs
                            WHERE status = 'running' AND model_profile = l.p), 0)
      FROM unnest(%(limited_profiles)s::text[], %(profile_limits)s::int[]) AS l(p, n)
),
weights(o, w) AS (
    SELECT * FROM unnest(%(owner_names)s::text[], %(owner_weights)s::int[])
),
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
named_pairs(t, p) AS (
    SELECT types.t, m.p FROM types CROSS JOIN unnest(%(model_profiles)s::text[]) AS m(p)
  UNION ALL
    SELECT t, p FROM all_pairs WHERE p IS NOT NULL
),
pairs(t, p) AS (
    -- a profile at its limit is not even looked at
    SELECT t, p FROM named_pairs n
     WHERE NOT EXISTS (SELECT 1 FROM limits WHERE limits.p = n.p AND limits.cap = 0)
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
-- A level's owners from the cursor to the last one (`fair_inclusive`: the cursor's
-- owner still has quota left in its round, so it comes first)...
owners_from(t, p, pr, o, n) AS (
    SELECT l.t, l.p, l.pr,
           CASE WHEN %(fair_inclusive)s
                THEN (SELECT min(owner_service) FROM jobs
                       WHERE status = 'pending' AND task_type = l.t AND model_profile = l.p
                         AND priority = l.pr AND owner_service >= %(fair_from)s::text)
                ELSE (SELECT min(owner_service) FROM jobs
                       WHERE status = 'pending' AND task_type = l.t AND model_profile = l.p
                         AND priority = l.pr AND owner_service > %(fair_from)s::text)
           END,
           0
      FROM levels l
     WHERE l.pr IS NOT NULL
  UNION ALL
    SELECT f.t, f.p, f.pr,
           (SELECT min(owner_service) FROM jobs
             WHERE status = 'pending' AND task_type = f.t AND model_profile = f.p
               AND priority = f.pr AND owner_service > f.o),
           f.n + 1
      FROM owners_from f
     WHERE f.o IS NOT NULL AND f.n + 1 < %(owners)s
),
-- ...then, wrapping around, from the first one up to the cursor.
owners_wrapped(t, p, pr, o, n) AS (
    SELECT l.t, l.p, l.pr,
           (SELECT min(owner_service) FROM jobs
             WHERE status = 'pending' AND task_type = l.t AND model_profile = l.p
               AND priority = l.pr),
           0
      FROM levels l
     WHERE l.pr IS NOT NULL
  UNION ALL
    SELECT f.t, f.p, f.pr,
           (SELECT min(owner_service) FROM jobs
             WHERE status = 'pending' AND task_type = f.t AND model_profile = f.p
               AND priority = f.pr AND owner_service > f.o),
           f.n + 1
      FROM owners_wrapped f
     WHERE f.o IS NOT NULL AND f.n + 1 < %(owners)s
       AND (f.o < %(fair_from)s::text OR (NOT %(fair_inclusive)s AND f.o = %(fair_from)s::text))
),
owners_listed AS (
    SELECT t, p, pr, o, n AS pos FROM owners_from WHERE o IS NOT NULL
  UNION ALL
    SELECT t, p, pr, o, %(owners)s + n FROM owners_wrapped
     WHERE o IS NOT NULL
       AND (o < %(fair_from)s::text OR (NOT %(fair_inclusive)s AND o = %(fair_from)s::text))
),
owners AS (
    SELECT t, p, pr, o, pos, w,
           -- what the cursor's owner already took of its weight in this round
           CASE WHEN %(fair_inclusive)s AND o = %(fair_from)s::text AND pos = 0
                THEN least(%(fair_used)s, w - 1) ELSE 0 END AS used,
           count(*) OVER level AS listed,
           sum(w) OVER level AS level_weight
      FROM (SELECT ol.*, coalesce((SELECT w FROM weights WHERE weights.o = ol.o), 1) AS w,
                   row_number() OVER (PARTITION BY t, p, pr ORDER BY pos) AS k
              FROM owners_listed ol) AS numbered
     WHERE k <= %(owners)s
    WINDOW level AS (PARTITION BY t, p, pr)
),
quotas AS (
    SELECT owners.*,
           least(%(scan)s::bigint, w * ceil(%(scan)s::numeric / level_weight)::bigint) AS quota
      FROM owners
),
offered AS (
    SELECT q.t, q.p, q.pr, q.o, q.pos, q.w, q.used, q.quota, q.listed,
           c.id, c.run_after, c.r,
           (c.r - 1 + q.used) / q.w AS round
      FROM quotas q
     CROSS JOIN LATERAL (
        SELECT id, run_after, row_number() OVER (ORDER BY run_after, id) AS r
          FROM (SELECT id, run_after
                  FROM jobs
                 WHERE status = 'pending' AND task_type = q.t AND model_profile = q.p
                   AND priority = q.pr AND owner_service = q.o AND run_after <= now()
                 ORDER BY run_after, id
                 LIMIT q.quota) AS s
     ) AS c
),
admitted AS (
    SELECT o.*,
           row_number() OVER (PARTITION BY o.p
                              ORDER BY o.pr DESC, o.round, o.pos, o.run_after, o.id) AS in_profile
      FROM offered o
),
candidates AS (
    SELECT a.*
      FROM admitted a
      LEFT JOIN limits ON limits.p = a.p
     WHERE limits.cap IS NULL OR a.in_profile <= limits.cap
     ORDER BY a.pr DESC, a.round, a.pos, a.run_after, a.id
     LIMIT %(scan)s
),
picked AS (
    SELECT j.id
      FROM jobs j
      JOIN candidates c ON c.id = j.id
     WHERE j.id = ANY(ARRAY(SELECT id FROM candidates))
       AND j.status = 'pending'
       AND j.run_after <= now()
     ORDER BY c.pr DESC, c.round, c.pos, c.run_after, c.id
     LIMIT %(limit)s
       FOR UPDATE OF j SKIP LOCKED
),
claimed AS (
    UPDATE jobs j
       SET status = 'running',
           attempt = j.attempt + 1,
           worker_id = %(worker_id)s,
           lease_token = gen_random_uuid(),
           lease_seconds = %(lease_seconds)s,
           lease_expires_at = now() + make_interval(secs => %(lease_seconds)s),
           -- after a profile lock (`locked`), when the job was admitted: the claim may
           -- have waited for the lock, and a job's running span (started_at,
           -- finished_at) must not overlap the span of the job whose completion
           -- freed its place; else the transaction's time, that of its completions
           started_at = CASE WHEN %(locked)s THEN clock_timestamp() ELSE now() END,
           updated_at = now()
      FROM picked
     WHERE j.id = picked.id
    RETURNING j.*
)
-- Always one row at least: `seen` tells the caller how many candidates there were, and
-- `truncated` whether an owner or a level had more than were read, so that a claim that
-- lost its candidates to concurrent claimers can look further; `fair_owner` and
-- `fair_used` are the cursor for the caller's next claim (the last owner served and how
-- much of its weight it took in that round).
SELECT claimed.*, s.seen, s.truncated, f.fair_owner, f.fair_used
  FROM (SELECT (SELECT count(*) FROM candidates) AS seen,
               EXISTS (SELECT 1 FROM offered WHERE r = quota)
               OR EXISTS (SELECT 1 FROM owners WHERE listed >= %(owners)s) AS truncated) AS s
  LEFT JOIN LATERAL (
        (SELECT c.o AS fair_owner, mod(c.r - 1 + c.used, c.w) + 1 AS fair_used
           FROM candidates c
          WHERE c.id IN (SELECT id FROM claimed)
          ORDER BY c.pr, c.round DESC, c.pos DESC, c.r DESC
          LIMIT 1)
        UNION ALL
        -- Nothing claimed from a level that has more owners than were read (those read
        -- have only jobs scheduled for later, or locked ones): the cursor moves past the
        -- last owner read, so the next claim reads the next owners.
        (SELECT o.o, o.w
           FROM owners o
          WHERE NOT EXISTS (SELECT 1 FROM claimed) AND o.listed >= %(owners)s
          ORDER BY o.pr DESC, o.pos DESC
          LIMIT 1)
        LIMIT 1) AS f ON true
  LEFT JOIN claimed ON true;

-- name: job_complete
-- Store a result: a running job whose lease matches, or a pending job (mirror path, no token).
-- The token stays on the row, so a repeat of this completion is recognised.
UPDATE jobs
   SET status = 'completed',
       result = %(result)s,
       outage_since = NULL,
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
           outage_since = NULL,
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
                        THEN now() + make_interval(secs => /*retry_backoff*/)
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
       -- a failure that is no outage: the provider answered, the outage is over
       outage_since = NULL,
       lease_expires_at = NULL,
       updated_at = now()
 WHERE id = %(id)s
   AND ((status = 'running' AND lease_token = %(lease_token)s::uuid)
        OR (status = 'pending' AND %(lease_token)s::uuid IS NULL))
RETURNING *;

-- name: job_defer
-- A provider outage (provider_unavailable, rate_limited) ended a running attempt: back to
-- pending WITHOUT spending the attempt (`attempt` goes back down, so the next claim runs
-- the same number again), after `delay` seconds (a Retry-After, or 0 for a job the worker
-- did not even send) or the outage backoff. The history gets an entry marked `deferred`;
-- `error_count` counts it like any failure. `outage_since` keeps when the outage began
-- for this job (outage_start; cleared by a completion, a failure that is no outage, a
-- rescue or a manual retry); once it is more than `outage_max` seconds old, the job fails
-- with the category instead (`deferred` false).
-- Fenced by the lease token like job_fail; the token stays, so a repeat is recognised.
UPDATE jobs
   SET status = CASE WHEN /*outage_start*/ > now() - make_interval(secs => %(outage_max)s)
                     THEN 'pending' ELSE 'failed' END,
       attempt = CASE WHEN /*outage_start*/ > now() - make_interval(secs => %(outage_max)s)
                      THEN greatest(attempt - 1, 0) ELSE attempt END,
       run_after = CASE WHEN /*outage_start*/ > now() - make_interval(secs => %(outage_max)s)
                        THEN now() + make_interval(secs => coalesce(%(delay)s::float8, /*outage_backoff*/))
                        ELSE run_after END,
       finished_at = CASE WHEN /*outage_start*/ > now() - make_interval(secs => %(outage_max)s)
                          THEN NULL ELSE now() END,
       outage_since = /*outage_start*/,
       error_category = %(category)s,
       error_message = %(message)s,
       error_details = %(details)s,
       errors = (SELECT coalesce(jsonb_agg(h.e ORDER BY h.n), '[]'::jsonb)
                   FROM jsonb_array_elements(errors || jsonb_build_array(jsonb_build_object(
                            'attempt', attempt, 'category', %(category)s::text,
                            'message', %(message)s::text, 'worker', worker_id, 'at', now(),
                            'deferred', /*outage_start*/
                                        > now() - make_interval(secs => %(outage_max)s))))
                        WITH ORDINALITY AS h(e, n)
                  WHERE h.n > jsonb_array_length(errors) + 1 - %(errors_kept)s),
       error_count = error_count + 1,
       lease_expires_at = NULL,
       updated_at = now()
 WHERE id = %(id)s
   AND status = 'running'
   AND lease_token = %(lease_token)s::uuid
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
       outage_since = NULL,
       lease_token = NULL,
       lease_expires_at = NULL,
       finished_at = NULL,
       updated_at = now()
 WHERE id = %(id)s
   AND status IN ('failed', 'running')
   AND attempt < greatest(max_attempts, %(max_attempts_limit)s)
RETURNING *;

-- name: job_retry_by_filter
-- Manual retry of the next batch (by id, after `after`) of the jobs matching the filter
-- (`statuses`: failed, running); answers one row: the candidates seen and the last
-- one's id (where the next batch starts), how many jobs changed, the first `sample` of
-- their ids and their task types. Walking by id visits each job once even while workers
-- claim and fail the retried ones again. Each status is read in id order (see
-- job_statuses): a batch never walks jobs of other statuses. Candidates are read without
-- locks, then locked in id order (status and filter checked again on the row locked: it
-- may have changed since). Jobs that used `max_attempts_limit` attempts are not
-- selected (jobs.retry_allowed).
WITH candidates AS MATERIALIZED (
    SELECT c.id
      FROM unnest(/*job_statuses*/) AS s(status)
     CROSS JOIN LATERAL (
        SELECT id FROM jobs
         WHERE status = s.status
           AND /*job_filter*/
           AND attempt < greatest(max_attempts, %(max_attempts_limit)s)
           AND id > %(after)s::uuid
         ORDER BY id
         LIMIT %(batch)s
     ) AS c
     ORDER BY c.id
     LIMIT %(batch)s
), picked AS MATERIALIZED (
    SELECT id FROM jobs
     WHERE id = ANY(ARRAY(SELECT id FROM candidates))
       AND status = ANY(/*job_statuses*/)
       AND /*job_filter*/
     ORDER BY id
       FOR UPDATE
), changed AS (
    UPDATE jobs j
       SET status = 'pending',
           max_attempts = greatest(j.max_attempts, j.attempt + 1),
           run_after = now(),
           outage_since = NULL,
           lease_token = NULL,
           lease_expires_at = NULL,
           finished_at = NULL,
           updated_at = now()
      FROM picked
     WHERE j.id = picked.id
       AND j.status IN ('failed', 'running')
       AND j.attempt < greatest(j.max_attempts, %(max_attempts_limit)s)
    RETURNING j.id, j.task_type
)
SELECT (SELECT count(*) FROM candidates) AS seen,
       (SELECT id FROM candidates ORDER BY id DESC LIMIT 1) AS last_id,
       (SELECT count(*) FROM changed) AS changed,
       ARRAY(SELECT id FROM changed ORDER BY id LIMIT %(sample)s) AS sample,
       ARRAY(SELECT DISTINCT task_type FROM changed) AS task_types;

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
-- Cancel the next batch (by id, after `after`) of the jobs matching the filter
-- (`statuses`: pending, running); their category becomes `cancelled`. Walks and answers as
-- job_retry_by_filter does (without task types).
WITH candidates AS MATERIALIZED (
    SELECT c.id
      FROM unnest(/*job_statuses*/) AS s(status)
     CROSS JOIN LATERAL (
        SELECT id FROM jobs
         WHERE status = s.status
           AND /*job_filter*/
           AND id > %(after)s::uuid
         ORDER BY id
         LIMIT %(batch)s
     ) AS c
     ORDER BY c.id
     LIMIT %(batch)s
), picked AS MATERIALIZED (
    SELECT id FROM jobs
     WHERE id = ANY(ARRAY(SELECT id FROM candidates))
       AND status = ANY(/*job_statuses*/)
       AND /*job_filter*/
     ORDER BY id
       FOR UPDATE
), changed AS (
    UPDATE jobs j
       SET status = 'cancelled',
           error_category = 'cancelled',
           error_message = 'cancelled on request',
           error_details = NULL,
           lease_token = NULL,
           lease_expires_at = NULL,
           finished_at = now(),
           updated_at = now()
      FROM picked
     WHERE j.id = picked.id
       AND j.status IN ('pending', 'running')
    RETURNING j.id
)
SELECT (SELECT count(*) FROM candidates) AS seen,
       (SELECT id FROM candidates ORDER BY id DESC LIMIT 1) AS last_id,
       (SELECT count(*) FROM changed) AS changed,
       ARRAY(SELECT id FROM changed ORDER BY id LIMIT %(sample)s) AS sample;

-- name: job_rescue_expired
-- Return running jobs whose lease expired to pending (attempts left, with backoff) or fail
-- them; each rescue is appended to the (bounded) error history. The category is `timeout`
-- when the attempt ran past its deadline (heartbeats never extend a lease beyond it), else
-- `lease_expired`. The running jobs are few (the workers' concurrency): read from
-- jobs_running_idx, picked and locked once in a CTE.
WITH expired AS (
    SELECT id,
           CASE WHEN timeout_seconds IS NOT NULL
                 AND started_at + make_interval(secs => timeout_seconds) <= now()
                THEN 'timeout' ELSE 'lease_expired' END AS category,
           CASE WHEN timeout_seconds IS NOT NULL
                 AND started_at + make_interval(secs => timeout_seconds) <= now()
                THEN 'attempt ran past its deadline of ' || timeout_seconds
                     || 's on worker ' || worker_id
                ELSE 'lease expired on worker ' || worker_id END AS message
      FROM jobs
     WHERE status = 'running' AND lease_expires_at < now()
     ORDER BY lease_expires_at
     LIMIT %(batch)s
       FOR UPDATE SKIP LOCKED
)
UPDATE jobs j
   SET status = CASE WHEN j.attempt < j.max_attempts THEN 'pending' ELSE 'failed' END,
       run_after = CASE WHEN j.attempt < j.max_attempts
                        THEN now() + make_interval(secs => /*retry_backoff*/)
                        ELSE j.run_after END,
       finished_at = CASE WHEN j.attempt < j.max_attempts THEN NULL ELSE now() END,
       error_category = e.category,
       error_message = e.message,
       error_details = NULL,
       errors = (SELECT coalesce(jsonb_agg(h.e ORDER BY h.n), '[]'::jsonb)
                   FROM jsonb_array_elements(j.errors || jsonb_build_array(jsonb_build_object(
                            'attempt', j.attempt, 'category', e.category,
                            'message', e.message, 'worker', j.worker_id, 'at', now())))
                        WITH ORDINALITY AS h(e, n)
                  WHERE h.n > jsonb_array_length(j.errors) + 1 - %(errors_kept)s),
       error_count = j.error_count + 1,
       outage_since = NULL,
       lease_token = NULL,
       lease_expires_at = NULL,
       updated_at = now()
  FROM expired e
 WHERE j.id = e.id
   AND j.status = 'running'
   AND j.lease_expires_at < now()
RETURNING j.id, j.status;

-- name: job_prune_finished
-- Delete a batch of finished jobs older than their retention (database clock); never pending
-- or running. Each status class is read oldest first from its own partial index, so a pass
-- with nothing to delete touches a few index pages whatever the history holds. Rows another
-- statement holds are skipped (next round), so it never waits or deadlocks. The jobs'
-- webhook deliveries go with them (webhook_deliveries_job_idx), and their transcription
-- attempts (the A/B report's rows, by primary key).
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
), removed AS (
    DELETE FROM jobs
     WHERE id IN (SELECT id FROM done UNION ALL SELECT id FROM failed)
       AND status IN ('completed', 'cancelled', 'failed')
    RETURNING id
), deliveries AS (
    DELETE FROM webhook_deliveries WHERE job_id IN (SELECT id FROM removed)
), transcriptions AS (
    DELETE FROM transcription_attempts WHERE job_id IN (SELECT id FROM removed)
)
SELECT id FROM removed;

-- name: job_counts_compact
-- Fold the counter deltas written by the triggers into job_counts (one replica at a time).
WITH gate AS (
    SELECT pg_try_advisory_xact_lock(1095324502) AS ok
), moved AS (
    DELETE FROM job_count_deltas WHERE (SELECT ok FROM gate) RETURNING *
)
INSERT INTO job_counts (status, task_type, model_profile, error_category, owner_service, n)
SELECT status, task_type, model_profile, error_category, owner_service, sum(n)
  FROM moved
 GROUP BY 1, 2, 3, 4, 5
 ORDER BY 1, 2, 3, 4, 5
    ON CONFLICT (status, task_type, model_profile, error_category, owner_service)
    DO UPDATE SET n = job_counts.n + excluded.n;

-- name: job_counts_drop_zero
-- Remove counter rows that reached zero.
DELETE FROM job_counts WHERE n = 0;

-- name: job_counts_recount_lock_timeout
-- How long the recount waits for its locks (this transaction only).
SELECT set_config('lock_timeout', %(lock_timeout)s, true);

-- name: job_counts_recount_lock
-- Recount, step 1: the jobs table's lock before the compaction lock, in the order
-- TRUNCATE takes them (its trigger), so the two cannot deadlock. ACCESS SHARE blocks
-- no writer (only TRUNCATE and schema changes).
LOCK TABLE jobs IN ACCESS SHARE MODE;

-- name: job_counts_recount_gate
-- Recount, step 2: wait for a counter compaction in flight and keep the others out
-- until commit: the advisory lock of job_counts_compact (and the TRUNCATE trigger).
SELECT pg_advisory_xact_lock(1095324502);

-- name: job_counts_recount
-- Recount, step 3: set every counter from the jobs table itself, while writers run.
-- The counters' invariant is: exact count = job_counts + job_count_deltas. One
-- statement, so one snapshot: it sees each writer's row changes together with the
-- deltas its trigger wrote (same transaction), or neither. Each counter is set to
-- (rows in the snapshot) - (deltas in the snapshot); those deltas stay, so they add
-- back, and deltas committed after the snapshot add the changes it did not see.
-- Nothing else writes job_counts meanwhile: compaction and TRUNCATE need the lock of
-- step 2. Returns each key's figure before (counters + deltas) and after (the table).
WITH truth AS (
    SELECT status, task_type, model_profile,
           CASE WHEN status = 'failed' THEN error_category ELSE '' END AS error_category,
           owner_service, count(*) AS n
      FROM jobs
     GROUP BY 1, 2, 3, 4, 5
), deltas AS (
    SELECT status, task_type, model_profile, error_category, owner_service, sum(n) AS n
      FROM job_count_deltas
     GROUP BY 1, 2, 3, 4, 5
), merged AS (
    SELECT k.status, k.task_type, k.model_profile, k.error_category, k.owner_service,
           coalesce(c.n, 0) + coalesce(d.n, 0) AS before,
           coalesce(t.n, 0) AS after,
           coalesce(t.n, 0) - coalesce(d.n, 0) AS counter
      FROM (SELECT status, task_type, model_profile, error_category, owner_service FROM truth
            UNION
            SELECT status, task_type, model_profile, error_category, owner_service FROM deltas
            UNION
            SELECT status, task_type, model_profile, error_category, owner_service FROM job_counts) AS k
      LEFT JOIN truth t USING (status, task_type, model_profile, error_category, owner_service)
      LEFT JOIN deltas d USING (status, task_type, model_profile, error_category, owner_service)
      LEFT JOIN job_counts c USING (status, task_type, model_profile, error_category, owner_service)
), written AS (
    INSERT INTO job_counts (status, task_type, model_profile, error_category, owner_service, n)
    SELECT status, task_type, model_profile, error_category, owner_service, counter
      FROM merged
     ORDER BY 1, 2, 3, 4, 5
        ON CONFLICT (status, task_type, model_profile, error_category, owner_service)
        DO UPDATE SET n = excluded.n
)
SELECT status, task_type, model_profile, error_category, owner_service,
       before::bigint AS before, after::bigint AS after
  FROM merged;

-- name: job_rollups_compact
-- Fold the rollup deltas written by the triggers into the per-minute and per-hour
-- rollups (one replica at a time; a lock of its own, so counters and rollups fold
-- independently).
WITH gate AS (
    SELECT pg_try_advisory_xact_lock(1095324503) AS ok
), moved AS (
    DELETE FROM job_rollup_deltas WHERE (SELECT ok FROM gate) RETURNING *
), minutes AS (
    SELECT minute, task_type, model_profile, outcome, sum(n) AS n,
           sum(duration_sum) AS duration_sum, job_buckets_sum(buckets) AS buckets
      FROM moved
     GROUP BY 1, 2, 3, 4
), hours AS (
    INSERT INTO job_rollups_hourly AS r
                (hour, task_type, model_profile, outcome, n, duration_sum, buckets)
    SELECT date_trunc('hour', minute, 'UTC'), task_type, model_profile, outcome, sum(n),
           sum(duration_sum), job_buckets_sum(buckets)
      FROM minutes
     GROUP BY 1, 2, 3, 4
     ORDER BY 1, 2, 3, 4
        ON CONFLICT (hour, task_type, model_profile, outcome)
        DO UPDATE SET n = r.n + excluded.n,
                      duration_sum = r.duration_sum + excluded.duration_sum,
                      buckets = job_buckets_add(r.buckets, excluded.buckets)
)
INSERT INTO job_rollups AS r (minute, task_type, model_profile, outcome, n, duration_sum, buckets)
SELECT minute, task_type, model_profile, outcome, n, duration_sum, buckets
  FROM minutes
 ORDER BY 1, 2, 3, 4
    ON CONFLICT (minute, task_type, model_profile, outcome)
    DO UPDATE SET n = r.n + excluded.n,
                  duration_sum = r.duration_sum + excluded.duration_sum,
                  buckets = job_buckets_add(r.buckets, excluded.buckets);

-- name: job_rollups_prune
-- Delete rollups older than their retention (job_rollups_keep(), database clock).
WITH minutes AS (
    DELETE FROM job_rollups WHERE minute < now() - job_rollups_keep() RETURNING 1
), hours AS (
    DELETE FROM job_rollups_hourly WHERE hour < now() - job_rollups_keep() RETURNING 1
)
SELECT (SELECT count(*) FROM minutes) + (SELECT count(*) FROM hours) AS deleted;

-- name: transcription_rollups_compact
-- Fold the attempt deltas written by the jobs_transcription_report trigger into the
-- hourly transcription rollups (one replica at a time: a lock of its own). Returns how
-- many deltas it folded.
WITH gate AS (
    SELECT pg_try_advisory_xact_lock(1095324520) AS ok
), moved AS (
    DELETE FROM transcription_rollup_deltas WHERE (SELECT ok FROM gate) RETURNING *
), by_bucket AS (
    SELECT hour, owner_service, provider, model,
           CASE WHEN status = 'ok' AND duration_ms IS NOT NULL
                THEN width_bucket(duration_ms, transcription_duration_bounds()) END AS b,
           count(*) FILTER (WHERE status IN ('ok', 'error')) AS attempts,
           count(*) FILTER (WHERE status = 'ok') AS ok,
           count(*) FILTER (WHERE status = 'skipped') AS skipped,
           count(*) FILTER (WHERE is_reference) AS reference,
           coalesce(sum(duration_ms) FILTER (WHERE status = 'ok' AND audio_seconds > 0), 0)
               AS rtf_ms,
           coalesce(sum(audio_seconds) FILTER (WHERE status = 'ok' AND audio_seconds > 0
                                                 AND duration_ms IS NOT NULL), 0) AS rtf_audio,
           coalesce(sum(wer), 0) AS wer_sum,
           count(wer) AS wer_n
      FROM moved
     GROUP BY 1, 2, 3, 4, 5
), folded AS (
    INSERT INTO transcription_rollups AS r
           (hour, owner_service, provider, model, attempts, ok, skipped, reference, rtf_ms,
            rtf_audio, wer_sum, wer_n, buckets)
    SELECT hour, owner_service, provider, model, sum(attempts), sum(ok), sum(skipped),
           sum(reference), sum(rtf_ms), sum(rtf_audio), sum(wer_sum), sum(wer_n),
           transcription_buckets(array_agg(b) FILTER (WHERE b IS NOT NULL),
                                 array_agg(ok) FILTER (WHERE b IS NOT NULL))
      FROM by_bucket
     GROUP BY 1, 2, 3, 4
     ORDER BY 1, 2, 3, 4
        ON CONFLICT (hour, owner_service, provider, model)
        DO UPDATE SET attempts = r.attempts + excluded.attempts,
                      ok = r.ok + excluded.ok,
                      skipped = r.skipped + excluded.skipped,
                      reference = r.reference + excluded.reference,
                      rtf_ms = r.rtf_ms + excluded.rtf_ms,
                      rtf_audio = r.rtf_audio + excluded.rtf_audio,
                      wer_sum = r.wer_sum + excluded.wer_sum,
                      wer_n = r.wer_n + excluded.wer_n,
                      buckets = job_buckets_add(r.buckets, excluded.buckets)
)
SELECT count(*) AS folded FROM moved;

-- name: transcription_rollups_prune
-- Delete hourly transcription rollups older than their retention (database clock).
WITH gone AS (
    DELETE FROM transcription_rollups WHERE hour < now() - transcription_rollups_keep()
    RETURNING 1
)
SELECT count(*) AS deleted FROM gone;

-- name: transcription_report
-- The A/B report's figures per provider and model over a window: the whole UTC hours
-- [hours_from, hours_to) from the hourly rollups plus the deltas not folded yet (one
-- snapshot: a fold running meanwhile moves nothing in or out), and the partial hours at
-- the edges, [edge1_from, edge1_to) and [edge2_from, edge2_to), from the attempt rows
-- (transcription_attempts_finished_idx). The rollups answer with their bucket array;
-- the other rows come grouped by duration bucket (`bucket`, `bucket_n`); the caller
-- adds them up. Planned with its values (never prepared): the owner filter folds away.
WITH edges AS (
    SELECT provider, model, status, duration_ms, audio_seconds, wer, is_reference
      FROM transcription_attempts
     WHERE finished_at >= %(edge1_from)s AND finished_at < %(edge1_to)s
       AND (%(owner)s::text IS NULL OR owner_service = %(owner)s)
  UNION ALL
    SELECT provider, model, status, duration_ms, audio_seconds, wer, is_reference
      FROM transcription_attempts
     WHERE finished_at >= %(edge2_from)s AND finished_at < %(edge2_to)s
       AND (%(owner)s::text IS NULL OR owner_service = %(owner)s)
  UNION ALL
    SELECT provider, model, status, duration_ms, audio_seconds, wer, is_reference
      FROM transcription_rollup_deltas
     WHERE hour >= %(hours_from)s AND hour < %(hours_to)s
       AND (%(owner)s::text IS NULL OR owner_service = %(owner)s)
), bucketed AS (
    SELECT e.*,
           CASE WHEN status = 'ok' AND duration_ms IS NOT NULL
                THEN width_bucket(duration_ms, transcription_duration_bounds()) END AS b
      FROM edges e
)
SELECT provider, model, attempts, ok, skipped, reference, rtf_ms, rtf_audio, wer_sum, wer_n,
       buckets, NULL::integer AS bucket, 0::bigint AS bucket_n
  FROM transcription_rollups
 WHERE hour >= %(hours_from)s AND hour < %(hours_to)s
   AND (%(owner)s::text IS NULL OR owner_service = %(owner)s)
UNION ALL
SELECT provider, model,
       count(*) FILTER (WHERE status IN ('ok', 'error')),
       count(*) FILTER (WHERE status = 'ok'),
       count(*) FILTER (WHERE status = 'skipped'),
       count(*) FILTER (WHERE is_reference),
       coalesce(sum(duration_ms) FILTER (WHERE status = 'ok' AND audio_seconds > 0), 0),
       coalesce(sum(audio_seconds) FILTER (WHERE status = 'ok' AND audio_seconds > 0
                                             AND duration_ms IS NOT NULL), 0),
       coalesce(sum(wer), 0),
       count(wer),
       NULL::bigint[],
       b,
       count(*) FILTER (WHERE b IS NOT NULL)
  FROM bucketed
 GROUP BY provider, model, b;

-- name: transcription_bounds
-- The upper bounds (ms) of the transcription duration buckets.
SELECT transcription_duration_bounds() AS bounds;

-- name: transcription_disagreements
-- The `limit` jobs finished in [since, until) whose providers disagree most (the largest
-- word error rate against the job's reference), each with all its attempts in provider
-- order: the reference rows with a disagreement are read by finish time from their own
-- partial index (transcription_attempts_disagreement_idx), the top ones kept, then
-- their attempts by primary key and the jobs' owner_ref by id.
WITH top AS (
    SELECT job_id, finished_at, disagreement
      FROM transcription_attempts
     WHERE disagreement IS NOT NULL
       AND finished_at >= %(since)s AND finished_at < %(until)s
       AND (%(owner)s::text IS NULL OR owner_service = %(owner)s)
     ORDER BY disagreement DESC, finished_at DESC, job_id
     LIMIT %(limit)s
)
SELECT t.job_id, t.finished_at, t.disagreement, j.owner_service, j.owner_ref,
       a.position, a.provider, a.model, a.status, a.wer, a.is_reference
  FROM top t
  JOIN jobs j ON j.id = t.job_id
  JOIN transcription_attempts a ON a.job_id = t.job_id
 ORDER BY t.disagreement DESC, t.finished_at DESC, t.job_id, a.position;

-- name: stats_counts
-- Exact job counts by status, task type, model profile and (failed) error category
-- (summed over owners).
SELECT status, task_type, model_profile, error_category, sum(n)::bigint AS n
  FROM (SELECT status, task_type, model_profile, error_category, n FROM job_counts
        UNION ALL
        SELECT status, task_type, model_profile, error_category, n FROM job_count_deltas) AS c
 GROUP BY 1, 2, 3, 4
HAVING sum(n) <> 0;

-- name: stats_owner_counts
-- Exact job counts by owner_service and status (the counters' owner column).
SELECT owner_service, status, sum(n)::bigint AS n
  FROM (SELECT owner_service, status, n FROM job_counts
        UNION ALL
        SELECT owner_service, status, n FROM job_count_deltas) AS c
 GROUP BY 1, 2
HAVING sum(n) <> 0;

-- name: stats_pending
-- The database clock; the oldest runnable pending job's run_after (when it became
-- runnable); how many pending jobs are scheduled for later (run_after in the future:
-- scheduled, or backing off after a failure), counted up to `cap` + 1 only (a count
-- of 300,000 would cost more than the rest of the stats), and the next of them. Each
-- part reads a range of jobs_pending_run_after_idx.
SELECT now() AS now,
       (SELECT min(run_after) FROM jobs
         WHERE status = 'pending' AND run_after <= now()) AS oldest_runnable,
       (SELECT count(*) FROM (SELECT 1 FROM jobs
                               WHERE status = 'pending' AND run_after > now()
                               LIMIT %(cap)s + 1) AS s) AS scheduled,
       (SELECT min(run_after) FROM jobs
         WHERE status = 'pending' AND run_after > now()) AS next_scheduled;

-- name: stats_breakdown
-- Per task type and model profile: pending jobs scheduled for later (the first `cap` + 1
-- of them, from jobs_pending_run_after_idx) and jobs failed in the current UTC minute
-- and the 59 before it (the minute rollups and the deltas not folded yet).
WITH scheduled AS (
    SELECT task_type, model_profile, count(*) AS n
      FROM (SELECT task_type, model_profile FROM jobs
             WHERE status = 'pending' AND run_after > now()
             LIMIT %(cap)s + 1) AS s
     GROUP BY task_type, model_profile
), failed AS (
    SELECT task_type, model_profile, sum(n) AS n
      FROM (SELECT task_type, model_profile, n FROM job_rollups
             WHERE outcome = 'failed'
               AND minute >= date_trunc('minute', now(), 'UTC') - interval '59 minutes'
            UNION ALL
            SELECT task_type, model_profile, n FROM job_rollup_deltas
             WHERE outcome = 'failed'
               AND minute >= date_trunc('minute', now(), 'UTC') - interval '59 minutes') AS f
     GROUP BY task_type, model_profile
)
SELECT task_type, model_profile,
       coalesce(s.n, 0)::bigint AS scheduled,
       coalesce(f.n, 0)::bigint AS failed_1h
  FROM scheduled s FULL JOIN failed f USING (task_type, model_profile);

-- name: stats_recent
-- Jobs finished in the last 24 h (the current UTC minute and the 1,439 before it) by
-- task type: completed and failed counts, and the completed ones' run-duration bucket
-- counts (bounds: job_rollup_bounds()). Read from the rollups, never the jobs table:
-- the whole hours inside the window from job_rollups_hourly, the minutes at its two
-- edges from job_rollups, plus the deltas not folded yet (one snapshot, so a fold
-- running meanwhile moves nothing in or out).
WITH w AS (
    SELECT date_trunc('minute', now(), 'UTC') - interval '1439 minutes' AS day_from,
           date_trunc('hour', date_trunc('minute', now(), 'UTC') - interval '1380 minutes',
                      'UTC') AS hours_from,
           date_trunc('hour', now(), 'UTC') AS hours_to
), finished AS (
    SELECT r.task_type, r.outcome, r.n, r.buckets
      FROM job_rollups r, w
     WHERE r.minute >= w.day_from AND r.minute < w.hours_from
  UNION ALL
    SELECT r.task_type, r.outcome, r.n, r.buckets
      FROM job_rollups_hourly r, w
     WHERE r.hour >= w.hours_from AND r.hour < w.hours_to
  UNION ALL
    SELECT r.task_type, r.outcome, r.n, r.buckets
      FROM job_rollups r, w
     WHERE r.minute >= w.hours_to
  UNION ALL
    SELECT d.task_type, d.outcome, d.n, d.buckets
      FROM job_rollup_deltas d, w
     WHERE d.minute >= w.day_from
), by_outcome AS (
    SELECT task_type, outcome, n,
           CASE WHEN outcome = 'completed' THEN buckets END AS cb
      FROM finished
)
-- Bucket sums by subscript: far cheaper than unnesting every array.
SELECT task_type,
       coalesce(sum(n) FILTER (WHERE outcome = 'completed'), 0)::bigint AS completed_24h,
       coalesce(sum(n) FILTER (WHERE outcome = 'failed'), 0)::bigint AS failed_24h,
       ARRAY[sum(cb[1]),
             sum(cb[2]),
             sum(cb[3]),
             sum(cb[4]),
             sum(cb[5]),
             sum(cb[6]),
             sum(cb[7]),
             sum(cb[8]),
             sum(cb[9]),
             sum(cb[10]),
             sum(cb[11]),
             sum(cb[12]),
             sum(cb[13]),
             sum(cb[14]),
             sum(cb[15]),
             sum(cb[16])]::bigint[] AS completed_buckets,
       job_rollup_bounds() AS bounds
  FROM by_outcome
 GROUP BY task_type
 ORDER BY task_type;

-- name: stats_throughput
-- Jobs finished per minute, the current UTC minute and the 59 before it, oldest first
-- (minutes without any included): from the per-minute rollups and unfolded deltas.
WITH w AS (
    SELECT date_trunc('minute', now(), 'UTC') - interval '59 minutes' AS from_minute
), finished AS (
    SELECT r.minute, r.outcome, r.n FROM job_rollups r, w WHERE r.minute >= w.from_minute
  UNION ALL
    SELECT d.minute, d.outcome, d.n FROM job_rollup_deltas d, w WHERE d.minute >= w.from_minute
)
SELECT m.minute,
       coalesce(sum(f.n) FILTER (WHERE f.outcome = 'completed'), 0)::bigint AS completed,
       coalesce(sum(f.n) FILTER (WHERE f.outcome = 'failed'), 0)::bigint AS failed
  FROM w
 CROSS JOIN generate_series(w.from_minute, w.from_minute + interval '59 minutes',
                            interval '1 minute') AS m(minute)
  LEFT JOIN finished f ON f.minute = m.minute
 GROUP BY m.minute
 ORDER BY m.minute;

-- name: stats_throughput_day
-- Jobs finished per UTC hour, the current hour and the 23 before it, oldest first (hours
-- without any included): the whole hours from job_rollups_hourly, the current hour from
-- job_rollups, plus the deltas not folded yet (as stats_recent reads them).
WITH w AS (
    SELECT date_trunc('hour', now(), 'UTC') - interval '23 hours' AS from_hour,
           date_trunc('hour', now(), 'UTC') AS this_hour
), finished AS (
    SELECT r.hour, r.outcome, r.n
      FROM job_rollups_hourly r, w
     WHERE r.hour >= w.from_hour AND r.hour < w.this_hour
  UNION ALL
    SELECT w.this_hour, r.outcome, r.n FROM job_rollups r, w WHERE r.minute >= w.this_hour
  UNION ALL
    SELECT date_trunc('hour', d.minute, 'UTC'), d.outcome, d.n
      FROM job_rollup_deltas d, w
     WHERE d.minute >= w.from_hour
)
SELECT h.hour,
       coalesce(sum(f.n) FILTER (WHERE f.outcome = 'completed'), 0)::bigint AS completed,
       coalesce(sum(f.n) FILTER (WHERE f.outcome = 'failed'), 0)::bigint AS failed
  FROM w
 CROSS JOIN generate_series(w.from_hour, w.this_hour, interval '1 hour') AS h(hour)
  LEFT JOIN finished f ON f.hour = h.hour
 GROUP BY h.hour
 ORDER BY h.hour;

-- name: job_failed_latest
-- The newest `limit` failed jobs (by id, from jobs_status_idx) with their messages.
SELECT id, task_type, model_profile, owner_service, error_category, error_message,
       finished_at
  FROM jobs
 WHERE status = 'failed'
 ORDER BY id DESC
 LIMIT %(limit)s;

-- name: job_count_by_filter
-- How many jobs match the filter in `statuses`, counting at most `cap` + 1 (the caller
-- says "more than `cap`" then). Each status is read from jobs_status_idx as the bulk
-- actions read it; `retryable` keeps only the jobs a manual retry may still change
-- (job_retry_by_filter's attempt rule).
SELECT count(*) AS n FROM (
    SELECT 1
      FROM unnest(/*job_statuses*/) AS s(status)
     CROSS JOIN LATERAL (
        SELECT id FROM jobs
         WHERE status = s.status
           AND /*job_filter*/
           AND (NOT %(retryable)s::boolean
                OR attempt < greatest(max_attempts, %(max_attempts_limit)s))
         LIMIT %(cap)s + 1
     ) AS c
     LIMIT %(cap)s + 1
) AS matching;

-- name: jobs_notify
-- Wake the listeners of these task types (payload: the task type).
SELECT pg_notify('ai_service_jobs', t) FROM unnest(%(task_types)s::text[]) AS t;

-- name: jobs_notify_finished
-- Tell the waiters which jobs finished (payload: comma-separated ids, or `*`: look again).
SELECT pg_notify('ai_service_finished', p) FROM unnest(%(payloads)s::text[]) AS p;

-- name: job_get_many
-- The jobs with these ids (those that exist).
SELECT * FROM jobs WHERE id = ANY(%(ids)s::uuid[]);

-- name: db_now
-- The transaction's timestamp: what now() gives every statement of it.
SELECT now() AS now;

-- name: db_ping
-- Readiness probe: the server answers and accepts writes (not a standby).
SELECT NOT pg_is_in_recovery() AND current_setting('transaction_read_only') = 'off' AS ok;

-- name: worker_upsert
-- A worker's own row of the registry, written at start, every WORKER_REGISTRY_INTERVAL
-- and at a graceful stop (`stopped`: stopped_at set). Last seen by the database clock.
-- `clash`: the row was another live process's (another host, pid or start, seen within
-- `fresh` seconds, not stopped), so two processes share this WORKER_ID.
WITH previous AS (
    SELECT hostname, pid, started_at, last_seen, stopped_at
      FROM workers WHERE worker_id = %(worker_id)s
)
INSERT INTO workers AS w
       (worker_id, hostname, pid, version, started_at, last_seen, stopped_at, status)
VALUES (%(worker_id)s, %(hostname)s, %(pid)s, %(version)s, %(started_at)s, now(),
        CASE WHEN %(stopped)s::boolean THEN now() END, %(status)s)
    ON CONFLICT (worker_id) DO UPDATE
   SET hostname = excluded.hostname, pid = excluded.pid, version = excluded.version,
       started_at = excluded.started_at, last_seen = excluded.last_seen,
       stopped_at = excluded.stopped_at, status = excluded.status
RETURNING coalesce((SELECT (p.hostname, p.pid, p.started_at)
                               IS DISTINCT FROM (w.hostname, w.pid, w.started_at)
                           AND p.stopped_at IS NULL
                           AND p.last_seen > now() - make_interval(secs => %(fresh)s::float8)
                      FROM previous p), false) AS clash;

-- name: worker_list
-- The registry (`GET /api/v1/workers`): live rows first (seen within `within` seconds,
-- not stopped), then the newest; each with its age by the database clock.
SELECT w.*, extract(epoch FROM now() - w.last_seen)::float8 AS seconds_since_seen,
       (w.stopped_at IS NULL
        AND w.last_seen > now() - make_interval(secs => %(within)s::float8)) AS alive,
       now() AS now
  FROM workers w
 ORDER BY alive DESC, w.last_seen DESC, w.worker_id
 LIMIT %(limit)s;

-- name: worker_prune
-- Retention: the rows of workers not seen for `retention` seconds (stopped or gone).
WITH gone AS (
    DELETE FROM workers
     WHERE last_seen < now() - make_interval(secs => %(retention)s::float8)
    RETURNING 1
)
SELECT count(*) AS deleted FROM gone;

-- name: audio_begin
-- A new upload (`POST /api/v1/audio`): the row exists before its bytes, which arrive as
-- numbered chunks; size and sha256 stay NULL until audio_finish.
INSERT INTO audio_blobs (id, owner_service, content_type)
VALUES (%(id)s, %(owner_service)s, %(content_type)s)
RETURNING *;

-- name: audio_chunk_add
-- One chunk of an upload's bytes (psycopg sends bytes as a binary parameter).
INSERT INTO audio_chunks (audio_id, n, data) VALUES (%(audio_id)s, %(n)s, %(data)s);

-- name: audio_finish
-- The upload is complete: from now on jobs may name it.
UPDATE audio_blobs SET size = %(size)s, sha256 = %(sha256)s, used_at = now()
 WHERE id = %(id)s
RETURNING *;

-- name: audio_put
-- A whole small recording at once (a job's audio_base64 moved out of its input), keyed by
-- its content: the same bytes of the same owner_service get the same id, so the same
-- request sent again names the same audio (idempotency keys still match). Returns the row
-- only when it is new (then its chunks follow in the same transaction).
INSERT INTO audio_blobs (id, owner_service, content_type, size, sha256)
VALUES (%(id)s, %(owner_service)s, %(content_type)s, %(size)s, %(sha256)s)
    ON CONFLICT (id) DO NOTHING
RETURNING *;

-- name: audio_use
-- Jobs about to be created name these (audio_id, owner_service) pairs: the complete
-- recordings among them, marked as used now (retention counts from the last use).
UPDATE audio_blobs b SET used_at = now()
  FROM unnest(%(ids)s::uuid[], %(owner_services)s::text[]) AS u(id, owner_service)
 WHERE b.id = u.id AND b.owner_service = u.owner_service AND b.size IS NOT NULL
RETURNING b.id, b.owner_service;

-- name: audio_get
-- One complete recording's description (not its bytes).
SELECT * FROM audio_blobs WHERE id = %(id)s AND size IS NOT NULL;

-- name: audio_chunks
-- A recording's bytes, chunk by chunk in order (read row by row: never all at once).
SELECT data FROM audio_chunks WHERE audio_id = %(id)s ORDER BY n;

-- name: audio_delete
-- An upload that failed or was refused: its chunks go with it.
DELETE FROM audio_blobs WHERE id = %(id)s;

-- name: audio_prune
-- Retention: recordings unused for `retention` seconds that no pending or running job
-- names (a failed job that names one may still be retried within that time), and
-- uploads abandoned half-way (no size after `abandoned` seconds). Oldest first, rows
-- another statement holds skipped; the chunks go with their row (ON DELETE CASCADE).
WITH old AS (
    SELECT id FROM audio_blobs b
     WHERE (used_at < now() - make_interval(secs => %(retention)s::float8)
            OR (size IS NULL
                AND created_at < now() - make_interval(secs => %(abandoned)s::float8)))
       AND NOT EXISTS (SELECT 1 FROM jobs j
                        WHERE j.input ? 'audio_id' AND j.input->>'audio_id' = b.id::text
                          AND j.status IN ('pending', 'running'))
     ORDER BY used_at
     LIMIT %(batch)s
       FOR UPDATE SKIP LOCKED
)
DELETE FROM audio_blobs b
 USING old
 WHERE b.id = old.id
RETURNING b.id, b.size;

-- name: webhook_claim
-- The next due pending webhook deliveries (oldest due first), taken for `lease` seconds:
-- their next attempt moves past the attempt now being made, so a deliverer that dies
-- mid-way leaves them due again after the lease, and a second deliverer during a
-- hand-over skips them (rows another claim holds are skipped, never waited for).
WITH due AS (
    SELECT id FROM webhook_deliveries
     WHERE status = 'pending' AND next_attempt_at <= now()
     ORDER BY next_attempt_at
     LIMIT %(batch)s
       FOR UPDATE SKIP LOCKED
)
UPDATE webhook_deliveries d
   SET next_attempt_at = now() + make_interval(secs => %(lease)s::float8)
  FROM due
 WHERE d.id = due.id
RETURNING d.id, d.job_id, d.event_type, d.url, d.payload, d.traceparent, d.attempts,
          d.created_at;

-- name: webhook_record
-- The outcomes of delivery attempts (one JSON array). A delivered event is done. A failed
-- attempt is retried after its `delay` seconds, but no later than `max_age` seconds after
-- the event; an attempt that fails at or past that age fails the event for good. Every
-- attempt goes into the attempt log (the newest `attempts_kept`; `attempts` counts them
-- all). Only pending rows change, so an outcome recorded twice counts once.
WITH outcome AS (
    SELECT *
      FROM jsonb_to_recordset(%(outcomes)s::jsonb)
           AS o(id uuid, ok boolean, at timestamptz, http_status int, error text,
                response text, duration_ms int, delay float8)
)
UPDATE webhook_deliveries d
   SET attempts = d.attempts + 1,
       status = CASE WHEN o.ok THEN 'delivered'
                     WHEN now() >= d.created_at + make_interval(secs => %(max_age)s::float8)
                     THEN 'failed'
                     ELSE 'pending' END,
       delivered_at = CASE WHEN o.ok THEN now() END,
       next_attempt_at = CASE WHEN o.ok THEN d.next_attempt_at
                              ELSE least(now() + make_interval(secs => o.delay),
                                         d.created_at
                                         + make_interval(secs => %(max_age)s::float8)) END,
       last_error = CASE WHEN o.ok THEN NULL ELSE o.error END,
       attempt_log = (SELECT coalesce(jsonb_agg(h.e ORDER BY h.n), '[]'::jsonb)
                        FROM jsonb_array_elements(d.attempt_log || jsonb_build_array(
                                 jsonb_build_object('attempt', d.attempts + 1, 'at', o.at,
                                                    'http_status', o.http_status,
                                                    'error', o.error,
                                                    'response', o.response,
                                                    'duration_ms', o.duration_ms)))
                             WITH ORDINALITY AS h(e, n)
                       WHERE h.n > jsonb_array_length(d.attempt_log) + 1 - %(attempts_kept)s)
  FROM outcome o
 WHERE d.id = o.id
   AND d.status = 'pending'
RETURNING d.id, d.status, d.attempts;

-- name: webhook_list
-- A job's webhook deliveries with their attempt logs, oldest first.
SELECT * FROM webhook_deliveries WHERE job_id = %(job_id)s ORDER BY created_at, id;
