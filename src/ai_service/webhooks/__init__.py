"""Completion webhooks: signed POSTs of a job's terminal event to its `callback_url`.

How an event travels:

1. When a job with a `callback_url` becomes `completed`, `failed` or `cancelled`, the
   trigger `jobs_webhook_event` (migration 0009) writes one row to the outbox
   `webhook_deliveries`, in the transaction of the state change: the event exists if
   and only if the change committed (at least once, never for a change rolled back).
2. The `webhooks` maintenance service, run by the one process that leads it,
   delivers due events (`delivery.Deliverer`): signed per Standard Webhooks
   (`sign`), to destinations the outbound URL rules allow (`destinations`), retried
   with backoff until `WEBHOOK_MAX_AGE` after the event, each attempt recorded.

`destinations` also holds the checks made when a job is created (422 for a refused
`callback_url`) and when the settings are read (`WEBHOOK_URLS`).
"""
